"""Atomic file output: write to a temp file beside the target, then rename.

A crash or a bad input half way never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path in the target's folder; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; output files should be ordinary
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temp folder beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def replace_between(path: str | os.PathLike, start: str, end: str, body: str) -> bool:
    """Put ``body`` between the marker lines ``start`` and ``end`` of a text file (a README's
    generated table); False, and nothing written, when the file lacks either marker."""
    text = Path(path).read_text()
    if start not in text or end not in text:
        return False
    before, rest = text.split(start, 1)
    write_text(path, f"{before}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")
    return True


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_new_out(out) -> None:
    """KwsError unless ``out`` is a new or empty folder: a command that writes a run never
    mixes its files with others."""
    from kwskit.errors import KwsError

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a folder with other files in it" if out.is_dir() else "is a file"
        raise KwsError(f"{out}: {what}, not a kwskit run; choose a new or empty folder for --out")


def kwskit_home() -> Path:
    """Where kwskit keeps caches, the built-in data and its copies of the pretrained models
    (``$KWSKIT_HOME``, default ~/.cache/kwskit)."""
    return Path(os.environ.get("KWSKIT_HOME", Path.home() / ".cache" / "kwskit"))
