"""The STS-B copy the package ships: found without anything beside the checkout, in the wheel and
the sdist, and overridable with $BERTNPU_STSB_DIR."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bertnpu_runtime import data
from bertnpu_runtime.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["stsb-en-train.csv", "stsb-en-dev.csv", "LICENSE", "README.md"]


def test_the_shipped_copy_is_inside_the_package(monkeypatch):
    monkeypatch.delenv(data.STSB_DIR_ENV, raising=False)
    directory = data.stsb_dir()
    assert directory == data.shipped_stsb_dir()
    assert directory.is_relative_to(Path(data.__file__).parent)
    assert len(data.read_stsb_pairs(data.stsb_file(data.STSB_TRAIN_FILE))) == 5749
    assert len(data.read_stsb_pairs(data.stsb_file(data.STSB_DEV_FILE))) == 1500
    assert "STS" in (directory / "LICENSE").read_text(encoding="utf-8")


def test_the_environment_variable_points_elsewhere(monkeypatch, tmp_path):
    (tmp_path / data.STSB_DEV_FILE).write_text('"A cat.","A dog.",1.5\n', encoding="utf-8")
    monkeypatch.setenv(data.STSB_DIR_ENV, str(tmp_path))
    assert data.read_stsb_pairs(data.stsb_file(data.STSB_DEV_FILE)) == [("A cat.", "A dog.", 1.5)]


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda d: d, "expected a file, found a folder"),
        (lambda d: d / "missing.csv", "file does not exist"),
    ],
)
def test_a_bad_path_is_named(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(DataError) as error:
        data.read_sentences(path)
    assert error.value.path == str(path) and error.value.problem == problem


def test_nothing_in_the_project_reads_outside_the_checkout():
    project = [REPO / name for name in ("README.md", "pyproject.toml", "quickstart.sh", ".ci/run")]
    for folder in ("bertnpu_runtime", "compile", "benchmarks", "tests", "docs"):
        project += [path for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".md", ".sh", ".toml")]
    offenders = [
        str(path.relative_to(REPO))
        for path in project
        if path != Path(__file__) and "../shared" in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


def test_the_data_is_in_the_wheel_and_the_sdist(tmp_path):
    """Build both from a copy of the project, as pip would, and look inside."""
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "bundles", "build", "dist", "*.egg-info", "__pycache__", "results"
        ),
    )
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"import setuptools.build_meta as b; b.build_wheel({str(out)!r}); b.build_sdist({str(out)!r})",
        ],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in SHIPPED:
        assert f"bertnpu_runtime/data/stsb/{name}" in in_wheel
        assert f"bertnpu_runtime/data/stsb/{name}" in in_sdist
