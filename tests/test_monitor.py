"""bertnpu info's NPU monitoring: the real mobilint-ml on this host (with or without a card), a
driver that cannot start, the package missing, and the readings of a card through a stand-in with
mbltml's function names and structures."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from bertnpu_runtime.monitor import npu_status


def test_the_real_mbltml_reports_what_qbruntime_sees_on_this_host():
    import qbruntime

    status = npu_status()
    if qbruntime.get_available_devices():  # a host with a card: its readings
        assert status["available"] is True and status["devices"], status
        assert all({"board", "dev_no", "utilization_percent"} <= set(device) for device in status["devices"])
    else:  # no card, no driver: why not
        assert status["available"] is False and status["reason"].startswith("mbltml cannot start: "), status


def test_a_driver_that_cannot_start_is_reported_not_raised():
    import mbltml

    def refuse():
        raise mbltml.MBLTMLUninitializedError(mbltml.MBLTML_UNINITIALIZED)

    status = npu_status(SimpleNamespace(mbltmlInit=refuse))
    assert status["available"] is False and "MBLTMLUninitializedError" in status["reason"]


def test_without_the_package_the_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "mbltml", None)
    assert npu_status() == {
        "available": False,
        "reason": "mobilint-ml is not installed (pip install 'bertnpu[monitor]')",
    }


def card_readings():
    """mbltml as it answers on one ARIES-RB card; power is refused as on a driver without PMIC support."""
    import mbltml

    shut = []

    def per_device(value):
        def read(target, dev_no):
            assert target == mbltml.MBLTML_TARGET_DEVICE_ARIES_RB and dev_no == 0
            return value

        return read

    def no_power(target, dev_no):
        raise mbltml.MBLTMLNotSupportedError(mbltml.MBLTML_NOT_SUPPORTED)

    core = mbltml.mbltmlCoreInfo_t(mbltml.mbltmlCoreId_t(1, 2), 250, 1000)
    module = SimpleNamespace(
        **{name: getattr(mbltml, name) for name in dir(mbltml) if name.startswith("MBLTML_TARGET_DEVICE")},
        mbltmlInit=lambda: None,
        mbltmlShutdown=lambda: shut.append(True),
        mbltmlGetTargetDeviceCount=lambda target: 1 if target == mbltml.MBLTML_TARGET_DEVICE_ARIES_RB else 0,
        mbltmlGetTotalUtilization=per_device(37.5),
        mbltmlGetCoreInfos=per_device([core]),
        mbltmlGetMemoryUsage=per_device(1 << 20),
        mbltmlGetMemoryTotal=per_device(16 << 30),
        mbltmlGetTemperature=per_device(48),
        mbltmlGetTotalPower=no_power,
    )
    return module, shut


def test_a_cards_readings():
    module, shut = card_readings()
    status = npu_status(module)
    assert status == {
        "available": True,
        "devices": [
            {
                "board": "aries-rb",
                "dev_no": 0,
                "utilization_percent": 37.5,
                "cores": [{"cluster": 1, "core": 2, "utilization_percent": 25.0}],
                "memory_used_bytes": 1 << 20,
                "memory_total_bytes": 16 << 30,
                "temperature_c": 48,
                "power_w": None,
            }
        ],
    }
    assert shut == [True]  # mbltml is shut down after reading


def test_bertnpu_info_reports_the_monitoring_state(tiny_bundle, capsys):
    import json

    from bertnpu_runtime.cli import main

    assert main(["info", "--bundle", str(tiny_bundle)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["npu_monitor"]["available"] == npu_status()["available"]
    assert info["npu_monitor"].get("reason") or info["npu_monitor"].get("devices")
