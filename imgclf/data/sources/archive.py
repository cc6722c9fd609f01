"""Local archives: safe extraction (no member, link or path lands outside the target folder)
and expansion of archives nested inside archives."""

from __future__ import annotations

import contextlib
import posixpath
import re
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from imgclf.data.sources.errors import SourceError, UnsafeArchiveError, one_line

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Nested archives (Kaggle's dogs-vs-cats.zip holds train.zip) are expanded this many levels deep.
MAX_NESTING = 3


def is_archive(path: Path) -> bool:
    """True for a file whose name ends in a known archive suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def strip_archive_suffix(name: str) -> str:
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return name


def check_member_name(name: str, archive: Path) -> str:
    """The member's normalised relative POSIX path, or UnsafeArchiveError."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise UnsafeArchiveError(f"unsafe archive {archive.name}: absolute path member {name!r}")
    if ".." in posix.split("/"):
        raise UnsafeArchiveError(
            f"unsafe archive {archive.name}: member {name!r} escapes the extraction folder "
            "(zip-slip)"
        )
    return posixpath.normpath(posix)


def _check_link_target(member: str, target: str, archive: Path, *, hard: bool) -> None:
    """Symlink targets are relative to the member's folder, hard links to the archive root."""
    target = target.replace("\\", "/")
    base = "" if hard else posixpath.dirname(member)
    joined = posixpath.normpath(posixpath.join(base, target))
    if target.startswith("/") or joined == ".." or joined.startswith("../"):
        raise UnsafeArchiveError(
            f"unsafe archive {archive.name}: link {member!r} -> {target!r} points outside the "
            "extraction folder"
        )


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a zip or tar archive into `dest`, refusing absolute paths, `..` members and links
    that point outside. Every member is checked before anything is written."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest)
        else:
            raise SourceError(f"{archive.name} is not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchiveError(f"unsafe archive {archive.name}: {one_line(exc)}") from None
        raise SourceError(f"cannot extract {archive.name}: {one_line(exc)}") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = check_member_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile writes links as small files holding the target; still refuse escapes.
                target = zf.read(info).decode("utf-8", "replace")
                _check_link_target(name, target, archive, hard=False)
        zf.extractall(dest, members=members)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():
            name = check_member_name(member.name, archive)
            if member.issym() or member.islnk():
                _check_link_target(name, member.linkname, archive, hard=member.islnk())
            if member.isfile() or member.isdir() or member.issym() or member.islnk():
                members.append(member)  # devices and FIFOs are never images: skip them
        # The "data" filter re-checks everything (and drops odd permissions) as a second guard.
        tf.extractall(dest, members=members, filter="data")


def expand_nested_archives(folder: Path, depth: int = MAX_NESTING) -> None:
    """Extract archives found inside `folder` next to themselves (`train.zip` -> `train/`) and
    delete them, `depth` levels deep."""
    for _ in range(depth):
        nested = sorted(p for p in folder.rglob("*") if p.is_file() and is_archive(p))
        if not nested:
            return
        for archive in nested:
            safe_extract(archive, archive.with_name(strip_archive_suffix(archive.name)))
            archive.unlink()


@contextlib.contextmanager
def extracted(archive: Path) -> Iterator[Path]:
    """The archive extracted (nested archives too) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="imgclf-extract-") as tmp:
        safe_extract(archive, Path(tmp))
        expand_nested_archives(Path(tmp))
        yield Path(tmp)
