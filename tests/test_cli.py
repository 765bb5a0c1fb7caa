"""The `bertnpu` command line."""

import json

import numpy as np
import pytest

from bertnpu_runtime import SentenceEncoder
from bertnpu_runtime.cli import main


def test_similarity_table(tiny_bundle, capsys):
    assert main(["encode", "--bundle", str(tiny_bundle), "--backend", "onnx", "A cat.", "A dog.", "A car."]) == 0
    out = capsys.readouterr().out
    assert "[0] A cat." in out and "[2] A car." in out
    rows = [line for line in out.splitlines() if line.startswith("[") and "A " not in line]
    diagonal = [float(row.split()[1 + i]) for i, row in enumerate(rows)]
    assert diagonal == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)


def test_file_to_npy_matches_api(tiny_bundle, tmp_path):
    lines = ["first sentence", "", "third one, a bit longer than the others"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "vectors.npy"
    assert main(["encode", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "in.txt"), "--output", str(out)]) == 0
    with SentenceEncoder(tiny_bundle, backend="onnx") as enc:
        np.testing.assert_allclose(np.load(out), enc.encode(lines), atol=1e-6)


def test_stdin(tiny_bundle, tmp_path, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\n"))
    out = tmp_path / "v.npy"
    assert main(["encode", "--bundle", str(tiny_bundle), "--input", "-", "--output", str(out), "--normalize"]) == 0
    vectors = np.load(out)
    assert vectors.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    ([], "nothing to encode"),
    (["--input", "x.txt"], "--input needs --output"),
    (["--input", "x.txt", "--output", "o.npy", "extra"], "not both"),
])
def test_usage_errors_exit_2(tiny_bundle, capsys, args, message):
    assert main(["encode", "--bundle", str(tiny_bundle), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_bundle_exit_2(tmp_path, capsys):
    assert main(["encode", "--bundle", str(tmp_path / "none"), "hi"]) == 2
    assert "bundle folder does not exist" in capsys.readouterr().err


def test_info(tiny_bundle, capsys):
    assert main(["info", "--bundle", str(tiny_bundle)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "onnx" and info["dim"] == 32 and "encoder.onnx" in info["files"]
