"""Where the tests find the real TOFU files: ``$TOFU_DIR``, else ``shared/data/tofu`` beside the
checkout. Test files skip what needs them when neither holds the file they read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def tofu_dir(needed: str = "forget01_perturbed.json") -> Path | None:
    for candidate in (os.environ.get("TOFU_DIR"), REPO_ROOT.parent / "shared" / "data" / "tofu"):
        if candidate and (Path(candidate) / needed).is_file():
            return Path(candidate)
    return None


def needs(folder: Path | None):
    return pytest.mark.skipif(folder is None, reason="TOFU files not found (set TOFU_DIR)")
