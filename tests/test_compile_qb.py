"""The qbcompiler steps against a stand-in `qbcompiler` module that checks the arguments it gets."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from bertnpu_runtime.bundle import CALIB_DIR, MANIFEST_FILE, MXQ_FILE, ONNX_HIDDEN_INPUT, Bundle, sha256_of
from compile import CompileError, build_bundle
from compile.qb import MBLT_FILE, QUANTIZATION_SETTINGS
from conftest import TINY_HIDDEN

SEED_SETTINGS = {"quantization_method": 1, "quantization_output": 0, "quantization_mode": 1, "percentile": 0.999, "topk_ratio": 0.01}


class _Dim:
    def __init__(self, size: int) -> None:
        self.size, self.dynamic = size, False

    def set_dynamic(self) -> None:
        self.dynamic = True


class _Wrapped:
    def __init__(self, name: str, tensor: torch.Tensor) -> None:
        self.name, self.tensor = name, tensor
        self.src_shape = [_Dim(d) for d in tensor.shape]


class _QuantizationConfig:
    """The older API: QuantizationConfig.from_kwargs(quantization_method=..., ...)."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    @classmethod
    def from_kwargs(cls, **kwargs) -> "_QuantizationConfig":
        return cls(**kwargs)


class _CalibrationConfig:
    """The newer API: CalibrationConfig(method=, output=, mode=, max_percentile=CalibrationConfig.MaxPercentile(...))."""

    class MaxPercentile:
        def __init__(self, *, percentile: float, topk_ratio: float) -> None:
            self.percentile, self.topk_ratio = percentile, topk_ratio

    def __init__(self, *, method: int, output: int, mode: int, max_percentile: "_CalibrationConfig.MaxPercentile") -> None:
        self.method, self.output, self.mode, self.max_percentile = method, output, mode, max_percentile

    def as_seed_settings(self) -> dict:
        return {
            "quantization_method": self.method,
            "quantization_output": self.output,
            "quantization_mode": self.mode,
            "percentile": self.max_percentile.percentile,
            "topk_ratio": self.max_percentile.topk_ratio,
        }


def _check_model(model) -> None:
    """The encoder alone, in eval mode, taking any sequence length."""
    assert not model.training
    for seq in (3, 17):  # any length: the graph has no fixed sequence size
        out = model(torch.randn(1, seq, TINY_HIDDEN))
        assert isinstance(out, torch.Tensor) and out.shape == (1, seq, TINY_HIDDEN)


def _check_input(api: str, kwargs: dict) -> None:
    """The example input as each API wants it: newer, a tensor + dynamic_axes; older, a wrap_tensor marked dynamic."""
    feed_dict = kwargs["feed_dict"]
    assert list(feed_dict) == [ONNX_HIDDEN_INPUT]
    if api == "calibration":
        tensor = feed_dict[ONNX_HIDDEN_INPUT]
        assert kwargs["dynamic_axes"] == {ONNX_HIDDEN_INPUT: [1]}
    else:
        wrapped = feed_dict[ONNX_HIDDEN_INPUT]
        assert wrapped.name == ONNX_HIDDEN_INPUT and "dynamic_axes" not in kwargs
        assert [d.dynamic for d in wrapped.src_shape] == [False, True, False]
        tensor = wrapped.tensor
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    assert tuple(tensor.shape[::2]) == (1, TINY_HIDDEN)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch):
    """Install a fake qbcompiler; `api` picks the newer CalibrationConfig or the older QuantizationConfig."""

    def install(api: str = "calibration"):
        calls: list[tuple[str, dict]] = []
        qb = types.ModuleType("qbcompiler")
        if api == "calibration":
            qb.CalibrationConfig = _CalibrationConfig
        else:
            qb.QuantizationConfig = _QuantizationConfig

        def mxq_compile(**kwargs):
            calls.append(("mxq_compile", kwargs))
            _check_model(kwargs["model"])
            _check_input(api, kwargs)
            calib = Path(kwargs["calib_data_path"])
            assert calib.name == CALIB_DIR and len(list(calib.glob("*.npy"))) == 4
            assert kwargs["backend"] == "torch"
            allowed = {"model", "save_path", "calib_data_path", "backend", "feed_dict", "dynamic_axes", "target_device", "inference_scheme"}
            assert set(kwargs) - allowed == {f"{api}_config"}
            config = kwargs[f"{api}_config"]
            assert (config.as_seed_settings() if api == "calibration" else config.kwargs) == SEED_SETTINGS
            Path(kwargs["save_path"]).write_bytes(b"fake mxq")

        def mblt_compile(**kwargs):
            calls.append(("mblt_compile", kwargs))
            _check_model(kwargs["model"])
            _check_input(api, kwargs)
            assert kwargs["backend"] == "torch"
            Path(kwargs["mblt_save_path"]).write_bytes(b"fake mblt")

        qb.mxq_compile, qb.mblt_compile = mxq_compile, mblt_compile
        util = types.ModuleType("qbcompiler.model_dict.parser.backend.torch.util")
        util.wrap_tensor = _Wrapped
        monkeypatch.setitem(sys.modules, "qbcompiler", qb)
        parts = util.__name__.split(".")
        for i in range(2, len(parts)):
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        monkeypatch.setitem(sys.modules, util.__name__, util)
        return calls

    return install


def test_quantization_settings_are_the_seeds():
    assert QUANTIZATION_SETTINGS == SEED_SETTINGS


@pytest.mark.parametrize("api", ["calibration", "quantization"])
def test_mxq_is_compiled_with_the_seed_settings(stand_in, api, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in(api)
    out = build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mxq=True, target_device="aries-rb")
    assert [name for name, _ in calls] == ["mxq_compile"]
    kwargs = calls[0][1]
    assert kwargs["target_device"] == "aries-rb"
    if api == "calibration":  # ARIES holds every core scheme in one .mxq; REGULUS only "single"
        assert kwargs["inference_scheme"] == "all"
    assert Path(kwargs["save_path"]).name == MXQ_FILE
    assert (out / MXQ_FILE).read_bytes() == b"fake mxq"
    bundle = Bundle(out)
    assert bundle.path(MXQ_FILE) == out / MXQ_FILE  # listed and hash-checked
    assert bundle.manifest.npu.mask_input is None


def test_target_device_is_left_out_when_not_given(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mxq=True)
    assert "target_device" not in calls[0][1] and "inference_scheme" not in calls[0][1]


def test_regulus_gets_the_single_scheme(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mxq=True, target_device="regulus-rb")
    assert calls[0][1]["inference_scheme"] == "single"


def test_unknown_target_device_is_named_before_any_work(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    with pytest.raises(CompileError, match="'tpu-9'"):
        build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mxq=True, target_device="tpu-9")
    assert calls == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("api", ["calibration", "quantization"])
def test_mblt_analysis_step(stand_in, api, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in(api)
    out = build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mblt=True)
    assert [name for name, _ in calls] == ["mblt_compile"]
    assert calls[0][1]["mblt_save_path"] == str(Path(calls[0][1]["mblt_save_path"]).parent / MBLT_FILE)
    files = json.loads((out / MANIFEST_FILE).read_text())["files"]
    assert files[MBLT_FILE]["sha256"] == sha256_of(out / MBLT_FILE) and MXQ_FILE not in files


@pytest.mark.parametrize("flag", ["mxq", "mblt"])
def test_missing_qbcompiler_is_named_before_any_work(monkeypatch, flag, tiny_model_dir: Path, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "qbcompiler", None)  # makes `import qbcompiler` raise ImportError
    loads = []
    monkeypatch.setattr("compile.pipeline.load_source_model", lambda *args: loads.append(args))
    with pytest.raises(CompileError) as error:
        build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, **{flag: True})
    message = str(error.value)
    assert "qbcompiler" in message and "not importable" in message
    assert loads == [] and not (tmp_path / "b").exists()


def test_a_failing_compiler_leaves_no_mxq(stand_in, tiny_model_dir: Path, tmp_path: Path):
    stand_in()

    def crash(**kwargs):
        Path(kwargs["save_path"]).write_bytes(b"half")
        raise RuntimeError("out of memory")

    sys.modules["qbcompiler"].mxq_compile = crash
    with pytest.raises(CompileError, match="mxq_compile failed.*out of memory"):
        build_bundle(str(tiny_model_dir), tmp_path / "b", calib_samples=4, mxq=True)
    assert not (tmp_path / "b" / MXQ_FILE).exists() and not Bundle(tmp_path / "b").has(MXQ_FILE)


def test_calibration_input_shape_is_what_the_compiler_needs(tiny_bundle: Path):
    for path in (tiny_bundle / CALIB_DIR).glob("*.npy"):
        array = np.load(path)
        assert array.ndim == 3 and array.shape[0] == 1 and array.flags.c_contiguous
