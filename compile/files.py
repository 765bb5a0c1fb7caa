"""Small file helpers shared by the compile steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CompileError


def read_json(path: Path, required: bool = True) -> Any:
    """Parsed JSON of `path`; None when it is absent and not `required`."""
    if not path.is_file():
        if required:
            raise CompileError(f"{path}: file is missing; expected a transformers / sentence-transformers model folder")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompileError(f"{path}: cannot be read as JSON ({exc})") from exc
