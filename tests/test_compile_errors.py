"""Bad input to the compiler: clear, early errors that name the offending path; no half bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bertnpu_runtime.bundle import INT8_ENCODER_FILE, MANIFEST_FILE, Bundle
from compile import CompileError, build_bundle
from compile.cli import main

REPO = Path(__file__).resolve().parents[1]


def _stub_int8(monkeypatch: pytest.MonkeyPatch, quantize_encoder) -> None:
    """Stand in for compile/int8.py (another module's job) so only the pipeline's wiring is tested."""
    module = types.ModuleType("compile.int8")
    module.quantize_encoder = quantize_encoder
    monkeypatch.setitem(sys.modules, "compile.int8", module)


def _siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()} if path.parent.exists() else set()


def test_missing_model_folder(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(CompileError, match=f"{missing}.*does not exist"):
        build_bundle(str(missing), tmp_path / "out", calib_samples=2)
    assert not (tmp_path / "out").exists()


def test_non_bert_model_folder(tiny_model_dir: Path, tmp_path: Path):
    folder = tmp_path / "gpt"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CompileError) as error:
        build_bundle(str(folder), tmp_path / "out", calib_samples=2)
    assert str(folder) in str(error.value) and "'gpt2'" in str(error.value) and "xlm-roberta" in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model_type": "modernbert"}, "model_type 'modernbert'"),
        ({"model_type": "nomic_bert"}, "model_type 'nomic_bert'"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type 'alibi'"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
        ({"rotary_emb_base": 10000}, "field 'rotary_emb_base'"),
        ({"rope_theta": 10000.0}, "field 'rope_theta'"),
    ],
)
def test_models_the_host_embedding_cannot_serve_are_refused_before_any_work(
    tiny_model_dir, tmp_path, monkeypatch, change, named
):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    loads = []
    monkeypatch.setattr("transformers.BertModel.from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(CompileError, match=named):
        build_bundle(str(folder), tmp_path / "out", calib_samples=2)
    assert loads == [] and not (tmp_path / "out").exists()


def test_folder_without_config(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompileError, match="config.json: file is missing"):
        build_bundle(str(tmp_path / "empty"), tmp_path / "out", calib_samples=2)


def test_unwritable_out_dir(tiny_model_dir: Path, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "bundle"
    with pytest.raises(CompileError, match=f"{out}: cannot write"):
        build_bundle(str(tiny_model_dir), out, calib_samples=2)


def test_existing_bundle_needs_force(tiny_model_dir: Path, tiny_bundle: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    before = (out / MANIFEST_FILE).read_text()
    with pytest.raises(CompileError, match=f"{out}: .*not empty.*--force"):
        build_bundle(str(tiny_model_dir), out, calib_samples=2)
    assert (out / MANIFEST_FILE).read_text() == before

    build_bundle(str(tiny_model_dir), out, calib_samples=3, force=True)
    assert Bundle(out).manifest.extra["calibration"]["samples"] == 3
    assert len(list((out / "calib").iterdir())) == 3, "files of the old bundle must not survive --force"
    assert _siblings(out) == {"bundle"}


def test_failed_build_leaves_nothing(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(*args, **kwargs):
        raise CompileError("int8 step broke")

    _stub_int8(monkeypatch, broken)
    out = tmp_path / "bundle"
    with pytest.raises(CompileError, match="int8 step broke"):
        build_bundle(str(tiny_model_dir), out, calib_samples=2, int8=True)
    assert _siblings(out) == set()


def test_int8_step_is_wired_in(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}

    def fake_quantize(onnx_path: Path, calib_dir: Path, out_path: Path) -> dict:
        seen.update(onnx=onnx_path, calib=calib_dir, out=out_path, n=len(list(calib_dir.glob("*.npy"))))
        assert onnx_path.is_file()
        out_path.write_bytes(b"int8 onnx")
        return {"scheme": "qdq", "calibration_samples": seen["n"]}

    _stub_int8(monkeypatch, fake_quantize)
    out = build_bundle(str(tiny_model_dir), tmp_path / "bundle", calib_samples=3, int8=True)
    assert seen["onnx"].name == "encoder.onnx" and seen["calib"].name == "calib" and seen["n"] == 3
    assert seen["out"].name == INT8_ENCODER_FILE
    bundle = Bundle(out)
    assert bundle.manifest.int8 == {"scheme": "qdq", "calibration_samples": 3}
    assert bundle.path(INT8_ENCODER_FILE).read_bytes() == b"int8 onnx"


def test_bad_calibration_data(tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(CompileError, match="nope.csv.*does not exist"):
        build_bundle(str(tiny_model_dir), tmp_path / "out", calib_data=tmp_path / "nope.csv")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CompileError, match="empty.txt: no sentences"):
        build_bundle(str(tiny_model_dir), tmp_path / "out", calib_data=empty)
    with pytest.raises(CompileError, match="--calib-samples must be at least 1"):
        build_bundle(str(tiny_model_dir), tmp_path / "out", calib_samples=0)


def test_calibration_from_a_text_file(tiny_model_dir: Path, tmp_path: Path, caplog):
    text = tmp_path / "sentences.txt"
    text.write_text("a dog runs\nthe man plays a flute on the beach\n\nwater\n")
    with caplog.at_level("WARNING", logger="compile"):
        out = build_bundle(str(tiny_model_dir), tmp_path / "bundle", calib_data=text, calib_samples=10)
    assert len(list((out / "calib").glob("*.npy"))) == 3  # fewer sentences than asked: all of them
    assert f"{text} has 3 distinct sentences, fewer than the 10 asked for" in caplog.text


def test_a_small_calibration_file_needs_an_explicit_count(tiny_model_dir: Path, tmp_path: Path):
    text = tmp_path / "sentences.txt"
    text.write_text("".join(f"sentence number {i}\n" for i in range(99)))
    with pytest.raises(CompileError, match=r"99 distinct sentences, fewer than the 100 .*--calib-samples 99"):
        build_bundle(str(tiny_model_dir), tmp_path / "bundle", calib_data=text)
    assert not (tmp_path / "bundle").exists()


def test_calibration_data_that_is_a_folder(tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(CompileError, match=f"{tmp_path}: expected a file, found a folder"):
        build_bundle(str(tiny_model_dir), tmp_path / "bundle", calib_data=tmp_path)


def test_the_cli_prints_one_clean_line_per_step(tiny_model_dir: Path, tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "compile",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "b"),
            "--calib-samples",
            "4",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "%|" not in result.stderr
    assert "wrote calib (" in result.stderr and "bundle ready" in result.stderr


def test_max_seq_length_beyond_positions(tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(CompileError, match="max_seq_length 65 .*--max-seq-length.*64 usable position"):
        build_bundle(str(tiny_model_dir), tmp_path / "out", max_seq_length=65)


def test_cli_error_is_one_line_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_builds_a_bundle(tiny_model_dir: Path, tmp_path: Path):
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
            "2",
            "--seed",
            "1",
            "--max-seq-length",
            "32",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote encoder.onnx" in result.stderr and "wrote calib" in result.stderr
    manifest = Bundle(out).manifest
    assert manifest.max_seq_length == 32 and manifest.extra["calibration"]["seed"] == 1


def test_sigterm_during_a_build_leaves_no_staging_folder(tiny_model_dir: Path, tmp_path: Path):
    import signal
    import time

    out = tmp_path / "bundle"
    process = subprocess.Popen(
        [sys.executable, "-m", "compile", "--model", str(tiny_model_dir), "--out", str(out), "--calib-samples", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".bundle.partial-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_path.glob(".bundle.partial-*")), "the build never started staging"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert list(tmp_path.iterdir()) == [], "the killed build left files behind"


def test_a_later_build_removes_what_a_killed_build_left(tiny_model_dir: Path, tmp_path: Path):
    import os

    dead = tmp_path / f".bundle.partial-{2**22 + 12345}-x1"  # beyond Linux's pid range: no such process
    older_version = tmp_path / ".bundle.partial-abc123"  # named before builds recorded their pid
    live = tmp_path / f".bundle.partial-{os.getpid()}-y2"  # a concurrent build (this process) keeps its own
    for folder in (dead, older_version, live):
        folder.mkdir()
        (folder / "encoder.onnx").write_bytes(b"half")
    build_bundle(str(tiny_model_dir), tmp_path / "bundle", calib_samples=2)
    assert not dead.exists() and not older_version.exists() and live.is_dir()


def test_a_compile_error_is_one_line(monkeypatch, capsys, tmp_path: Path):
    from compile import cli

    def fails(*args, **kwargs):
        raise CompileError("model: cannot export (RuntimeError: first line\n  Traceback detail\n    more)")

    monkeypatch.setattr(cli, "build_bundle", fails)
    assert cli.main(["--model", "x", "--out", str(tmp_path / "b")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "error: model: cannot export (RuntimeError: first line Traceback detail more)"
