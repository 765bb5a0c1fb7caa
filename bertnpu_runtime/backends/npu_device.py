"""What the npu backend starts from: whether qbruntime sees a card, which of the card's cores to use,
and which sequence widths the compiled .mxq accepts (its model variants)."""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..bundle import NPU_TARGET_DEVICES, NpuSpec
from ..errors import BundleError
from ..options import CORE_MODES

logger = logging.getLogger("bertnpu")

CLUSTERS = 2
CORES_PER_CLUSTER = 4
# Local cores per device family (checked: ARIES 2 clusters x 4 cores, REGULUS 1 core).
_LOCAL_CORES = {"aries": CLUSTERS * CORES_PER_CLUSTER, "regulus": 1}


def list_npu_devices(qbruntime_module: ModuleType | Any | None = None) -> list[str] | str:
    """The device names qbruntime sees (e.g. ["aries-rb"]), or why it cannot list them, in one
    line. Never raises.

    Sets qbruntime's C++ log level to Off first: without a card, get_available_devices() logs an
    error line, which for backend="auto" is the expected answer, not an error.
    """
    try:
        qb = qbruntime_module if qbruntime_module is not None else importlib.import_module("qbruntime")
    except ImportError:
        return "qbruntime is not installed (pip install 'bertnpu[npu]')"
    try:
        qb.set_log_level(qb.LogLevel.Off)
        return [str(name) for name in qb.get_available_devices()]
    except Exception as exc:  # noqa: BLE001 - a broken driver install must not break backend="auto"
        return f"qbruntime.get_available_devices() failed: {exc}"


def probe_npu(qbruntime_module: ModuleType | Any | None = None) -> str | None:
    """None when qbruntime is importable and sees an NPU, else why not, in one line. Never raises."""
    devices = list_npu_devices(qbruntime_module)
    if isinstance(devices, str):
        return devices
    if not devices:
        return "no Mobilint NPU found (qbruntime.get_available_devices() returned [])"
    return None


@dataclass(frozen=True)
class Variant:
    """The sequence width one model variant accepts: > 0 exactly that, < 0 any multiple of -width."""

    width: int
    max_width: int  # 0 when the runtime gives no limit

    def smallest_fit(self, length: int) -> int | None:
        """The smallest width >= length this variant accepts."""
        if self.width > 0:
            return self.width if length <= self.width else None
        step = -self.width
        fit = math.ceil(length / step) * step
        return fit if self.max_width <= 0 or fit <= self.max_width else None

    def __str__(self) -> str:
        if self.width > 0:
            return str(self.width)
        limit = f" up to {self.max_width}" if self.max_width > 0 else ""
        return f"any length{limit}" if self.width == -1 else f"multiples of {-self.width}{limit}"


@dataclass(frozen=True)
class MxqLayout:
    """What the launched .mxq takes and gives: its variants' widths, the mask input it has (bundle.json's
    npu.mask_input, with "auto" resolved), and which output holds the last hidden state."""

    variants: list[Variant]
    mask_input: str | None
    output_index: int


def read_layout(model: Any, mxq_path: Path, npu_spec: NpuSpec, hidden_size: int) -> MxqLayout:
    """Every model variant's inputs and outputs, checked against what bundle.json says the .mxq is."""
    mask_input = npu_spec.mask_input
    if mask_input == "auto":  # Mobilint's recipe: a second input is the attention_mask it marked as padding mask
        mask_input = "keep" if len(model.get_model_variant_handle(0).get_model_input_shape()) == 2 else None
    n_inputs = 1 if mask_input is None else 2
    variants, output_indices = [], set()
    for idx in range(model.get_num_model_variants()):
        handle = model.get_model_variant_handle(idx)
        shapes = [tuple(s) for s in handle.get_model_input_shape()]  # one (H, W, C) per input
        if len(shapes) != n_inputs:
            raise BundleError(
                mxq_path,
                f"variant {idx} has {len(shapes)} inputs {shapes}; bundle.json's npu.mask_input="
                f"{npu_spec.mask_input!r} means {n_inputs} (hidden states{' and mask' if n_inputs == 2 else ''})",
            )
        height, width, channels = shapes[0]
        if height != 1 or channels != hidden_size or width == 0:
            raise BundleError(
                mxq_path, f"variant {idx} input 0 has shape (H, W, C) = {shapes[0]}, expected (1, seq, {hidden_size})"
            )
        if n_inputs == 2 and shapes[1] != (1, width, 1):
            raise BundleError(
                mxq_path, f"variant {idx} input 1 (the mask) has shape {shapes[1]}, expected (1, {width}, 1)"
            )
        outputs = [tuple(s) for s in handle.get_model_output_shape()]
        # A whole-BertModel .mxq may also give the pooler's (1, 1, hidden): take the hidden states' shape.
        fits = [i for i, shape in enumerate(outputs) if shape == (1, width, hidden_size)]
        if not fits:
            raise BundleError(
                mxq_path, f"variant {idx} outputs {outputs}; none is the last hidden state (1, {width}, {hidden_size})"
            )
        output_indices.add(fits[0])
        variants.append(Variant(width, handle.get_input_buffer_info()[0].max_width))
    if not variants:
        raise BundleError(mxq_path, "the .mxq has no model variants")
    if len(output_indices) != 1:
        raise BundleError(
            mxq_path, f"its variants give the last hidden state at different outputs {sorted(output_indices)}"
        )
    return MxqLayout(variants, mask_input, output_indices.pop())


ALL_CORES = -1  # a slot's core for a model over a whole cluster (multi, global4); both are -1 for global8


def select_slots(core_mode: str, cores: Any, device_cores: int) -> list[tuple[int, int]]:
    """Where each model instance runs: (cluster, core) per core in single-core mode; (cluster,
    ALL_CORES) per cluster in multi and global4 mode; (ALL_CORES, ALL_CORES) for global8."""
    if core_mode not in CORE_MODES:
        raise ValueError(f"npu core mode must be one of {CORE_MODES}, found {core_mode!r:.40}")
    if core_mode == "single":
        return select_cores(cores, device_cores)
    if cores is not None:
        raise ValueError(
            f"npu_cores chooses the cores of single-core mode; core mode {core_mode!r} runs on whole clusters"
        )
    if device_cores < CLUSTERS * CORES_PER_CLUSTER:
        raise ValueError(
            f"core mode {core_mode!r} needs an ARIES card ({CLUSTERS} clusters of {CORES_PER_CLUSTER} cores); "
            f"this device has {device_cores} core(s): use core mode 'single'"
        )
    if core_mode == "global8":
        return [(ALL_CORES, ALL_CORES)]
    return [(cluster, ALL_CORES) for cluster in range(CLUSTERS)]


def slot_name(slot: tuple[int, int]) -> str:
    """ "(cluster 0, core 1)", "(cluster 1, all cores)" or "(both clusters)", for messages."""
    cluster, core = slot
    if cluster == ALL_CORES:
        return "(both clusters)"
    return f"(cluster {cluster}, all cores)" if core == ALL_CORES else f"(cluster {cluster}, core {core})"


def select_cores(cores: int | Sequence[tuple[int, int]] | None, device_cores: int) -> list[tuple[int, int]]:
    """The (cluster, core) pairs to launch on, cluster-major; see NpuEncoder's `cores`."""
    if cores is None:
        cores = device_cores
    if isinstance(cores, (bool, float, str)) or not isinstance(cores, (int, np.integer, Sequence)):
        raise ValueError(f"cores must be a count or a list of (cluster, core) pairs, found {cores!r:.40}")
    if isinstance(cores, (int, np.integer)):
        cores = int(cores)
        if not 1 <= cores <= device_cores:
            raise ValueError(f"cores={cores}, but the device has {device_cores} local cores")
        return [divmod(i, CORES_PER_CLUSTER) for i in range(cores)]
    pairs = [tuple(pair) if isinstance(pair, Sequence) and not isinstance(pair, str) else (pair,) for pair in cores]
    for pair in pairs:
        if (
            len(pair) != 2
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in pair)
            or not (0 <= pair[0] < CLUSTERS and 0 <= pair[1] < CORES_PER_CLUSTER)
        ):
            raise ValueError(
                f"cores must be (cluster 0-{CLUSTERS - 1}, core 0-{CORES_PER_CLUSTER - 1}) pairs, found {pair}"
            )
    if not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(f"cores must list distinct (cluster, core) pairs, found {pairs}")
    return [(int(cluster), int(core)) for cluster, core in pairs]


def device_core_count(accelerator: Any) -> int:
    """Local cores of the opened card, from its resolved name (e.g. "aries-rb", "regulus-ra")."""
    name = accelerator.get_device_name().lower()
    for family, count in _LOCAL_CORES.items():
        if name.startswith(family):
            return count
    logger.warning(
        "npu backend: unknown device %r, using 1 core (to use more, pass npu_cores= to SentenceEncoder, "
        "or cores= to NpuEncoder)",
        name,
    )
    return 1


def other_board(target_device: str | None, devices: list[str] | str) -> str | None:
    """The compile target (aries-rb, regulus-rb) of the card qbruntime lists, when the bundle was
    compiled for the other kind; None when it matches, nothing is listed or nothing was recorded."""
    if target_device is None or not isinstance(devices, list):
        return None
    present = {
        board for board in NPU_TARGET_DEVICES for name in devices if str(name).lower().startswith(board.split("-")[0])
    }
    return next(iter(sorted(present - {target_device})), None) if target_device not in present else None


def available_devices(qb: Any) -> list[str] | str:
    """What qbruntime lists, for an error message; never raises."""
    try:
        return qb.get_available_devices()
    except Exception as exc:  # noqa: BLE001 - only decorating an error message
        return f"<get_available_devices failed: {exc}>"
