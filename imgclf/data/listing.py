"""THE walk over a folder of images: the download stage (`imgclf.data.ingest`) and batch
prediction (`imgclf.model.batch_predict`) both list their input with `list_files`, so they see
the same files."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

# macOS metadata (resource forks) inside zips and tars: never images, never counted.
_SKIPPED_DIRS = {"__MACOSX"}
_SKIPPED_PREFIX = "._"


def list_files(folder: Path, suffixes: Collection[str] | None = None) -> tuple[list[str], int]:
    """Files below `folder` as sorted relative POSIX paths, those whose suffix (any case) is one
    of `suffixes` (all when None), and how many other files there were.

    Symlinked files are listed like files (DVC can check data out as links) and read through
    the link, so a dangling one is reported by the caller; symlinked folders are never entered,
    so a link loop cannot make the walk endless.
    """
    wanted = None if suffixes is None else {suffix.lower() for suffix in suffixes}
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if name not in _SKIPPED_DIRS]
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith(_SKIPPED_PREFIX) or not (path.is_file() or path.is_symlink()):
                continue  # metadata, or a FIFO or device, whose read would block
            if wanted is None or path.suffix.lower() in wanted:
                found.append(path.relative_to(folder).as_posix())
            else:
                others += 1
    return sorted(found), others
