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
from compile.qb import MBLT_FILE, MODEL_INPUTS

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
# compile_mxq_regulus.py: the whole model for REGULUS.
REGULUS_MXQ_KEYWORDS = {
    "model",
    "target_device",
    "save_path",
    "calib_data_path",
    "backend",
    "inference_scheme",
    "feed_dict",
    "calibration_config",
}
# compile_model.py / mxq_compile.py / mblt_compile.py: the encoder alone, for either board.
ENCODER_MXQ_KEYWORDS = {
    "model",
    "target_device",
    "save_path",
    "calib_data_path",
    "backend",
    "feed_dict",
    "dynamic_axes",
    "inference_scheme",
    "calibration_config",
}
ENCODER_MBLT_KEYWORDS = {"model", "mblt_save_path", "target_device", "backend", "feed_dict", "dynamic_axes"}


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
        "target_device": "aries-rb",
        "compile_device": kwargs["device"],
        "run_on_a_card": True,  # BERT: Mobilint's tutorial runs it
    }
    assert bundle.manifest.npu.mask_input == "auto" and bundle.manifest.npu.graph == "model"
    assert bundle.manifest.npu.target_device == "aries-rb"


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


def test_the_whole_model_for_regulus_is_mobilints_regulus_call(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True, target_device="regulus-rb")
    [(name, kwargs)] = calls
    assert name == "mxq_compile" and set(kwargs) == REGULUS_MXQ_KEYWORDS
    assert kwargs["target_device"] == "regulus2" and kwargs["inference_scheme"] == "single"
    assert type(kwargs["model"]).__name__ == "BertModel" and list(kwargs["feed_dict"]) == list(MODEL_INPUTS)
    assert kwargs["feed_dict"]["attention_mask"].attention_mask == "padding_mask"
    assert kwargs["calibration_config"].settings() == SEED_SETTINGS
    npu = Bundle(out).manifest.npu
    assert npu.target_device == "regulus-rb" and npu.inference_scheme == "single" and npu.graph == "model"


@pytest.mark.parametrize(("board", "scheme"), [("aries-rb", "all"), ("regulus-rb", "single")])
def test_the_encoder_graph_is_mobilints_newer_recipe(stand_in, board, scheme, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mxq=True, mblt=True, npu_graph="encoder", target_device=board)
    assert [name for name, _ in calls] == ["mblt_compile", "mxq_compile"]
    [(_, mblt), (_, mxq)] = calls
    assert set(mblt) == ENCODER_MBLT_KEYWORDS and set(mxq) == ENCODER_MXQ_KEYWORDS
    for kwargs in (mblt, mxq):
        assert kwargs["target_device"] == board and kwargs["backend"] == "torch"
        assert kwargs["dynamic_axes"] == {ONNX_HIDDEN_INPUT: [1]}
        assert type(kwargs["model"]).__name__ == "BertBody"
        [(name, example)] = kwargs["feed_dict"].items()
        assert name == ONNX_HIDDEN_INPUT and isinstance(example, torch.Tensor) and example.dtype == torch.float32
    assert mxq["inference_scheme"] == scheme and mxq["calibration_config"].settings() == SEED_SETTINGS

    # The example input is the model's own embedding layer's output for the tutorial's sentence.
    from transformers import BertModel

    from bertnpu_runtime.tokenize import Tokenizer

    ids = Tokenizer(out / "tokenizer.json", 128).encode(["Hello, my dog is cute"]).input_ids
    bert = BertModel.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        expected = bert.embeddings(
            input_ids=torch.from_numpy(ids), token_type_ids=torch.zeros_like(torch.from_numpy(ids))
        )
    torch.testing.assert_close(mxq["feed_dict"][ONNX_HIDDEN_INPUT], expected)
    # BertBody is the encoder: on the example it gives the model's last hidden state.
    with torch.no_grad():
        whole = bert(input_ids=torch.from_numpy(ids)).last_hidden_state
        torch.testing.assert_close(mxq["model"](expected), whole, atol=1e-5, rtol=1e-5)
    npu = Bundle(out).manifest.npu
    assert (npu.graph, npu.mask_input, npu.target_device, npu.inference_scheme) == ("encoder", None, board, scheme)


def test_an_inference_scheme_for_the_encoder_on_aries_replaces_all(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    build(
        tiny_model_dir, tmp_path / "b", mxq=True, npu_graph="encoder", inference_scheme="single", compile_device="cpu"
    )
    assert calls[0][1]["inference_scheme"] == "single" and calls[0][1]["device"] == "cpu"


@pytest.mark.parametrize("graph", ["model", "encoder"])
def test_regulus_with_a_multi_core_scheme_is_refused_before_any_work(
    stand_in, graph, monkeypatch, tiny_model_dir: Path, tmp_path: Path
):
    calls = stand_in()
    loads = []
    monkeypatch.setattr("compile.pipeline.load_source_model", lambda *args: loads.append(args))
    with pytest.raises(CompileError, match="REGULUS has one core"):
        build(
            tiny_model_dir,
            tmp_path / "b",
            mxq=True,
            npu_graph=graph,
            target_device="regulus-rb",
            inference_scheme="multi",
        )
    assert calls == [] and loads == [] and not (tmp_path / "b").exists()


def test_the_legacy_api_gets_the_seeds_call(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in("legacy")
    build(tiny_model_dir, tmp_path / "b", mxq=True)
    [(_, kwargs)] = calls
    assert set(kwargs) == {"model", "save_path", "calib_data_path", "backend", "feed_dict", "quantization_config"}
    assert kwargs["quantization_config"].settings() == SEED_SETTINGS


def test_the_legacy_api_refuses_options_it_has_no_keyword_for(stand_in, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in("legacy")
    for options in ({"inference_scheme": "all"}, {"target_device": "regulus-rb"}, {"npu_graph": "encoder"}):
        with pytest.raises(CompileError, match="before CalibrationConfig"):
            build(tiny_model_dir, tmp_path / "b", mxq=True, **options)
    assert calls == [] and not (tmp_path / "b").exists()


def test_the_stand_in_refuses_keywords_mobilint_never_passes(stand_in):
    stand_in()
    import qbcompiler

    with pytest.raises(TypeError, match="dynamic_shapes"):
        qbcompiler.mxq_compile(model=None, save_path="x", calib_data_path="y", dynamic_shapes={})
    with pytest.raises(TypeError, match="num_cores"):
        qbcompiler.mblt_compile(model=None, mblt_save_path="x", backend="torch", num_cores=4)
    with pytest.raises(ValueError, match="unknown target_device 'aries'"):
        qbcompiler.mxq_compile(model=None, save_path="x", calib_data_path="y", target_device="aries")
    with pytest.raises(ValueError, match="REGULUS supports inference_scheme 'single' only"):
        qbcompiler.mxq_compile(
            model=None, save_path="x", calib_data_path="y", target_device="regulus2", inference_scheme="all"
        )


@pytest.mark.parametrize(
    "option",
    [
        {"npu_graph": "decoder"},
        {"inference_scheme": "global16"},
        {"compile_device": "tpu"},
        {"target_device": "regulus-ra"},
    ],
)
def test_unknown_options_are_named_before_any_work(stand_in, option, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    with pytest.raises(CompileError, match=repr(next(iter(option.values())))):
        build(tiny_model_dir, tmp_path / "b", mxq=True, **option)
    assert calls == [] and not (tmp_path / "b").exists()


@pytest.mark.parametrize("board", ["aries-rb", "regulus-rb"])
def test_mblt_analysis_step_of_the_whole_model_is_the_seeds_call(stand_in, board, tiny_model_dir: Path, tmp_path: Path):
    calls = stand_in()
    out = build(tiny_model_dir, tmp_path / "b", mblt=True, target_device=board)
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


@pytest.mark.parametrize(
    ("flags", "keywords", "summary"),
    [
        (
            ["--inference-scheme", "all"],
            PUBLISHED_MXQ_KEYWORDS | {"inference_scheme"},
            {"model": "BertModel", "inference_scheme": "all"},
        ),
        (  # the command: Mobilint's compile_model.py for REGULUS
            ["--npu-graph", "encoder", "--target-device", "regulus-rb"],
            ENCODER_MXQ_KEYWORDS,
            {"model": "BertBody", "inference_scheme": "single", "target_device": "regulus-rb"},
        ),
    ],
)
def test_the_cli_compiles_an_mxq_end_to_end(flags, keywords, summary, tiny_model_dir: Path, tmp_path: Path):
    """python -m compile --mxq in a fresh interpreter, with the stand-in as the installed qbcompiler."""
    log = tmp_path / "calls.jsonl"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]),
        QBCOMPILER_STANDIN_LOG=str(log),
    )
    out = tmp_path / "bundle"
    command = [sys.executable, "-m", "compile", "--model", str(tiny_model_dir), "--out", str(out)]
    command += ["--calib-samples", "4", "--mxq", *flags]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).parent.parent
    )
    assert result.returncode == 0, result.stderr
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["function"] == "mxq_compile" and set(call["keywords"]) == keywords
    assert summary.items() <= call["summary"].items()
    if call["summary"]["model"] == "BertModel":
        assert call["summary"]["feed_dict"]["attention_mask"] == {"dynamic": [False, True], "mask": "padding_mask"}
    else:
        assert call["summary"]["dynamic_axes"] == {ONNX_HIDDEN_INPUT: [1]}
    assert Bundle(out).path(MXQ_FILE).read_bytes() == b"stand-in mxq\n"


def test_calibration_input_shape_is_what_the_compiler_needs(tiny_bundle: Path):
    for path in (tiny_bundle / CALIB_DIR).glob("*.npy"):
        array = np.load(path)
        assert array.ndim == 3 and array.shape[0] == 1 and array.flags.c_contiguous


@pytest.mark.parametrize("family", ["xlm-roberta", "mpnet"])
def test_other_families_compile_with_mobilints_recipes(stand_in, family, family_models, tmp_path: Path):
    """The whole model wraps only the inputs its forward takes (MPNet has no token types); the
    encoder recipe is the same for every family. bundle.json says the graph is untried on a card."""
    folder, _ = family_models[family]
    calls = stand_in()
    out = build(folder, tmp_path / "b", mxq=True)
    [(_, whole)] = calls
    expected_inputs = ["input_ids", "attention_mask"] if family == "mpnet" else list(MODEL_INPUTS)
    assert list(whole["feed_dict"]) == expected_inputs and set(whole) == PUBLISHED_MXQ_KEYWORDS
    npu = Bundle(out).manifest.npu
    assert (
        npu.run_on_a_card is False
        and json.loads((out / MANIFEST_FILE).read_text())["npu"]["compiled_inputs"] == expected_inputs
    )
    calls.clear()
    build(folder, tmp_path / "e", mxq=True, npu_graph="encoder")
    [(_, encoder)] = calls
    assert type(encoder["model"]).__name__ == "BertBody" and set(encoder) == ENCODER_MXQ_KEYWORDS
