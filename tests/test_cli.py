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
    assert (
        main(["encode", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "in.txt"), "--output", str(out)]) == 0
    )
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


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to encode"),
        (["--input", "x.txt"], "--input needs --output"),
        (["--input", "x.txt", "--output", "o.npy", "extra"], "not both"),
    ],
)
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


def test_empty_input_is_an_error_unless_allowed(tiny_bundle, tmp_path, monkeypatch, capsys):
    """`cat missing.txt | bertnpu encode --input -` gives the encoder an empty stdin."""
    import io

    out = tmp_path / "v.npy"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["encode", "--bundle", str(tiny_bundle), "--input", "-", "--output", str(out)]) == 2
    assert "standard input: no lines to encode" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["encode", "--bundle", str(tiny_bundle), "--input", "-", "--output", str(out), "--allow-empty"]) == 0
    assert np.load(out).shape == (0, 32)


def test_non_utf8_input_names_its_source(tiny_bundle, tmp_path, monkeypatch, capsys):
    import io

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    args = ["encode", "--bundle", str(tiny_bundle), "--output", str(tmp_path / "v.npy"), "--input"]
    assert main([*args, str(bad)]) == 2
    assert f"{bad}: not UTF-8 text (byte 8, line 2" in capsys.readouterr().err
    stdin = io.TextIOWrapper(io.BytesIO(bad.read_bytes()))
    monkeypatch.setattr("sys.stdin", stdin)
    assert main([*args, "-"]) == 2
    assert "standard input: not UTF-8 text" in capsys.readouterr().err


def test_output_path_is_reported_as_written(tiny_bundle, tmp_path, capsys):
    assert main(["encode", "--bundle", str(tiny_bundle), "--output", str(tmp_path / "vec"), "one"]) == 0
    assert f"to {tmp_path / 'vec.npy'}" in capsys.readouterr().err
    assert np.load(tmp_path / "vec.npy").shape == (1, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vec.npy"]


def test_output_folder_is_an_error(tiny_bundle, tmp_path, capsys):
    assert main(["encode", "--bundle", str(tiny_bundle), "--output", str(tmp_path), "one"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert not tmp_path.with_name(tmp_path.name + ".npy").exists()


def test_a_failed_write_leaves_nothing_and_names_the_file(tiny_bundle, tmp_path, monkeypatch, capsys):
    previous = tmp_path / "v.npy"
    previous.write_bytes(b"the previous vectors")

    def disk_full(file, array):
        file.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bertnpu_runtime.cli.np.save", disk_full)
    assert main(["encode", "--bundle", str(tiny_bundle), "--output", str(previous), "one"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {previous}: No space left on device" in err
    assert previous.read_bytes() == b"the previous vectors" and [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_info_says_what_runs_and_where(tiny_bundle, capsys):
    assert main(["info", "--bundle", str(tiny_bundle)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bundle"] == str(tiny_bundle.resolve())
    assert (
        info["backend_reason"].startswith("backend='auto' chose ONNX Runtime (CPU): ")
        and "model.mxq" in info["backend_reason"]
    )
    assert info["libraries"]["onnxruntime"] and info["libraries"]["numpy"] == np.__version__
    assert info["npu_devices"] == []  # qbruntime is installed in the test environment and sees no card
    assert info["npu_cores_in_service"] == []  # the encoder runs on ONNX Runtime


def test_bertnpu_compile_is_python_m_compile(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["compile", "--model", str(tiny_model_dir), "--out", str(out), "--calib-samples", "4"]) == 0
    with SentenceEncoder(out, backend="onnx") as encoder:
        assert encoder.encode("compiled through bertnpu").shape == (32,)


def test_bertnpu_compile_without_the_extra_names_it():
    from conftest import run_with_imports_blocked

    out = run_with_imports_blocked(
        ("torch",),
        """
        import contextlib, io
        from bertnpu_runtime.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(["compile", "--model", "default", "--out", "x"])
        print(code, err.getvalue())
    """,
    )
    assert out.startswith("2 ") and "pip install 'bertnpu[compile]'" in out


@pytest.mark.parametrize("problem", ["missing folder", "read-only folder"])
def test_an_unwritable_output_fails_before_the_encode(problem, tiny_bundle, tmp_path, monkeypatch, capsys):
    import os

    if problem == "missing folder":
        output, expected = tmp_path / "no-such-folder" / "v.npy", "does not exist"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        output, expected = locked / "v.npy", "cannot write in"
        real_mkstemp = __import__("tempfile").mkstemp

        def refused(*args, dir=None, **kwargs):  # root writes anywhere: refuse as a read-only folder would
            if str(dir) == str(locked):
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr("bertnpu_runtime.cli.tempfile.mkstemp", refused)
    opened = []
    monkeypatch.setattr("bertnpu_runtime.cli._open", lambda args: opened.append(args))
    assert main(["encode", "--bundle", str(tiny_bundle), "--output", str(output), "one"]) == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1
    assert opened == []  # no encoder was opened, no work was done
    assert not os.path.exists(output)
