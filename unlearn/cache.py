"""The cache of built worlds and trained models, and atomic writes.

Entries live under ``$BASIN_CACHE`` (default ``~/.cache/basin``), named by a hash of everything
that determines them. An entry is written into a temporary sibling folder and renamed into place
when complete, so an interrupted build never leaves a half-written entry that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from unlearn.errors import BasinError


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: the argument, else ``$BASIN_CACHE``, else ``~/.cache/basin``."""
    if cache_dir is None:
        cache_dir = os.environ.get("BASIN_CACHE") or Path(
            os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "basin"
    return Path(cache_dir).expanduser()


def portable(path: str | os.PathLike) -> str:
    """``path`` as it may be published: under the user's home folder it starts with ``~`` (a report
    or record that names a checkpoint, such as the basin cache's reference models, does not carry
    the machine's user name or home); anything else, a hub id included, is returned as given."""
    text, home = str(path), str(Path.home())
    if home not in ("", "/") and (text == home or text.startswith(home.rstrip("/") + "/")):
        return "~" + text[len(home.rstrip("/")):]
    return text


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and check that files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as err:
        raise BasinError(
            f"cannot write to the cache folder {folder} ({err.strerror or err}); "
            "set BASIN_CACHE or pass --cache to a writable folder") from None
    return folder


def check_writable(target: Path, what: str = "folder", fix: str = "pass a writable folder") -> None:
    """Refuse ``target`` unless it could be created (or written, if it exists) here, without
    creating anything: the nearest existing folder on its path must be a writable folder."""
    target = Path(target).expanduser()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BasinError(f"cannot write to the {what} {target}: {existing} is a file, not a folder; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BasinError(f"cannot write to the {what} {target}: {existing} is not writable; {fix}")


def digest(obj) -> str:
    """A short stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temporary folder; on success it is renamed to ``target``, on error removed.

    If ``target`` appeared meanwhile (another process built it), the new copy is discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; a finished entry is shared as usual
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temporary file beside ``path`` to write; on success it is renamed onto ``path`` (a
    reader sees the old file or the whole new one, never a torn one), on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
