"""Backend settings as values: which encoder backend to open, and how.

`BackendOptions` is what the CLI, the server, the Ray job and `SentenceEncoder` pass around; its
`npu` and `onnx` parts are the settings of each backend. Each checks its values when made, so a
wrong setting is an error where it is written, not deep inside a backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BACKENDS = ("auto", "npu", "onnx")
ENCODER_PRECISIONS = ("float32", "int8")
CORE_MODES = ("single", "multi", "global4", "global8")

NpuCores = int | Sequence[tuple[int, int]] | None  # checked when the cores are chosen


@dataclass(frozen=True)
class OnnxOptions:
    """The ONNX Runtime backend (CPU).

    precision: "float32" (encoder.onnx), or "int8" for encoder.int8.onnx, the CPU preview of the
        NPU's quantization.
    num_threads: ONNX Runtime's intra-op threads (None: its own choice, every core).
    """

    precision: str = "float32"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in ENCODER_PRECISIONS:
            raise ValueError(f"encoder_precision must be one of {ENCODER_PRECISIONS}, found {self.precision!r:.40}")
        check_num_threads(self.num_threads)


@dataclass(frozen=True)
class NpuOptions:
    """The Mobilint NPU backend; see NpuEncoder for what each setting does.

    device_no: which card (/dev/aries<N>). device_name: open it by board name ("aries", "regulus").
    core_mode: "single", "multi", "global4" or "global8". cores: single-core mode's cores, a count or
    (cluster, core) pairs (None: every core of the card). group_sentences: several sentences of one
    length per call (None: in multi mode only). trace_path: a file for qbruntime's event trace.
    timeout_s: the longest wait for one NPU call. qbruntime_module: a stand-in for `qbruntime`
    (bertnpu_runtime.testing.FakeNpu); None for the real one.
    """

    device_no: int = 0
    device_name: str | None = None
    core_mode: str = "single"
    cores: NpuCores = None
    group_sentences: bool | None = None
    trace_path: str | Path | None = None
    timeout_s: float = 30.0
    qbruntime_module: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.device_no, bool) or not isinstance(self.device_no, int) or self.device_no < 0:
            raise ValueError(f"npu device_no must be an int >= 0, found {self.device_no!r:.40}")
        if self.core_mode not in CORE_MODES:
            raise ValueError(f"npu core mode must be one of {CORE_MODES}, found {self.core_mode!r:.40}")
        timeout = self.timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"npu timeout must be a positive number of seconds, found {timeout!r}")


@dataclass(frozen=True)
class BackendOptions:
    """Which encoder backend to open ("auto", "npu" or "onnx") and each backend's settings."""

    backend: str = "auto"
    npu: NpuOptions = field(default_factory=NpuOptions)
    onnx: OnnxOptions = field(default_factory=OnnxOptions)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, found {self.backend!r:.40}")
        if self.backend == "npu" and self.onnx.precision != "float32":
            raise ValueError(
                f"encoder_precision={self.onnx.precision!r} selects an ONNX graph for the CPU; the npu backend runs "
                "the .mxq's own quantization. Use backend='onnx' with encoder_precision='int8' to preview it on the CPU."
            )


# SentenceEncoder's keyword arguments of earlier versions, and the setting each one fills.
KEYWORD_SETTINGS = {
    "encoder_precision": ("onnx", "precision"),
    "num_threads": ("onnx", "num_threads"),
    "device_no": ("npu", "device_no"),
    "npu_device_name": ("npu", "device_name"),
    "npu_core_mode": ("npu", "core_mode"),
    "npu_cores": ("npu", "cores"),
    "npu_group_sentences": ("npu", "group_sentences"),
    "npu_trace_path": ("npu", "trace_path"),
    "npu_timeout_s": ("npu", "timeout_s"),
    "qbruntime_module": ("npu", "qbruntime_module"),
}


def with_keywords(options: BackendOptions, keywords: dict[str, Any], caller: str) -> BackendOptions:
    """`options` with keyword settings (npu_cores=2, encoder_precision="int8", ...) applied on top.
    An unknown keyword is a TypeError naming it, as Python's own is."""
    changes: dict[str, dict[str, Any]] = {"npu": {}, "onnx": {}}
    for name, value in keywords.items():
        if name not in KEYWORD_SETTINGS:
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}")
        part, setting = KEYWORD_SETTINGS[name]
        changes[part][setting] = value
    return replace(
        options,
        npu=replace(options.npu, **changes["npu"]) if changes["npu"] else options.npu,
        onnx=replace(options.onnx, **changes["onnx"]) if changes["onnx"] else options.onnx,
    )


def check_num_threads(num_threads: object, name: str = "num_threads") -> None:
    """None, or a positive int (not a bool, a float or a string)."""
    if num_threads is not None and (type(num_threads) is not int or num_threads < 1):
        raise ValueError(f"{name} must be a positive int or None, found {num_threads!r:.40}")
