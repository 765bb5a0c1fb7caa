"""A stand-in for Mobilint's `qbruntime` module (1.5), for running the NPU path without a card.

`FakeNpu(...)` returns an object with the part of qbruntime's API that bertnpu uses; pass it as
`qbruntime_module=`. It accepts what the real runtime accepts and rejects what it rejects, with the
same exception types and messages:

- shape checks mirror qbruntime/model.py (`_is_valid_shape`, `_find_memory_format`, variants tried
  in order): a bad rank, H, C, input count or length is `ValueError("Input shape is invalid.")`;
- runtime failures are `QbRuntimeError("<Code> occurred.\\n<docs link>")` with the real codes:
  Acc_DeviceNotFound / Acc_UnknownDevice (Accelerator), Driver_NotInitialized (a board name such
  as "aries-rb" on a machine without a card), Model_FailedToLoadMXQ (Model on a missing file),
  Model_NotLaunched (infer before launch or after dispose), Model_AlreadyLaunched,
  Acc_CoreAlreadyInUse (a core another launched model holds), Model_MXQAndModelConfigNotMatch
  (a core mode the .mxq was not compiled for: `core_modes`), Model_NoTargetCores (cores or
  clusters the card does not have), Model_ShapeMismatched (a variable length beyond max_width, or
  more sentences in one call than the core mode takes), Model_InvalidVariantIdx.
  Which code the C++ side raises for the last five is inferred from the code names in the wheel;
  the first three were observed here.

Two deliberate differences, both stricter than the real runtime: a non-float32 input is a
TypeError (the real pybind layer silently casts float64, and int8/uint8 select pre-quantized
overloads: both are caller bugs for a float encoder), and the .mxq file only has to exist (its
contents are not read; the model is described by the FakeNpu arguments).

Compute: with `encoder_onnx_path`, each infer runs the bundle's encoder.onnx on the given rows,
with an all-ones mask for a maskless model or the mask input converted back to 0/1, so the NPU path
gives the ONNX path's vectors. Without it, outputs are zeros. `latency_s` makes each call last that
long per sentence: the output is made first and the rest of the time slept (time.sleep releases the
GIL, so models on different cores overlap like real cores do).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..encoder_graph import encoder_feed, hidden_input, takes_packed

_DOCS = "Please visit https://docs.mobilint.com/v1.5/doxygen/html_en/group__CPPAPI.html for more details."
_DEVICE_NAMES = (
    "auto",
    "aries",
    "aries-rb",
    "regulus",
    "regulus-ra",
    "regulus-rb",
    "regulus-usb",
    "regulus-ra-usb",
    "regulus-rb-usb",
)
_CORES_PER_CLUSTER = 4
_ADDITIVE_KEEP_THRESHOLD = -1.0  # additive mask: 0 keeps a token, a large negative value drops it


_thread_state = threading.local()


def _sleep_precisely(seconds: float) -> None:
    """time.sleep (none for a time <= 0) with the calling thread's timer slack cut to 1 ns where Linux allows it.

    The default 50 us slack made a modelled 800 us call take ~870 us here, so the test double's
    NPU looked 8% slower than the latency it was given.
    """
    if not getattr(_thread_state, "slack_set", False):
        _thread_state.slack_set = True
        try:
            import ctypes

            ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK = 29; this thread only
        except (OSError, AttributeError):  # not Linux: keep the default slack
            pass
    if seconds > 0:
        time.sleep(seconds)


class QbRuntimeError(RuntimeError):
    """Same name and base class as qbruntime.QbRuntimeError; the error code is in the message."""


def _error(code: str) -> QbRuntimeError:
    return QbRuntimeError(f"{code} occurred.\n{_DOCS}")


class Cluster(Enum):
    Cluster0 = 0
    Cluster1 = 1
    Error = 255


class Core(Enum):
    Core0 = 0
    Core1 = 1
    Core2 = 2
    Core3 = 3
    All = 4
    GlobalCore = 5
    Error = 255


class CoreMode(Enum):
    Single = 0
    Multi = 1
    Global = 2
    Global4 = 3
    Global8 = 4
    Auto = 5
    Error = 255


_CORE_MODE_NAMES = {
    CoreMode.Single: "single",
    CoreMode.Multi: "multi",
    CoreMode.Global4: "global4",
    CoreMode.Global8: "global8",
}


class LogLevel(Enum):
    Debug = 0
    Info = 1
    Warn = 2
    Err = 3
    Fatal = 4
    Off = 5


class CoreId:
    """A (cluster, core) pair, compared by value like qbruntime.CoreId."""

    def __init__(self, cluster: Cluster, core: Core) -> None:
        self.cluster = cluster
        self.core = core

    def _key(self) -> tuple[int, int]:
        return (self.cluster.value, self.core.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CoreId) and self._key() == other._key()

    def __lt__(self, other: CoreId) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"CoreId(cluster={self.cluster}, core={self.core})"


@dataclass(frozen=True)
class BufferInfo:
    """The fields of qbruntime.BufferInfo that describe a sequence input."""

    height: int
    width: int
    channel: int
    max_width: int


class ModelConfig:
    """Core mode and cores for a Model; defaults to Auto like qbruntime.ModelConfig()."""

    def __init__(self, num_cores: int | None = None) -> None:
        self._mode = CoreMode.Auto
        self._core_ids: list[CoreId] = []
        self._clusters: list[Cluster] = []
        self._num_cores = 0 if num_cores is None else num_cores

    def set_auto_core_mode(self) -> bool:
        self._mode, self._core_ids = CoreMode.Auto, []
        return True

    def set_single_core_mode(self, num_cores=None, core_ids=None) -> bool:
        """Same call forms as qbruntime: set_single_core_mode(n), ([CoreId...]) or (None, [CoreId...])."""
        if isinstance(num_cores, (list, tuple)) and core_ids is None:
            num_cores, core_ids = None, num_cores
        if num_cores is not None and core_ids is None:
            self._mode, self._core_ids, self._num_cores = CoreMode.Single, [], num_cores
            return True
        if core_ids is not None and num_cores is None:
            # The real runtime logs "Invalid core ID" and returns False, leaving the config as it was.
            if any(c.core not in (Core.Core0, Core.Core1, Core.Core2, Core.Core3) for c in core_ids):
                return False
            if any(c.cluster not in (Cluster.Cluster0, Cluster.Cluster1) for c in core_ids):
                return False
            self._mode, self._core_ids, self._num_cores = CoreMode.Single, list(core_ids), len(core_ids)
            return True
        raise ValueError("`set_single_core_mode` needs either `num_cores` or `core_ids`.")

    def set_multi_core_mode(self, clusters: Sequence[Cluster] = (Cluster.Cluster0, Cluster.Cluster1)) -> bool:
        return self._set_cluster_mode(CoreMode.Multi, clusters)

    def set_global4_core_mode(self, clusters: Sequence[Cluster] = (Cluster.Cluster0, Cluster.Cluster1)) -> bool:
        return self._set_cluster_mode(CoreMode.Global4, clusters)

    def set_global8_core_mode(self) -> bool:
        self._mode, self._core_ids, self._clusters = CoreMode.Global8, [], [Cluster.Cluster0, Cluster.Cluster1]
        return True

    def _set_cluster_mode(self, mode: CoreMode, clusters: Sequence[Cluster]) -> bool:
        if not clusters or any(c not in (Cluster.Cluster0, Cluster.Cluster1) for c in clusters):
            return False  # as the real runtime: rejected, the config unchanged
        self._mode, self._core_ids, self._clusters = mode, [], list(clusters)
        return True

    def get_clusters(self) -> list[Cluster]:
        """The clusters of a multi, global4 or global8 configuration (a fake-only reader)."""
        return list(self._clusters)

    def get_core_mode(self) -> CoreMode:
        return self._mode

    def get_core_ids(self) -> list[CoreId]:
        return list(self._core_ids)

    def get_num_cores(self) -> int:
        return self._num_cores


@dataclass(frozen=True)
class InferCall:
    """One Model.infer call as the fake saw it: input shapes, the core it ran on, and when."""

    core: tuple[int, int]  # (cluster, core)
    model_id: int
    shapes: tuple[tuple[int, ...], ...]
    start: float
    end: float

    @property
    def sentences(self) -> int:
        """Sentences in the call: a 4-D first input (n, H, W, C) holds n, a 3-D one holds one."""
        shape = self.shapes[0]
        return shape[0] if len(shape) == 4 else 1


# --- shape rules, mirrored from qbruntime/model.py -----------------------------------------------


def _is_valid_shape(input_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """qbruntime's rule: [h, w, c] or [batch, h, w, c]; a negative dim accepts multiples of its abs value."""
    if len(input_shape) < len(shape) or len(input_shape) > len(shape) + 1:
        return False
    offset = 1 if len(input_shape) > len(shape) else 0
    return all(s1 % s2 == 0 and (s2 < 0 or s1 == s2) for s1, s2 in zip(input_shape[offset:], shape))


def _find_memory_format(inputs: list[np.ndarray], shapes: Sequence[tuple[int, ...]]) -> tuple[bool, bool] | None:
    """(is_hwc, is_chw) when every input fits its shape in that layout; None when neither fits."""
    if len(inputs) != len(shapes):
        return None
    is_hwc = is_chw = True
    for arr, (h, w, c) in zip(inputs, shapes):
        is_hwc = is_hwc and _is_valid_shape(arr.shape, (h, w, c))
        is_chw = is_chw and _is_valid_shape(arr.shape, (c, h, w))
    if not is_hwc and not is_chw:
        return None
    return is_hwc, is_chw


# --- the device -----------------------------------------------------------------------------------


class FakeNpu:
    """A configurable fake of the `qbruntime` module, with one or more fake devices.

    encoder_onnx_path: the bundle's encoder.onnx, run for every infer; None returns zeros.
    hidden_size: C of the model's input; read from encoder.onnx when omitted.
    variants: the .mxq's sequence widths, one per model variant, tried in order: -1 is one
        dynamic-length variant (any length up to max_width), -m any multiple of m, a positive
        value a static length.
    max_width: the longest sequence a variable-length variant takes.
    mask_input: None (hidden states only), or "keep" / "additive": a second float32 input of
        shape (1, W, 1) per sentence: 1/0 for "keep", 0/large-negative for "additive".
    num_cores: local cores per device (ARIES 8, REGULUS 1), cluster-major: (0,0)..(0,3),(1,0)..
    num_devices: 0 simulates a machine without a card.
    latency_s: seconds per sentence per infer call (a number, or a function of the sequence
        length): how long a call holds its core, making the output included.
    max_batch: the most sentences one 4-D call may hold outside multi-core mode (None: any
        number). Default 1, like the runtime binary ("Batch Size > 1 is not supported"); a larger
        call raises QbRuntimeError("Model_ShapeMismatched") (which code reaches Python is not
        known without a card). Multi-core mode takes any number, spread over the cluster's cores.
    core_modes: the core modes the .mxq was compiled for ("single", "multi", "global4",
        "global8"); a ModelConfig in another mode is Model_MXQAndModelConfigNotMatch.
    pooler_output: None, or "first" / "last": the .mxq of a whole BertModel also outputs the
        pooler, (1, 1, C), before or after the last hidden state (1, W, C).
    """

    def __init__(
        self,
        encoder_onnx_path: str | os.PathLike | None = None,
        *,
        hidden_size: int | None = None,
        variants: Sequence[int] = (-1,),
        max_width: int = 512,
        mask_input: str | None = None,
        device_name: str = "aries-rb",
        num_cores: int = 8,
        num_devices: int = 1,
        latency_s: float | Callable[[int], float] | None = None,
        max_batch: int | None = 1,
        core_modes: Sequence[str] = ("single",),
        pooler_output: str | None = None,
    ) -> None:
        if not set(core_modes) <= set(_CORE_MODE_NAMES.values()):
            raise ValueError(f"core_modes must be among {sorted(_CORE_MODE_NAMES.values())}, found {list(core_modes)}")
        if pooler_output not in (None, "first", "last"):
            raise ValueError(f'pooler_output must be None, "first" or "last", found {pooler_output!r}')
        if mask_input not in (None, "keep", "additive"):
            raise ValueError(f'mask_input must be None, "keep" or "additive", found {mask_input!r}')
        if not variants or any(v == 0 for v in variants):
            raise ValueError(f"variants must be non-zero widths, found {list(variants)}")
        self._session = None
        self._packed = False
        if encoder_onnx_path is not None:
            self._session = _open_onnx(encoder_onnx_path)
            self._packed = takes_packed(self._session)
            if hidden_size is None:
                hidden_size = hidden_input(self._session).shape[-1]
        if not isinstance(hidden_size, int):
            raise ValueError("hidden_size is needed when encoder_onnx_path is None")
        self.hidden_size = hidden_size
        self.variants = tuple(variants)
        self.max_width = max_width
        self.mask_input = mask_input
        self.device_name = device_name
        self.num_cores = num_cores
        self.num_devices = num_devices
        self.latency_s = latency_s
        self.max_batch = max_batch
        self.core_modes = tuple(core_modes)
        self.pooler_output = pooler_output
        self.log_level: LogLevel | None = None
        self.calls: list[InferCall] = []
        self.models: list[_FakeModel] = []  # every Model constructed, launched or not
        self._lock = threading.Lock()
        self._busy: dict[tuple[int, int, int], int] = {}  # (dev_no, cluster, core) -> model id
        self._model_ids = itertools.count()
        self._faults: dict[tuple[int, int], tuple[str, set[int] | None]] = {}  # core -> (kind, call numbers or all)
        self._core_calls: dict[tuple[int, int], int] = {}  # core -> infer calls started on it
        self.unhang = threading.Event()  # set it to let hung calls return (a test's clean-up)
        self._trace: tuple[str, float, int] | None = None  # (path, start time, first call) while tracing

        # Module-level names of qbruntime that are plain types.
        self.QbRuntimeError = QbRuntimeError
        self.Cluster, self.Core, self.CoreMode, self.LogLevel = Cluster, Core, CoreMode, LogLevel
        self.CoreId, self.ModelConfig, self.BufferInfo = CoreId, ModelConfig, BufferInfo

    # Functions and constructors of the qbruntime module, bound to this fake device.

    def get_available_devices(self) -> list[str]:
        return [self.device_name] * self.num_devices

    def set_log_level(self, level: LogLevel) -> None:
        self.log_level = level

    def start_tracing_events(self, path: str) -> bool:
        """Like qbruntime: one trace at a time, process-wide; False when one is already running."""
        if self._trace is not None:
            return False
        self._trace = (str(path), time.perf_counter(), len(self.calls))
        return True

    def stop_tracing_events(self) -> None:
        """Write the infer calls since start as a Chrome trace (one row per core)."""
        if self._trace is None:
            return
        path, started, first = self._trace
        self._trace = None
        with self._lock:
            calls = self.calls[first:]
        events = [
            {
                "name": f"infer {call.sentences}x{call.shapes[0][-2]}",
                "ph": "X",
                "pid": 0,
                "tid": f"cluster {call.core[0]} core {call.core[1]}",
                "ts": (call.start - started) * 1e6,
                "dur": (call.end - call.start) * 1e6,
            }
            for call in calls
        ]
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"traceEvents": events}, f)

    def Accelerator(self, device_name: str | int = "auto", dev_no: int = 0) -> _FakeAccelerator:
        if isinstance(device_name, int):  # Accelerator(dev_no), as in qbruntime
            dev_no, device_name = device_name, "auto"
        name = device_name.lower()
        if name not in _DEVICE_NAMES:
            raise _error("Acc_UnknownDevice")
        if self.num_devices == 0 and "-" in name:  # a board name opens its driver first
            raise _error("Driver_NotInitialized")
        if not (0 <= dev_no < self.num_devices) or not (name == "auto" or self.device_name.startswith(name)):
            raise _error("Acc_DeviceNotFound")
        return _FakeAccelerator(self, dev_no)

    def Model(self, path: str | os.PathLike, model_config: ModelConfig | None = None) -> _FakeModel:
        if not os.path.isfile(path):
            raise _error("Model_FailedToLoadMXQ")
        config = model_config if model_config is not None else ModelConfig()
        mode = config.get_core_mode()
        if mode != CoreMode.Auto and _CORE_MODE_NAMES.get(mode) not in self.core_modes:
            raise _error("Model_MXQAndModelConfigNotMatch")
        model = _FakeModel(self, next(self._model_ids), str(path), config)
        with self._lock:
            self.models.append(model)
        return model

    # Faults, for hardening tests: what a failing card would do.

    def fail_core(
        self, core: tuple[int, int], *, calls: Sequence[int] | None = None, code: str = "Model_InferFailed"
    ) -> None:
        """Make infer on `core` raise QbRuntimeError(code) on that core's calls numbered `calls`
        (1 = its first call since the fake was made), or on every call when `calls` is None."""
        self._faults[(core[0], core[1])] = (code, None if calls is None else set(calls))

    def hang_core(self, core: tuple[int, int]) -> None:
        """Make every infer on `core` block until `unhang` is set (a card that never answers)."""
        self._faults[(core[0], core[1])] = ("hang", None)

    def heal_core(self, core: tuple[int, int]) -> None:
        """Clear `core`'s fault, as a device that recovered: its calls succeed again."""
        self._faults.pop((core[0], core[1]), None)

    def _inject_fault(self, core: tuple[int, int]) -> None:
        with self._lock:
            number = self._core_calls[core] = self._core_calls.get(core, 0) + 1
        fault = self._faults.get(core)
        if fault is None or (fault[1] is not None and number not in fault[1]):
            return
        if fault[0] == "hang":
            self.unhang.wait()
            return
        raise _error(fault[0])

    # What tests and benchmarks read.

    def all_cores(self) -> list[tuple[int, int]]:
        """Every local core of a device, cluster-major."""
        return [divmod(i, _CORES_PER_CLUSTER) for i in range(self.num_cores)]

    def busy_cores(self) -> set[tuple[int, int]]:
        """Cores held by launched models, over all devices."""
        with self._lock:
            return {(cluster, core) for _, cluster, core in self._busy}

    def variant_input_shapes(self, width: int) -> list[tuple[int, int, int]]:
        shapes = [(1, width, self.hidden_size)]
        if self.mask_input is not None:
            shapes.append((1, width, 1))
        return shapes

    def _acquire(self, dev_no: int, cores: list[tuple[int, int]], model_id: int) -> None:
        with self._lock:
            if any((dev_no, c[0], c[1]) in self._busy for c in cores):
                raise _error("Acc_CoreAlreadyInUse")
            for c in cores:
                self._busy[(dev_no, c[0], c[1])] = model_id

    def _release(self, model_id: int) -> None:
        with self._lock:
            for key in [k for k, owner in self._busy.items() if owner == model_id]:
                del self._busy[key]

    def _free_cores(self, dev_no: int) -> list[tuple[int, int]]:
        with self._lock:
            return [c for c in self.all_cores() if (dev_no, *c) not in self._busy]

    def _compute(self, inputs: list[np.ndarray], start: float, lanes: int = 1) -> np.ndarray:
        """inputs in HWC: hidden [n, 1, W, C] (+ mask [n, 1, W, 1]) -> output [n, 1, W, C], returned
        no sooner than the modelled latency after `start` (the output is made within that time);
        `lanes` cores share the n sentences."""
        output = self._output(inputs)
        if self.latency_s is not None:
            n, _, width, _ = inputs[0].shape
            seconds = self.latency_s(width) if callable(self.latency_s) else self.latency_s
            _sleep_precisely(start + -(-n // lanes) * seconds - time.perf_counter())
        return output

    def output_shapes(self, width: int) -> list[tuple[int, int, int]]:
        hidden = (1, width, self.hidden_size)
        pooler = (1, 1, self.hidden_size)
        return {None: [hidden], "first": [pooler, hidden], "last": [hidden, pooler]}[self.pooler_output]

    def _output(self, inputs: list[np.ndarray]) -> np.ndarray:
        hidden = inputs[0][:, 0]  # [n, W, C]
        n, width, _ = hidden.shape
        if self._session is None:
            return np.zeros(inputs[0].shape, np.float32)
        if self.mask_input is None:
            mask = np.ones((n, width), np.int64)
        elif self.mask_input == "keep":
            mask = (inputs[1][:, 0, :, 0] > 0.5).astype(np.int64)
        else:
            mask = (inputs[1][:, 0, :, 0] > _ADDITIVE_KEEP_THRESHOLD).astype(np.int64)
        (output,) = self._session.run(None, encoder_feed(hidden, mask, self._packed))
        return output[:, None]  # [n, 1, W, C]


class _FakeAccelerator:
    def __init__(self, npu: FakeNpu, dev_no: int) -> None:
        self._npu = npu
        self.dev_no = dev_no

    def get_device_name(self) -> str:
        return self._npu.device_name


class _FakeVariantHandle:
    def __init__(self, npu: FakeNpu, idx: int) -> None:
        self._npu = npu
        self._idx = idx
        self._width = npu.variants[idx]

    def get_variant_idx(self) -> int:
        return self._idx

    def get_model_input_shape(self) -> list[tuple[int, int, int]]:
        return self._npu.variant_input_shapes(self._width)

    def get_model_output_shape(self) -> list[tuple[int, int, int]]:
        return self._npu.output_shapes(self._width)

    def get_input_buffer_info(self) -> list[BufferInfo]:
        max_width = self._width if self._width > 0 else self._npu.max_width
        return [BufferInfo(h, w, c, max_width) for h, w, c in self.get_model_input_shape()]


class _FakeModel:
    """qbruntime.Model: parse (here: describe), launch on cores, infer, dispose."""

    def __init__(self, npu: FakeNpu, model_id: int, path: str, config: ModelConfig) -> None:
        self._npu = npu
        self.model_id = model_id
        self.path = path
        self._config = config
        self._cores: list[tuple[int, int]] = []
        self._dev_no: int | None = None
        self.launched = False
        self.disposed = False

    def launch(self, acc: _FakeAccelerator) -> None:
        if self.launched:
            raise _error("Model_AlreadyLaunched")
        mode = self._config.get_core_mode()
        if mode == CoreMode.Single and self._config.get_core_ids():
            cores = [(c.cluster.value, c.core.value) for c in self._config.get_core_ids()]
            if any(c not in self._npu.all_cores() for c in cores):
                raise _error("Model_NoTargetCores")
        elif mode == CoreMode.Single:  # set_single_core_mode(num_cores): the first free cores
            cores = self._npu._free_cores(acc.dev_no)[: self._config.get_num_cores()]
            if len(cores) < self._config.get_num_cores():
                raise _error("Acc_CoreAlreadyInUse")
        elif mode in (CoreMode.Multi, CoreMode.Global4, CoreMode.Global8):  # whole clusters
            clusters = [0, 1] if mode == CoreMode.Global8 else [c.value for c in self._config.get_clusters()]
            cores = [(cluster, core) for cluster in clusters for core in range(_CORES_PER_CLUSTER)]
            if not clusters or any(c not in self._npu.all_cores() for c in cores):
                raise _error("Model_NoTargetCores")
        else:  # Auto: every local core
            cores = self._npu.all_cores()
        self._npu._acquire(acc.dev_no, cores, self.model_id)
        self._cores, self._dev_no = cores, acc.dev_no
        self.launched, self.disposed = True, False

    def dispose(self) -> None:
        if self.launched:
            self._npu._release(self.model_id)
        self.launched, self.disposed = False, True

    def get_target_cores(self) -> list[CoreId]:
        return [CoreId(Cluster(cluster), Core(core)) for cluster, core in self._cores]

    def get_core_mode(self) -> CoreMode:
        return self._config.get_core_mode()

    def get_num_model_variants(self) -> int:
        return len(self._npu.variants)

    def get_model_variant_handle(self, variant_idx: int) -> _FakeVariantHandle:
        if not 0 <= variant_idx < len(self._npu.variants):
            raise _error("Model_InvalidVariantIdx")
        return _FakeVariantHandle(self._npu, variant_idx)

    def get_model_input_shape(self) -> list[tuple[int, int, int]]:
        return self.get_model_variant_handle(0).get_model_input_shape()

    def get_model_output_shape(self) -> list[tuple[int, int, int]]:
        return self.get_model_variant_handle(0).get_model_output_shape()

    def get_input_buffer_info(self) -> list[BufferInfo]:
        return self.get_model_variant_handle(0).get_input_buffer_info()

    def infer(
        self, inputs: np.ndarray | list[np.ndarray], outputs: None = None, cache_size: int = 0
    ) -> list[np.ndarray]:
        """Check like qbruntime's Python layer, then like its C++ side, then compute."""
        if outputs is not None:
            raise NotImplementedError("the fake supports infer(inputs) only, not pre-allocated outputs")
        if not isinstance(inputs, list):
            inputs = [inputs]
        is_hwc = self._match_variant(inputs)
        for i, arr in enumerate(inputs):
            if arr.dtype != np.float32:
                raise TypeError(
                    f"fake qbruntime: input {i} is {arr.dtype}; pass float32 (the real runtime casts float64 "
                    "silently and treats int8/uint8 as pre-quantized data)"
                )
        inputs = [np.ascontiguousarray(a) for a in inputs]  # qbruntime copies non-contiguous input too
        if not self.launched:
            raise _error("Model_NotLaunched")
        # To the fake's one layout: [n, H, W, C].
        batched = [a if a.ndim == 4 else a[None] for a in inputs]
        multi = self._config.get_core_mode() == CoreMode.Multi
        if not multi and self._npu.max_batch is not None and len(batched[0]) > self._npu.max_batch:
            raise _error("Model_ShapeMismatched")
        if not is_hwc:
            batched = [a.transpose(0, 2, 3, 1) for a in batched]
        self._npu._inject_fault(self._cores[0])
        start = time.perf_counter()
        output = self._npu._compute(batched, start, lanes=_CORES_PER_CLUSTER if multi else 1)  # [n, 1, W, C]
        end = time.perf_counter()
        if not is_hwc:
            output = output.transpose(0, 3, 1, 2)
        if inputs[0].ndim == 3:
            output = output[0]
        call = InferCall(self._cores[0], self.model_id, tuple(a.shape for a in inputs), start, end)
        with self._npu._lock:
            self._npu.calls.append(call)
        hidden = np.ascontiguousarray(output, dtype=np.float32)
        if self._npu.pooler_output is None:
            return [hidden]
        pooler = np.tanh(hidden[..., :1, :])  # (.., 1, 1, C): BERT's pooler looks at the first token
        return [pooler, hidden] if self._npu.pooler_output == "first" else [hidden, pooler]

    def _match_variant(self, inputs: list[np.ndarray]) -> bool:
        """The first variant every input fits, as qbruntime picks it; returns is_hwc."""
        for width in self._npu.variants:
            found = _find_memory_format(inputs, self._npu.variant_input_shapes(width))
            if found is None:
                continue
            is_hwc = found[0]
            seq = inputs[0].shape[-2] if is_hwc else inputs[0].shape[-1]
            if width < 0 and seq > self._npu.max_width:
                raise _error("Model_ShapeMismatched")
            return is_hwc
        raise ValueError("Input shape is invalid.")


def _open_onnx(path: str | os.PathLike):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread per call: several fake cores run at once, as on the card.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
