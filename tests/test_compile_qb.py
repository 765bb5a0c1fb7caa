"""The qbcompiler steps against a stand-in built from Mobilint's published calls (tests/standins/qbcompiler):
it takes only the keywords their code passes, so any other is a TypeError, as it can be on the real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bertnpu_runtime.bundle import CALIB_DIR, MANIFEST_FILE, MXQ_FILE, ONNX_HIDDEN_INPUT, Bundle, sha256_of
from compile import CompileError, build_bundle
from compile.qb import MBLT_FILE, MODEL_INPUTS, QUANTIZATION_SETTINGS

STANDINS = Path(__file__).parent / "standins"
SEED_SETTINGS = {
    "quantization_method": 1,
    "quantization_output": 0,
    "quantization_mode": 1,
    "percentile": 0.999,
    "topk_ratio": 0.01,
}
# The keywords of Mobilint's BERT compile_mxq.py, plus device= (their STT script, the guides).
PUBLISHED_MXQ_KEYWORDS = {
    "model",
    "save_path",
    "calib_data_path",
    "backend",
    "feed_dict",
    "calibration_config",
    "device",
}
SEED_MBLT_KEYWORDS = {"model", "mblt_save_path", "backend", "feed_dict", "cpu_offload"}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch):
    """Import the stand-in as `qbcompiler`; api="legacy" swaps in the API before CalibrationConfig."""

    def install(api: str = "calibration"):
        for name in [m for m in sys.modules if m == "qbcompiler" or m.startswith("qbcompiler.")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.syspath_prepend(str(STANDINS))
        import qbcompiler

        qbcompiler.calls.clear()
        if api == "legacy":
            monkeypatch.delattr(qbcompiler, "CalibrationConfig")
            monkeypatch.setattr(qbcompiler, "QuantizationConfig", qbcompiler.LEGACY.QuantizationConfig, raising=False)
            monkeypatch.setattr(qbcompiler, "mxq_compile", qbcompiler.LEGACY.mxq_compile)
        return qbcompiler.calls

    return install


def build(model_dir: Path, out: Path, **options):
    return build_bundle(str(model_dir), out, calib_samples=4, **options)


def test_quantization_settings_are_the_seeds():
    assert QUANTIZATION_SETTINGS == SEED_SETTINGS


def test_the_whole_model_is_compiled_as_mobilint_does(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True)
    [(name, kwargs)] = calls
    assert name == "mxq_compile" and set(kwargs) == PUBLISHED_MXQ_KEYWORDS
    assert type(kwargs["model"]).__name__ == "BertModel" and kwargs["backend"] == "torch"
    assert kwargs["device"] == ("gpu" if torch.cuda.is_available() else "cpu")
    assert kwargs["calibration_config"].settings() == SEED_SETTINGS
    feed = kwargs["feed_dict"]
    assert list(feed) == list(MODEL_INPUTS)
    assert all([d.dynamic for d in w.src_shape] == [False, True] for w in feed.values())
    assert feed["attention_mask"].attention_mask == "padding_mask" and feed["input_ids"].attention_mask is None
    assert Path(kwargs["calib_data_path"]).name == CALIB_DIR
    bundle = Bundle(out)
    assert bundle.path(MXQ_FILE) == out / MXQ_FILE  # listed and hash-checked
    npu = json.loads((out / MANIFEST_FILE).read_text())["npu"]
    assert npu == {
        "graph": "model",
        "compiled_inputs": list(MODEL_INPUTS),
        "mask_input": "auto",
        "inference_scheme": None,
        "compile_device": kwargs["device"],
    }
    assert bundle.manifest.npu.mask_input == "auto" and bundle.manifest.npu.graph == "model"


def test_the_example_input_is_the_tutorials_sentence(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True)
    ids = calls[0][1]["feed_dict"]["input_ids"].tensor
    from bertnpu_runtime.tokenize import Tokenizer

    expected = Tokenizer(out / "tokenizer.json", 128).encode(["Hello, my dog is cute"]).input_ids
    np.testing.assert_array_equal(ids.numpy(), expected)


def test_an_inference_scheme_is_passed_when_given(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True, inference_scheme="multi", compile_device="cpu")
    assert calls[0][1]["inference_scheme"] == "multi" and calls[0][1]["device"] == "cpu"
    assert Bundle(out).manifest.npu.inference_scheme == "multi"


def test_the_encoder_graph_is_an_option(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True, npu_graph="encoder")
    kwargs = calls[0][1]
    assert type(kwargs["model"]).__name__ == "EncoderOnly" and list(kwargs["feed_dict"]) == [ONNX_HIDDEN_INPUT]
    wrapped = kwargs["feed_dict"][ONNX_HIDDEN_INPUT]
    assert [d.dynamic for d in wrapped.src_shape] == [False, True, False] and wrapped.tensor.dtype == torch.float32
    assert Bundle(out).manifest.npu.graph == "encoder" and Bundle(out).manifest.npu.mask_input is None


def test_the_legacy_api_gets_the_seeds_call(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in("legacy")
    build(tiny_model_dir, tmp_path / "b", mxq=True)
    [(_, kwargs)] = calls
    assert set(kwargs) == {"model", "save_path", "calib_data_path", "backend", "feed_dict", "quantization_config"}
    assert kwargs["quantization_config"].settings() == SEED_SETTINGS


def test_the_legacy_api_refuses_options_it_has_no_keyword_for(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in("legacy")
    with pytest.raises(CompileError, match="take neither inference_scheme nor device"):
        build(tiny_model_dir, tmp_path / "b", mxq=True, inference_scheme="all")
    assert calls == [] and not (tmp_path / "b").exists()


def test_the_stand_in_refuses_keywords_mobilint_never_passes(stand_in):
    stand_in()
    import qbcompiler

    with pytest.raises(TypeError, match="dynamic_axes"):
        qbcompiler.mxq_compile(model=None, save_path="x", calib_data_path="y", dynamic_axes={})
    with pytest.raises(TypeError, match="target_device"):
        qbcompiler.mxq_compile(model=None, save_path="x", calib_data_path="y", target_device="aries")


@pytest.mark.parametrize(
    "option", [{"npu_graph": "decoder"}, {"inference_scheme": "global16"}, {"compile_device": "tpu"}]
)
def test_unknown_options_are_named_before_any_work(stand_in, option, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    with pytest.raises(CompileError, match=repr(next(iter(option.values())))):
        build(tiny_model_dir, tmp_path / "b", mxq=True, **option)
    assert calls == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("graph", ["model", "encoder"])
def test_mblt_analysis_step_is_the_seeds_call(stand_in, graph, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mblt=True, npu_graph=graph)
    [(name, kwargs)] = calls
    assert name == "mblt_compile" and set(kwargs) == SEED_MBLT_KEYWORDS and kwargs["cpu_offload"] is True
    assert Path(kwargs["mblt_save_path"]).name == MBLT_FILE
    files = json.loads((out / MANIFEST_FILE).read_text())["files"]
    assert files[MBLT_FILE]["sha256"] == sha256_of(out / MBLT_FILE) and MXQ_FILE not in files


@pytest.mark.parametrize("flag", ["mxq", "mblt"])
def test_missing_qbcompiler_is_named_before_any_work(monkeypatch, flag, tiny_model_dir: Path, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "qbcompiler", None)  # makes `import qbcompiler` raise ImportError
    loads = []
    monkeypatch.setattr("compile.pipeline.load_source_model", lambda *args: loads.append(args))
    with pytest.raises(CompileError) as error:
        build(tiny_model_dir, tmp_path / "b", **{flag: True})
    message = str(error.value)
    assert "qbcompiler" in message and "not importable" in message
    assert loads == [] and not (tmp_path / "b").exists()


def test_a_failing_compiler_leaves_no_mxq(stand_in, monkeypatch, tiny_model_dir: Path, tmp_path: Path):
    stand_in()

    def crash(**kwargs):
        Path(kwargs["save_path"]).write_bytes(b"half")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sys.modules["qbcompiler"], "mxq_compile", crash)
    with pytest.raises(CompileError, match="mxq_compile failed.*out of memory"):
        build(tiny_model_dir, tmp_path / "b", mxq=True)
    assert not (tmp_path / "b" / MXQ_FILE).exists() and not Bundle(tmp_path / "b").has(MXQ_FILE)
    assert Bundle(tmp_path / "b").manifest.npu.graph is None  # no .mxq, no description of one


def test_the_cli_compiles_an_mxq_end_to_end(tiny_model_dir: Path, tmp_path: Path):
    """python -m compile --mxq in a fresh interpreter, with the stand-in as the installed qbcompiler."""
    log = tmp_path / "calls.jsonl"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]),
        QBCOMPILER_STANDIN_LOG=str(log),
    )
    out = tmp_path / "bundle"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "compile",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--calib-samples",
            "4",
            "--mxq",
            "--inference-scheme",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["function"] == "mxq_compile" and set(call["keywords"]) == PUBLISHED_MXQ_KEYWORDS | {"inference_scheme"}
    assert call["summary"]["model"] == "BertModel" and call["summary"]["inference_scheme"] == "all"
    assert call["summary"]["feed_dict"]["attention_mask"] == {"dynamic": [False, True], "mask": "padding_mask"}
    assert Bundle(out).path(MXQ_FILE).read_bytes() == b"stand-in mxq\n"


def test_calibration_input_shape_is_what_the_compiler_needs(tiny_bundle: Path):
    for path in (tiny_bundle / CALIB_DIR).glob("*.npy"):
        array = np.load(path)
        assert array.ndim == 3 and array.shape[0] == 1 and array.flags.c_contiguous
