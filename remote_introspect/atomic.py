"""The one way the package writes a file or a directory so that a kill, a full disk or a crash
never leaves it half-written: write a temporary beside the target, fsync it, rename it over the
target; on any failure remove the temporary and leave the target as it was."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_file(path: Path) -> None:
    with Path(path).open("rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(fh)` writes the content to a temporary file beside `path` (open for binary writing),
    which is fsynced, then renamed over `path`."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_dir(target: Path, build: Callable[[Path], None], *, replace: bool = False) -> None:
    """`build(tmp)` fills a temporary directory beside `target`, which is then renamed to it. With
    `replace`, an existing `target` is removed first; without, a `target` another process created
    meanwhile wins (its content is the same) and the temporary is discarded."""
    target = Path(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        if replace and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace or not target.exists():
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
