"""NPU monitoring through Mobilint's `mobilint-ml` package (import `mbltml`; the `monitor` extra):
per-device utilisation (total and per core), memory, temperature and power. Optional: without the
package or a driver, the status says why instead."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

# mbltml's target device types, by the board names qbruntime reports.
_TARGET_DEVICES = {
    "aries-ra": "MBLTML_TARGET_DEVICE_ARIES_RA",
    "aries-rb": "MBLTML_TARGET_DEVICE_ARIES_RB",
    "regulus-ra": "MBLTML_TARGET_DEVICE_REGULUS_RA",
    "regulus-rb": "MBLTML_TARGET_DEVICE_REGULUS_RB",
    "regulus-ra-usb": "MBLTML_TARGET_DEVICE_REGULUS_RA_USB",
    "regulus-rb-usb": "MBLTML_TARGET_DEVICE_REGULUS_RB_USB",
}


def npu_status(mbltml_module: ModuleType | Any | None = None) -> dict[str, Any]:
    """{"available": True, "devices": [...]} with one entry per detected board, or
    {"available": False, "reason": "..."}. Never raises: it is a report, not a requirement.

    Each device: board, dev_no, utilization_percent, cores [{cluster, core, utilization_percent}],
    memory_used_bytes, memory_total_bytes, temperature_c and power_w; a reading the driver does not
    support (power on REGULUS) is None.
    """
    try:
        ml = mbltml_module if mbltml_module is not None else importlib.import_module("mbltml")
    except ImportError:
        return {"available": False, "reason": "mobilint-ml is not installed (pip install 'bertnpu[monitor]')"}
    try:
        ml.mbltmlInit()
    except Exception as exc:  # noqa: BLE001 - MBLTMLUninitializedError without a driver, and its siblings
        return {"available": False, "reason": f"mbltml cannot start: {type(exc).__name__}: {exc}"}
    try:
        devices = []
        for board, constant in _TARGET_DEVICES.items():
            target = getattr(ml, constant)
            for dev_no in range(_reading(functools.partial(ml.mbltmlGetTargetDeviceCount, target)) or 0):
                devices.append(_device_status(ml, board, target, dev_no))
        return {"available": True, "devices": devices}
    finally:
        _reading(ml.mbltmlShutdown)


def _device_status(ml: Any, board: str, target: int, dev_no: int) -> dict[str, Any]:
    def read(name: str) -> Any:
        return _reading(lambda: getattr(ml, name)(target, dev_no))

    cores = [
        {
            "cluster": int(info.core_id.cluster),
            "core": int(info.core_id.core),
            "utilization_percent": round(100.0 * info.npu_time / info.interval, 1) if info.interval else None,
        }
        for info in read("mbltmlGetCoreInfos") or []
    ]
    return {
        "board": board,
        "dev_no": dev_no,
        "utilization_percent": read("mbltmlGetTotalUtilization"),
        "cores": cores,
        "memory_used_bytes": read("mbltmlGetMemoryUsage"),
        "memory_total_bytes": read("mbltmlGetMemoryTotal"),
        "temperature_c": read("mbltmlGetTemperature"),
        "power_w": read("mbltmlGetTotalPower"),
    }


def _reading(call: Callable[[], Any]) -> Any:
    """One reading, or None where the driver does not support it (MBLTMLNotSupportedError) or fails."""
    try:
        return call()
    except Exception:  # noqa: BLE001 - a missing reading is None in the report
        return None
