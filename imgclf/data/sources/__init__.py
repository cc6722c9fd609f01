"""Turn `download.source` into a local folder of files: HTTP(S) archive, local folder or archive,
S3 prefix, or Kaggle competition (one module each).

Everything that can go wrong for a user-fixable reason (no network, no credentials, bad checksum,
unsafe archive) raises `SourceError` with ONE line that says what to do, so the stage can print it
without a traceback.
"""

from __future__ import annotations

import contextlib
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from imgclf.data.sources.archive import (
    ARCHIVE_SUFFIXES,
    DEFAULT_LIMITS,
    ArchiveLimits,
    Extractor,
    extracted,
    is_archive,
    strip_archive_suffix,
)
from imgclf.data.sources.errors import OFFLINE_HINT, SourceError
from imgclf.data.sources.http import download_http, verify_sha256
from imgclf.data.sources.kaggle import download_kaggle
from imgclf.data.sources.s3 import download_s3

__all__ = ["ArchiveLimits", "Extractor", "SourceError", "local_folder", "open_source"]


@contextlib.contextmanager
def open_source(
    source: str,
    *,
    root: Path,
    cache_dir: Path,
    sha256: str | None = None,
    s3_endpoint_url: str | None = None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    progress: bool = True,
) -> Iterator[Path]:
    """Yield a local folder holding the source's files; temporary folders vanish on exit.

    `root` anchors relative local paths (the project root); `cache_dir` keeps resumable HTTP and
    Kaggle downloads between runs. A local folder is yielded as is (read-only use); everything
    else is extracted into a temporary folder, with nested archives expanded, within `limits`
    (`ArchiveLimits.of(download params)`). `sha256` applies to an HTTP or local archive.
    """
    scheme = urlparse(source).scheme.lower()
    if scheme in ("http", "https"):
        archive = download_http(source, cache_dir, sha256=sha256, progress=progress)
        if not (zipfile.is_zipfile(archive) or tarfile.is_tarfile(archive)):
            archive.unlink()  # an error page or a cut-off file: never serve it from the cache
            raise SourceError(
                f"{source} did not return a complete zip or tar archive (removed from the "
                f"cache); check the URL, or {OFFLINE_HINT}"
            )
        with extracted(archive, limits) as folder:
            yield folder
    elif scheme == "s3":
        with tempfile.TemporaryDirectory(prefix="imgclf-s3-") as tmp:
            download_s3(source, Path(tmp), endpoint_url=s3_endpoint_url, progress=progress)
            Extractor(limits).expand_nested(Path(tmp))
            yield Path(tmp)
    elif scheme == "kaggle":
        archive_dir = download_kaggle(source.split("://", 1)[1].strip("/"), cache_dir / "kaggle")
        with tempfile.TemporaryDirectory(prefix="imgclf-kaggle-") as tmp:
            extractor = Extractor(limits)
            for archive in sorted(archive_dir.iterdir()):
                if is_archive(archive):
                    extractor.extract(archive, Path(tmp) / strip_archive_suffix(archive.name))
            extractor.expand_nested(Path(tmp))
            yield Path(tmp)
    else:
        path = Path(source).expanduser()
        path = path if path.is_absolute() else root / path
        with local_folder(path, sha256=sha256, limits=limits) as folder:
            yield folder


@contextlib.contextmanager
def local_folder(
    path: Path, *, sha256: str | None = None, limits: ArchiveLimits = DEFAULT_LIMITS
) -> Iterator[Path]:
    """A local folder as is (read-only use), or a local archive extracted safely into a
    temporary folder within `limits` (after checking `sha256`, when given)."""
    if path.is_dir():
        yield path
    elif path.is_file() and is_archive(path):
        if sha256:
            verify_sha256(path, sha256, remove=False)
        with extracted(path, limits) as folder:
            yield folder
    elif path.is_symlink() and not path.exists():
        raise SourceError(f"{path} is a looping or dangling symlink, not a folder or archive")
    else:
        missing = "" if path.exists() else ": no such folder or archive"
        kinds = "/".join(ARCHIVE_SUFFIXES[:4])
        raise SourceError(f"{path} is neither a folder nor a {kinds} archive{missing}")
