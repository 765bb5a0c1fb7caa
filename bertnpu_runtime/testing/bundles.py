"""Bundles for exercising the NPU path without qbcompiler."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..bundle import MANIFEST_FILE, MXQ_FILE, register_files


def bundle_with_placeholder_mxq(
    bundle: str | Path, target: str | Path, npu: dict | None = None, *, overwrite: bool = False
) -> Path:
    """A copy of `bundle` (files linked, not copied) with a placeholder model.mxq registered in bundle.json.

    The test double never reads the .mxq; it only has to exist and match its hash. `npu` replaces
    the manifest's "npu" section (for example {"mask_input": "keep"}). An existing `target` is
    replaced with `overwrite=True`, else it is an error.
    """
    bundle, target = Path(bundle), Path(target)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target}: already exists; pass overwrite=True to replace it")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    target.mkdir(parents=True)
    for item in bundle.iterdir():
        if item.name not in (MANIFEST_FILE, MXQ_FILE):
            (target / item.name).symlink_to(item.resolve(), target_is_directory=item.is_dir())
    (target / MXQ_FILE).write_bytes(b"placeholder .mxq for the qbruntime test double\n")
    shutil.copyfile(bundle / MANIFEST_FILE, target / MANIFEST_FILE)
    register_files(target, [MXQ_FILE], npu=npu)
    return target
