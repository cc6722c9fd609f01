"""THE walk over a folder of images: the download stage (`imgclf.data.ingest`) and batch
prediction (`imgclf.model.batch_predict`) both list their input with `list_files`, so they see
the same files."""

from __future__ import annotations

import errno
import os
from collections.abc import Collection
from pathlib import Path

from imgclf.data.sources.errors import SourceError

# macOS metadata (resource forks) inside zips and tars: never images, never counted.
_SKIPPED_DIRS = {"__MACOSX"}
_SKIPPED_PREFIX = "._"
# Folder levels below the listed folder: os.walk recurses once per level in Python 3.11 (a
# RecursionError near 1,000), and a real dataset is a few levels deep.
MAX_DEPTH = 100


def list_files(folder: Path, suffixes: Collection[str] | None = None) -> tuple[list[str], int]:
    """Files below `folder` as sorted relative POSIX paths, those whose suffix (any case) is one
    of `suffixes` (all when None), and how many other files there were.

    A folder nested too deep, a symlink that loops (or chains deeper than the system follows)
    or one that leads out of `folder` is a SourceError of one line.
    """
    wanted = None if suffixes is None else {suffix.lower() for suffix in suffixes}
    root = folder.resolve()
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if name not in _SKIPPED_DIRS]
        if dirnames and len(Path(dirpath).relative_to(folder).parts) >= MAX_DEPTH:
            raise SourceError(
                f"{folder} holds folders more than {MAX_DEPTH} levels deep; flatten it"
            )
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith(_SKIPPED_PREFIX) or not _is_listed(path, root, folder):
                continue
            if wanted is None or path.suffix.lower() in wanted:
                found.append(path.relative_to(folder).as_posix())
            else:
                others += 1
    return sorted(found), others


def _is_listed(path: Path, root: Path, folder: Path) -> bool:
    """A regular file, or a link to one: never a FIFO or device, whose read would block.

    A file link is followed only within the folder (`root`, resolved): one leading out could
    pull any file this user can read (a private photo, a key) into the dataset and on to the DVC
    remote. A dangling one inside is listed, and its reader reports it. Folder links are never
    entered (os.walk's default), so no loop can make the walk endless.
    """
    if not path.is_symlink():
        return path.is_file()
    relative = path.relative_to(folder).as_posix()
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceError(
                f"cannot follow symlink {relative} in {folder}: a loop, or a chain of links "
                "deeper than the system follows; replace it with the file"
            ) from None
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(root):
        raise SourceError(
            f"symlink {relative} in {folder} leads outside it (to {target}); copy the file "
            "into the folder instead"
        )
    return target.is_file() or not target.exists()
