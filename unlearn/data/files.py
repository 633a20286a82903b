"""Reading a benchmark's data files: a JSON list or JSON Lines, with errors that name the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from unlearn.errors import BasinError, require


def read_json_rows(file: str | os.PathLike, source: str = "data") -> list:
    """Rows of a JSON list or a JSON Lines file (blank lines skipped). A bad file names itself (and
    the line) and says that the ``source`` file may be truncated."""
    file = Path(file)
    text = file.read_text(encoding="utf-8")
    hint = f"the {source} file may be truncated: download it again"
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise BasinError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); {hint}") from None
        require(isinstance(rows, list), f"{file} must hold a JSON list")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BasinError(f"{file} line {number} is not valid JSON ({err.msg}); {hint}") from None
    return rows
