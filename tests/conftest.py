"""Shared fixtures: a tiny random BERT model folder, bundles built from it and from the default model,
and the STS-B data folder. Nothing here reaches the network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 64
TINY_MAX_POSITIONS = 64
TINY_MAX_SEQ_LENGTH = 48

_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = [
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "not",
    "no",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "has",
    "have",
    "had",
    "do",
    "does",
    "did",
    "will",
    "would",
    "can",
    "could",
    "should",
    "may",
    "might",
    "must",
    "i",
    "you",
    "he",
    "she",
    "it",
    "we",
    "they",
    "me",
    "him",
    "her",
    "us",
    "them",
    "my",
    "your",
    "his",
    "its",
    "our",
    "their",
    "this",
    "that",
    "these",
    "those",
    "there",
    "here",
    "who",
    "what",
    "which",
    "when",
    "where",
    "why",
    "how",
    "all",
    "some",
    "any",
    "each",
    "every",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "ten",
    "first",
    "new",
    "old",
    "big",
    "small",
    "little",
    "good",
    "bad",
    "long",
    "short",
    "high",
    "low",
    "young",
    "man",
    "men",
    "woman",
    "women",
    "boy",
    "girl",
    "child",
    "children",
    "person",
    "people",
    "dog",
    "dogs",
    "cat",
    "cats",
    "horse",
    "bird",
    "fish",
    "animal",
    "car",
    "bus",
    "train",
    "plane",
    "bike",
    "boat",
    "road",
    "street",
    "water",
    "river",
    "sea",
    "beach",
    "park",
    "field",
    "grass",
    "tree",
    "snow",
    "rain",
    "sun",
    "house",
    "room",
    "table",
    "chair",
    "bed",
    "door",
    "window",
    "kitchen",
    "food",
    "rice",
    "bread",
    "meat",
    "egg",
    "apple",
    "banana",
    "pizza",
    "cake",
    "guitar",
    "piano",
    "flute",
    "music",
    "song",
    "ball",
    "game",
    "soccer",
    "football",
    "basketball",
    "tennis",
    "team",
    "player",
    "players",
    "group",
    "play",
    "plays",
    "playing",
    "played",
    "run",
    "runs",
    "running",
    "walk",
    "walks",
    "walking",
    "ride",
    "rides",
    "riding",
    "eat",
    "eats",
    "eating",
    "cut",
    "cuts",
    "cutting",
    "cook",
    "cooking",
    "sing",
    "singing",
    "dance",
    "dancing",
    "swim",
    "swimming",
    "jump",
    "jumping",
    "sit",
    "sitting",
    "stand",
    "standing",
    "talk",
    "talking",
    "look",
    "looking",
    "hold",
    "holding",
    "drive",
    "driving",
    "fly",
    "flying",
    "read",
    "reading",
    "write",
    "make",
    "making",
    "take",
    "taking",
    "give",
    "put",
    "open",
    "close",
    "go",
    "goes",
    "going",
    "come",
    "coming",
    "get",
    "says",
    "said",
    "say",
    "see",
    "seen",
    "on",
    "in",
    "at",
    "to",
    "of",
    "for",
    "with",
    "from",
    "by",
    "up",
    "down",
    "into",
    "over",
    "under",
    "near",
    "behind",
    "front",
    "off",
    "out",
    "about",
    "after",
    "before",
    "during",
    "while",
    "than",
    "as",
    "if",
    "so",
    "very",
    "too",
    "also",
    "just",
    "only",
    "more",
    "most",
    "other",
    "same",
    "another",
    "still",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "yellow",
    "brown",
    "orange",
    "pink",
    "dark",
    "light",
    "hot",
    "cold",
    "wet",
    "dry",
    "happy",
    "sad",
    "large",
    "world",
    "country",
    "city",
    "government",
    "president",
    "minister",
    "police",
    "killed",
    "said",
    "year",
    "years",
    "day",
    "days",
    "today",
    "news",
    "report",
    "people",
    "state",
    "states",
    "china",
    "india",
    "syria",
    "iran",
    "us",
    "uk",
    "new",
    "police",
    "court",
    "talks",
    "deal",
]
_PIECES = ["##s", "##es", "##ed", "##ing", "##er", "##ers", "##ly", "##est", "##ion", "##al", "##y", "##n", "##t"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-/&%$")


def tiny_vocab() -> list[str]:
    """A small real WordPiece vocabulary: special tokens, common words, suffixes, and every single
    character both as a word start and as a "##" continuation, so any ASCII word tokenizes without [UNK]."""
    vocab: list[str] = []
    for token in _SPECIAL_TOKENS + _WORDS + _PIECES + _CHARS + ["##" + c for c in _CHARS]:
        if token not in vocab:
            vocab.append(token)
    return vocab


def in_forked_child(work: Callable[[], str]) -> str:
    """What `work()` returns when run in a child forked from this process. The child never returns
    into pytest, and a hang ends it after 30 s (with an empty answer) rather than the test run."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        try:
            answer = work()
        except BaseException as exc:
            answer = f"{type(exc).__name__}: {exc}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def run_with_imports_blocked(blocked: tuple[str, ...], body: str, cwd: Path | None = None) -> str:
    """Run the Python code `body` in a fresh interpreter where importing any of the `blocked`
    top-level packages raises ImportError; assert that it succeeds and return what it printed."""
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("blocked in this test: " + name)
        sys.meta_path.insert(0, Block())
        """
    ) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def write_tiny_model(
    directory: Path,
    seed: int = 0,
    *,
    pooling: str = "mean",
    include_prompt: bool = True,
    normalize: bool = False,
    st_config: dict | None = None,
    shape: dict | None = None,
) -> Path:
    """Save a random tiny BertModel with its tokenizer and sentence-transformers files into
    `directory`: `pooling` mode (written the way sentence-transformers >= 5 writes it, by name),
    a Normalize module when `normalize`, config_sentence_transformers.json from `st_config`
    (prompts, default_prompt_name, similarity_fn_name), and BertConfig overrides in `shape`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(str(directory))

    torch.manual_seed(seed)
    sizes = {
        "hidden_size": TINY_HIDDEN,
        "num_hidden_layers": TINY_LAYERS,
        "num_attention_heads": TINY_HEADS,
        "intermediate_size": TINY_INTERMEDIATE,
        "max_position_embeddings": TINY_MAX_POSITIONS,
        **(shape or {}),
    }
    config = BertConfig(vocab_size=len(vocab), layer_norm_eps=1e-12, **sizes)
    model = BertModel(config).eval()
    with torch.no_grad():  # a non-trivial embedding LayerNorm, so a swapped weight/bias or a wrong eps shows
        model.embeddings.LayerNorm.weight.normal_(1.0, 0.2)
        model.embeddings.LayerNorm.bias.normal_(0.0, 0.2)
    model.save_pretrained(str(directory))

    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    _write_json(directory / "modules.json", modules)
    _write_json(
        directory / "sentence_bert_config.json", {"max_seq_length": TINY_MAX_SEQ_LENGTH, "do_lower_case": False}
    )
    hidden = config.hidden_size
    if (
        pooling == "mean" and include_prompt
    ):  # the legacy flags, as models saved before sentence-transformers 5 have them
        pooling_config = {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        }
    else:
        pooling_config = {"embedding_dimension": hidden, "pooling_mode": pooling, "include_prompt": include_prompt}
    _write_json(directory / "1_Pooling" / "config.json", pooling_config)
    if st_config is not None:
        _write_json(directory / "config_sentence_transformers.json", st_config)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny BERT (hidden 32, 2 layers, 4 heads) saved like a sentence-transformers model:
    mean pooling, no normalization, max_seq_length 48, 64 position rows."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle built from `tiny_model_dir` with 8 calibration sentences (no .mxq, no int8)."""
    from compile import build_bundle

    return build_bundle(str(tiny_model_dir), tmp_path_factory.mktemp("tiny-bundle") / "bundle", calib_samples=8)


@pytest.fixture(scope="session")
def default_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the embedded all-MiniLM-L6-v2 with 8 calibration sentences."""
    from compile import build_bundle

    return build_bundle("default", tmp_path_factory.mktemp("default-bundle") / "bundle", calib_samples=8)


@pytest.fixture(scope="session")
def stsb_dir() -> Path:
    """The STS-B CSV folder the package reads (its shipped copy unless $BERTNPU_STSB_DIR is set)."""
    from bertnpu_runtime.data import stsb_dir

    return stsb_dir()


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the tiny bundle that a test may break."""
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


# Rerankers built by the `rerankers` fixture: name -> (family, labels).
RERANKERS = {"bert-1": ("bert", 1), "xlm-roberta-1": ("xlm-roberta", 1), "bert-3": ("bert", 3)}


@pytest.fixture(scope="session")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (random reranker folder, its bundle with the int8 preview); see RERANKERS."""
    from bertnpu_runtime.testing.families import train_tokenizer, write_cross_encoder
    from compile import build_bundle

    root = tmp_path_factory.mktemp("rerankers")
    unigram = train_tokenizer("unigram")
    built = {}
    for name, (family, labels) in RERANKERS.items():
        folder = write_cross_encoder(
            root / name, family, unigram if family != "bert" else None, labels, vocab=tiny_vocab()
        )
        built[name] = folder, build_bundle(str(folder), root / f"{name}-bundle", calib_samples=8, int8=True)
    return built


# Embedding models built by the `family_models` fixture: family -> its tokenizer's kind (tests/families.py).
EMBEDDING_FAMILIES = {
    "bert-unigram": "unigram",  # paraphrase-multilingual-MiniLM's shape: a BertModel with XLM-R's tokenizer
    "roberta": "bpe",
    "xlm-roberta": "unigram",
    "camembert": "unigram",
    "mpnet": "mpnet-wordpiece",
}


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """family -> (random model folder in sentence-transformers' layout, its bundle with the int8 preview)."""
    from bertnpu_runtime.testing.families import train_tokenizer, write_embedding_model
    from compile import build_bundle

    root = tmp_path_factory.mktemp("families")
    tokenizers = {kind: train_tokenizer(kind) for kind in set(EMBEDDING_FAMILIES.values())}
    built = {}
    for family, kind in EMBEDDING_FAMILIES.items():
        folder = write_embedding_model(root / family, family, tokenizers[kind])
        built[family] = folder, build_bundle(str(folder), root / f"{family}-bundle", calib_samples=8, int8=True)
    return built
