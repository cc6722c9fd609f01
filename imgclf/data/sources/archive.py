"""Local archives: extraction member by member into paths resolved here, within caps on size,
member count, compression ratio and depth, and expansion of archives nested inside archives.

An archive may hold only files and folders. Symlinks, hard links, devices and FIFOs are refused
outright, whatever tarfile's `data` filter would allow: a long chain of symlinks defeats it before
Python 3.11.13 (CVE-2025-4517), and no image needs a link. Nothing here calls `extractall`, so no
safety depends on the interpreter's patch level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import lzma
import os
import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, NoReturn

from imgclf.config import DownloadParams
from imgclf.data.sources.errors import SourceError, UnsafeArchiveError, one_line

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Nested archives (Kaggle's dogs-vs-cats.zip holds train.zip) are expanded this many levels deep.
MAX_NESTING = 3
# A compression ratio counts only once this many bytes are at stake: a small file (an empty one,
# a blank thumbnail) may compress a thousandfold and harm nobody.
RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 20
_NESTED = " (nested archives count together)"
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ZIP_KINDS = {
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a device",
    stat.S_IFBLK: "a device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}
_TAR_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a device",
    tarfile.BLKTYPE: "a device",
    tarfile.FIFOTYPE: "a FIFO",
}


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one source's archives may extract to (`download.max_archive_bytes` ...)."""

    max_archive_bytes: int  # uncompressed bytes, nested archives included
    max_members: int  # entries, nested archives included
    max_ratio: float  # uncompressed / compressed, per member and per archive
    max_depth: int  # path components in a member's name

    @classmethod
    def of(cls, params: DownloadParams) -> ArchiveLimits:
        return cls(**{field.name: getattr(params, field.name) for field in dataclasses.fields(cls)})


# config's defaults, for callers without params (batch prediction of an archive).
DEFAULT_LIMITS = ArchiveLimits.of(DownloadParams.model_construct())


@dataclasses.dataclass(frozen=True)
class _Member:
    """One archive entry as its header describes it."""

    header: zipfile.ZipInfo | tarfile.TarInfo
    name: str  # as stored, for messages
    parts: tuple[str, ...]  # its checked relative path
    is_dir: bool
    size: int  # uncompressed bytes declared
    packed: int | None  # compressed bytes declared (zip); a tar does not say per member


def is_archive(path: Path) -> bool:
    """True for a file whose name ends in a known archive suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def strip_archive_suffix(name: str) -> str:
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return name


def member_parts(name: str, archive: Path) -> tuple[str, ...]:
    """The member's relative path as components, or UnsafeArchiveError (absolute, `..`)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise UnsafeArchiveError(f"unsafe archive {archive.name}: absolute path member {name!r}")
    parts = tuple(part for part in posix.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(
            f"unsafe archive {archive.name}: member {name!r} escapes the extraction folder "
            "(zip-slip)"
        )
    return parts


def copy_within(source: IO[bytes], target: IO[bytes], limit: int, what: str) -> int:
    """Copy `source` to `target` and return the bytes copied; UnsafeArchiveError before the first
    byte past `limit` (the size `what`'s header declared), whatever the reader yields."""
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        if copied > limit:
            raise UnsafeArchiveError(
                f"unsafe archive {what} holds more than the {limit} bytes its header declares"
            )
        target.write(chunk)
    return copied


class Extractor:
    """Extracts one source's archives, nested ones included, under one set of caps: bytes and
    members are counted across all of them, so a zip of zips cannot multiply the caps."""

    def __init__(self, limits: ArchiveLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.bytes_left = limits.max_archive_bytes
        self.members_left = limits.max_members

    def extract(self, archive: Path, dest: Path) -> None:
        """Extract a zip or tar archive into `dest`: every header is checked before anything is
        written, then each file is written to a path built here and counted as it lands."""
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    members = self._checked(
                        (_zip_member(i, archive) for i in zf.infolist()), archive
                    )
                    self._write(members, zf.open, archive, dest)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as tf:
                    # Iterating reads one header at a time: a refusal stops before the rest.
                    members = self._checked((_tar_member(i, archive) for i in tf), archive)
                    self._write(members, tf.extractfile, archive, dest)
            else:
                raise SourceError(f"{archive.name} is not a zip or tar archive")
        except (
            zipfile.BadZipFile,
            tarfile.TarError,
            EOFError,
            OSError,  # a damaged gzip or bz2 stream, a full disk, a name the system refuses
            zlib.error,
            lzma.LZMAError,
            NotImplementedError,  # a zip compression method Python lacks
        ) as exc:
            raise SourceError(f"cannot extract {archive.name}: {one_line(exc)}") from None

    def expand_nested(self, folder: Path, depth: int = MAX_NESTING) -> None:
        """Extract archives found inside `folder` next to themselves (`train.zip` -> `train/`)
        and delete them, `depth` levels deep."""
        for _ in range(depth):
            nested = sorted(p for p in folder.rglob("*") if p.is_file() and is_archive(p))
            if not nested:
                return
            for archive in nested:
                self.extract(archive, archive.with_name(strip_archive_suffix(archive.name)))
                archive.unlink()

    def _checked(self, members: Iterable[_Member], archive: Path) -> list[_Member]:
        """The members, every header checked against the caps; the first one over stops."""
        packed_total, total, checked = archive.stat().st_size, 0, []
        for member in members:
            if not member.parts:
                if member.is_dir:
                    continue  # the archive's own root, `./`
                raise UnsafeArchiveError(
                    f"unsafe archive {archive.name}: member {member.name!r} has no name"
                )
            name = repr(member.name)
            if len(checked) == self.members_left:
                self._refuse(archive, "max_members", "too many members" + _NESTED)
            if len(member.parts) > self.limits.max_depth:
                self._refuse(archive, "max_depth", f"{name} is {len(member.parts)} levels deep")
            total += member.size
            if total > self.bytes_left:
                spent = self.limits.max_archive_bytes - self.bytes_left
                self._refuse(
                    archive, "max_archive_bytes", f"it expands to {spent + total}+ bytes" + _NESTED
                )
            if member.packed is not None and self._too_compressed(member.size, member.packed):
                ratio = member.size / max(member.packed, 1)
                self._refuse(archive, "max_ratio", f"{name} expands {ratio:.0f}-fold")
            if self._too_compressed(total, packed_total):
                ratio = total / max(packed_total, 1)
                self._refuse(archive, "max_ratio", f"it expands at least {ratio:.0f}-fold overall")
            checked.append(member)
        self.members_left -= len(checked)
        return checked

    def _too_compressed(self, size: int, packed: int) -> bool:
        return size > RATIO_FLOOR and size > self.limits.max_ratio * packed

    def _refuse(self, archive: Path, key: str, reason: str) -> NoReturn:
        raise UnsafeArchiveError(
            f"unsafe archive {archive.name}: {reason}; download.{key} is "
            f"{getattr(self.limits, key)}, raise it only for an archive you trust"
        )

    def _write(
        self,
        members: list[_Member],
        open_member: Callable[..., IO[bytes]],
        archive: Path,
        dest: Path,
    ) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        folders = {root}
        for member in members:
            target = root.joinpath(*member.parts)
            _make_folders(root, target if member.is_dir else target.parent, folders, archive)
            if member.is_dir:
                continue
            what = f"{archive.name}: member {member.name!r}"
            with open_member(member.header) as stream, open(_new_file(target), "wb") as out:
                self.bytes_left -= copy_within(stream, out, member.size, what)


def _new_file(path: Path) -> int:
    """A descriptor of a new file: never an existing one, never through a link."""
    return os.open(path, _NEW_FILE, 0o644)


def _make_folders(root: Path, folder: Path, made: set[Path], archive: Path) -> None:
    """Create `folder` below `root` one level at a time, refusing any level that is a link (the
    names were checked, so only a link already in the destination could bend the path)."""
    for level in (*reversed(folder.relative_to(root).parents), folder.relative_to(root)):
        path = root / level
        if path in made:
            continue
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        if path.is_symlink() or not path.is_dir():
            raise UnsafeArchiveError(
                f"unsafe archive {archive.name}: {level.as_posix()} in the destination is a "
                "link or a file, not a folder"
            )
        made.add(path)


def _refuse_kind(archive: Path, name: str, kind: str) -> NoReturn:
    raise UnsafeArchiveError(
        f"unsafe archive {archive.name}: member {name!r} is {kind}; an archive may hold only "
        "files and folders"
    )


def _zip_member(info: zipfile.ZipInfo, archive: Path) -> _Member:
    kind = stat.S_IFMT(info.external_attr >> 16)  # Unix st_mode, where the zip records one
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        _refuse_kind(archive, info.filename, _ZIP_KINDS.get(kind, "a special file"))
    if info.flag_bits & 0x1:
        raise SourceError(f"cannot extract {archive.name}: member {info.filename!r} is encrypted")
    parts = member_parts(info.filename, archive)
    return _Member(info, info.filename, parts, info.is_dir(), info.file_size, info.compress_size)


def _tar_member(info: tarfile.TarInfo, archive: Path) -> _Member:
    if not (info.isreg() or info.isdir()):
        _refuse_kind(archive, info.name, _TAR_KINDS.get(info.type, "a special member"))
    size = 0 if info.isdir() else info.size
    return _Member(info, info.name, member_parts(info.name, archive), info.isdir(), size, None)


@contextlib.contextmanager
def extracted(archive: Path, limits: ArchiveLimits) -> Iterator[Path]:
    """The archive extracted (nested archives too) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="imgclf-extract-") as tmp:
        extractor = Extractor(limits)
        extractor.extract(archive, Path(tmp))
        extractor.expand_nested(Path(tmp))
        yield Path(tmp)
