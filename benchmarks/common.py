"""What every benchmark shares: arguments, thread pinning, STS-B loading, contenders, timing, tables, JSON.

A contender is one way of turning texts into sentence vectors (sentence-transformers on PyTorch,
bertnpu on ONNX Runtime float32 or int8, bertnpu on the NPU). Timings interleave contenders across
repeats, so drift on a busy machine hits all of them alike, and report medians and p95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from bertnpu_runtime import data
from bertnpu_runtime.bundle import Bundle
from bertnpu_runtime.errors import BundleError

DEFAULT_BUNDLE = Path("bundles/all-MiniLM-L6-v2")
RESULTS_DIR = Path("benchmarks/results")
DEFAULT_THREADS = 2
BASELINE = "sentence-transformers"
ONNX = "bertnpu-onnx"
ONNX_INT8 = "bertnpu-onnx-int8"
NPU = "bertnpu-npu"
QUICK_PAIRS = 32
BUILD_HINT = "build it with: python -m compile --model default --out {bundle}"


# ---- arguments and environment -------------------------------------------------------------


def base_parser(description: str, result_name: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --bundle, --model, --threads, --quick, --stsb-dir, --out."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{result_name}", description=description)
    parser.add_argument(
        "--bundle", type=Path, default=DEFAULT_BUNDLE, help="bertnpu bundle folder (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="sentence-transformers model folder for the PyTorch reference (default: the bundle's source model)",
    )
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_THREADS, help="CPU threads for every contender (default: %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few sentences and repeats: checks that it runs, numbers mean little"
    )
    parser.add_argument(
        "--stsb-dir",
        type=Path,
        default=None,
        help="STS-B CSV folder (default: the copy shipped with bertnpu_runtime.data)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / f"{result_name}.json", help="JSON result file (default: %(default)s)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help=f"first N STS-B dev pairs (default: all 1,500; --quick: {QUICK_PAIRS})"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 5; --quick: fewer)")
    return parser


@dataclass(frozen=True)
class Run:
    """What a benchmark works on, from its arguments: the bundle, the STS-B dev pairs, the repeats."""

    bundle: Path
    pairs: list[tuple[str, str, float]]
    repeats: int

    @property
    def sentences(self) -> list[str]:
        """Both sentences of every pair, in file order (3,000 for STS-B dev; repeats kept)."""
        return [s for a, b, _ in self.pairs for s in (a, b)]


def start_run(args: argparse.Namespace, quick_repeats: int = 2, threads: bool = True) -> Run:
    """Check the bundle, load STS-B dev (--limit, or a few pairs with --quick) and, unless
    `threads` is False, pin this process's threads to --threads."""
    if threads:
        pin_threads(args.threads)
    bundle = check_bundle(args.bundle)
    pairs = load_stsb_dev(args.stsb_dir)[: args.limit or (QUICK_PAIRS if args.quick else None)]
    return Run(bundle, pairs, args.repeats or (quick_repeats if args.quick else 5))


def pin_threads(threads: int) -> None:
    """Give every contender the same CPU thread count: OpenMP/MKL and the tokenizers' Rayon pool.

    ONNX Runtime gets it per session (SentenceEncoder(num_threads=...)), PyTorch when the
    sentence-transformers contender is made. Call before the first import of either.
    """
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def check_bundle(bundle: Path) -> Path:
    """The bundle folder, or exit with what is wrong and how to build it."""
    try:
        Bundle(bundle, verify=False)
    except BundleError as exc:
        raise SystemExit(f"no usable bertnpu bundle at {bundle} ({exc}); {BUILD_HINT.format(bundle=bundle)}") from None
    return bundle


def reference_model_folder(bundle: Path, model: str | None) -> Path:
    """The sentence-transformers folder to compare against: --model, else the model the bundle was built from."""
    if model is not None:
        return Path(model)
    from compile.source_model import resolve_model_folder

    return resolve_model_folder(Bundle(bundle, verify=False).manifest.source_model)


def run_metadata(args: argparse.Namespace) -> dict[str, Any]:
    """Where and how a result was measured, written into every JSON file."""
    return {
        "command": "python -m " + " ".join([_module_name()] + sys.argv[1:]),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": _installed_version("torch"),
        "onnxruntime": _installed_version("onnxruntime"),
        "threads": args.threads,
        "quick": args.quick,
        "bundle": str(args.bundle),
    }


def _installed_version(package: str) -> str | None:
    """The package's version, read without importing it (importing torch takes seconds)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# ---- data ------------------------------------------------------------------------------------


def load_stsb_dev(directory: Path | None) -> list[tuple[str, str, float]]:
    """STS-B dev pairs (sentence1, sentence2, gold score 0..5) from `directory`, else the shipped copy."""
    return data.read_stsb_pairs((directory or data.stsb_dir()) / data.STSB_DEV_FILE)


# ---- contenders ------------------------------------------------------------------------------


@dataclass
class Contender:
    """One way to encode texts: `encode(texts, batch_size)` -> [n, dim] float32 vectors."""

    name: str
    encode: Callable[[list[str] | str, int], np.ndarray]
    close: Callable[[], None] = lambda: None
    encoder: Any = None  # the bertnpu SentenceEncoder, for stage timing; None for sentence-transformers


@dataclass
class Contenders:
    """The contenders of one run, baseline first, and why any expected one is missing."""

    items: list[Contender]
    skipped: dict[str, str] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.items)

    def close(self) -> None:
        for contender in self.items:
            contender.close()


def sentence_transformers_contender(model_folder: Path, threads: int) -> Contender:
    """The PyTorch reference, on CPU with `threads` threads, with its progress bar off.

    PyTorch is imported here, not before: a benchmark without this contender (npu_pipeline) runs in
    a process without torch, as a bertnpu deployment does.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_folder), device="cpu")

    def encode(texts: list[str] | str, batch_size: int) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)

    return Contender(BASELINE, encode)


def bertnpu_contender(name: str, bundle: Path, **options: Any) -> Contender:
    """A SentenceEncoder on `bundle`; options go to its constructor (backend, encoder_precision, num_threads, ...)."""
    from bertnpu_runtime import SentenceEncoder

    encoder = SentenceEncoder(bundle, **options)

    def encode(texts: list[str] | str, batch_size: int) -> np.ndarray:
        return encoder.encode(texts, batch_size=batch_size, show_progress_bar=False)

    return Contender(name, encode, encoder.close, encoder)


def build_contenders(bundle: Path, model_folder: Path, threads: int, *, baseline: bool = True) -> Contenders:
    """sentence-transformers (baseline), bertnpu ONNX float32, ONNX int8 where the bundle has it,
    and the NPU where a device and a model.mxq exist. The reason for each one left out is kept."""
    from bertnpu_runtime.bundle import INT8_ENCODER_FILE, MXQ_FILE, Bundle

    contents = Bundle(bundle, verify=False)
    found = Contenders([sentence_transformers_contender(model_folder, threads)] if baseline else [])
    found.items.append(bertnpu_contender(ONNX, bundle, backend="onnx", num_threads=threads))
    if contents.has(INT8_ENCODER_FILE):
        found.items.append(
            bertnpu_contender(ONNX_INT8, bundle, backend="onnx", encoder_precision="int8", num_threads=threads)
        )
    else:
        found.skipped[ONNX_INT8] = f"the bundle has no {INT8_ENCODER_FILE}"
    reason = _npu_missing_reason(contents.has(MXQ_FILE))
    if reason is None:
        found.items.append(bertnpu_contender(NPU, bundle, backend="npu"))
    else:
        found.skipped[NPU] = reason
    return found


def _npu_missing_reason(has_mxq: bool) -> str | None:
    if not has_mxq:
        return "the bundle has no model.mxq"
    try:
        from bertnpu_runtime.backends.npu_device import probe_npu
    except ImportError as exc:
        return f"the NPU backend cannot be imported ({exc})"
    return probe_npu(None)


# ---- timing ----------------------------------------------------------------------------------


def interleave(tasks: dict[str, Callable[[int], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each task, `repeats` calls each after `warmup` untimed ones.

    Round r calls every task once with argument r, starting at a different task each round,
    so slow phases of a shared machine spread evenly over the contenders (interleave_blocks with
    blocks of one call).
    """
    return interleave_blocks(tasks, calls=1, rounds=repeats, warmup=warmup)


def interleave_blocks(
    tasks: dict[str, Callable[[int], object]], calls: int, rounds: int = 2, warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call of each task, for short calls: `calls` calls in a row per task and round.

    A task's calls run back to back, so the threads one contender leaves spinning after a call
    (PyTorch's OpenMP workers, ONNX Runtime's pool) do not slow the next contender's short call;
    the rounds start at a different task each, as in interleave(). Call i of round r gets r * calls + i.
    """
    names = list(tasks)
    for name in names:
        for i in range(warmup):
            tasks[name](i)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            for i in range(round_no * calls, (round_no + 1) * calls):
                start = time.perf_counter()
                tasks[name](i)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, mean and min of a list of durations, in seconds."""
    values = np.asarray(seconds, dtype=np.float64)
    return {
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "n": int(values.size),
    }


def ratio(value: float, baseline: float | None) -> float | None:
    """value / baseline, or None when there is no baseline to compare with."""
    return None if not baseline else value / baseline


# ---- output ----------------------------------------------------------------------------------


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows (dicts) as an aligned text table of the given columns; floats get 6 significant digits."""
    cells = [[_format(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(column.ljust(width) for column, width in zip(columns, widths)))
    print("  ".join("-" * width for width in widths))
    for line in cells:
        print(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))
            )
        )


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Write a result as indented JSON, creating the folder, and say where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
