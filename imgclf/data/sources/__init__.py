"""Turn `download.source` into a local folder of files: HTTP(S) archive, local folder or archive,
S3 prefix, or Kaggle competition.

Everything that can go wrong for a user-fixable reason (no network, no credentials, bad checksum,
unsafe archive) raises `SourceError` with ONE line that says what to do, so the stage can print it
without a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
import urllib3
from tqdm import tqdm

from imgclf.io import sha256_file

OFFLINE_HINT = (
    "to use local images instead, point download.source at a folder or archive, e.g. "
    "`dvc exp run -S download.source=../shared/data/dogs-vs-cats` or edit download.source "
    "in params.yaml"
)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Nested archives (Kaggle's dogs-vs-cats.zip holds train.zip) are expanded this many levels deep.
MAX_NESTING = 3
_CHUNK = 1 << 20


class SourceError(RuntimeError):
    """A user-fixable problem with `download.source`; str() is one line, fit to print as is."""


class UnsafeArchiveError(SourceError):
    """An archive member would land outside the extraction folder (zip-slip / tar-slip)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_source(
    source: str,
    *,
    root: Path,
    cache_dir: Path,
    sha256: str | None = None,
    s3_endpoint_url: str | None = None,
    progress: bool = True,
) -> Iterator[Path]:
    """Yield a local folder holding the source's files; temporary folders vanish on exit.

    `root` anchors relative local paths (the project root); `cache_dir` keeps resumable HTTP and
    Kaggle downloads between runs. A local folder is yielded as is (read-only use); everything
    else is extracted into a temporary folder, with nested archives expanded. `sha256` applies
    to an HTTP or local archive.
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
        with _extracted(archive) as folder:
            yield folder
    elif scheme == "s3":
        with tempfile.TemporaryDirectory(prefix="imgclf-s3-") as tmp:
            download_s3(source, Path(tmp), endpoint_url=s3_endpoint_url, progress=progress)
            expand_nested_archives(Path(tmp))
            yield Path(tmp)
    elif scheme == "kaggle":
        archive_dir = download_kaggle(source.split("://", 1)[1].strip("/"), cache_dir / "kaggle")
        with tempfile.TemporaryDirectory(prefix="imgclf-kaggle-") as tmp:
            for archive in sorted(archive_dir.iterdir()):
                if is_archive(archive):
                    safe_extract(archive, Path(tmp) / _strip_archive_suffix(archive.name))
            expand_nested_archives(Path(tmp))
            yield Path(tmp)
    else:
        path = Path(source).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            yield path
        elif path.is_file() and is_archive(path):
            if sha256:
                verify_sha256(path, sha256, remove=False)
            with _extracted(path) as folder:
                yield folder
        elif path.exists():
            raise SourceError(
                f"download.source {source!r} is neither a folder nor a "
                f"{'/'.join(ARCHIVE_SUFFIXES[:4])} archive"
            )
        else:
            raise SourceError(
                f"download.source {source!r}: no such folder or archive ({path}); relative "
                "paths are relative to the project root"
            )


@contextlib.contextmanager
def _extracted(archive: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="imgclf-extract-") as tmp:
        safe_extract(archive, Path(tmp))
        expand_nested_archives(Path(tmp))
        yield Path(tmp)


# --------------------------------------------------------------------------------------------
# HTTP(S)
# --------------------------------------------------------------------------------------------


def cache_name(url: str) -> str:
    """File name of `url` in the cache: a URL hash keeps two mirrors' `data.zip` apart."""
    base = PurePosixPath(urlparse(url).path).name or "download"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    return f"{hashlib.sha1(url.encode()).hexdigest()[:10]}-{base}"


def download_http(
    url: str,
    cache_dir: Path,
    *,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download `url` into `cache_dir`, resuming `<name>.part` with a Range request.

    An interrupted transfer is retried `retries` times from where it stopped; if it still fails,
    the `.part` file stays and the next call resumes it. With `sha256`, a mismatch removes the
    file and raises. Returns the complete file.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / cache_name(url)
    part = final.with_name(final.name + ".part")
    if final.exists():
        if sha256 is None or sha256_file(final) == sha256.lower():
            return final
        final.unlink()  # stale cache (e.g. download.sha256 changed): fetch again
    for attempt in range(retries + 1):
        try:
            _fetch_to(url, part, timeout=timeout, progress=progress)
            break
        except _Interrupted as exc:
            if attempt == retries:
                raise SourceError(
                    f"download of {url} interrupted at {exc.offset} bytes ({exc.reason}); run "
                    f"the stage again to resume it, or {OFFLINE_HINT}"
                ) from None
    if sha256:
        verify_sha256(part, sha256, remove=True)
    os.replace(part, final)
    return final


class _Interrupted(Exception):
    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset, self.reason = offset, reason


def _fetch_to(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One HTTP request that appends to (or restarts) `part`; raises _Interrupted mid-stream."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: byte ranges must count the file's bytes, not a gzip transfer encoding of them.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=(10, timeout))
    except requests.ConnectionError as exc:
        raise SourceError(f"cannot reach {url} ({_short_reason(exc)}); {OFFLINE_HINT}") from None
    except requests.RequestException as exc:
        raise SourceError(f"cannot download {url} ({_short_reason(exc)}); {OFFLINE_HINT}") from None
    with response:
        if response.status_code == 416:
            # Nothing left to send: the .part is already whole, unless it is longer than the file.
            total = _content_range_total(response.headers.get("Content-Range", ""))
            if total is not None and total != offset:
                part.unlink()
                raise _Interrupted(0, f"cached partial file larger than the remote ({total} B)")
            return
        if response.status_code == 206 and offset:
            if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                part.unlink()
                raise _Interrupted(0, "server answered a different byte range")
            mode = "ab"
        elif response.status_code == 200:
            offset, mode = 0, "wb"  # the server ignored Range: start over
        else:
            raise SourceError(
                f"download of {url} failed: HTTP {response.status_code} {response.reason}; "
                f"check the URL, or {OFFLINE_HINT}"
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        written = offset
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            desc=part.name[:40],
            disable=not progress,
            leave=False,
        )
        with open(part, mode) as fh, bar:
            try:
                # read1 hands over whatever arrived, so a dying connection loses nothing that
                # reached us: the .part ends exactly where the transfer stopped.
                while chunk := response.raw.read1(_CHUNK, decode_content=False):
                    fh.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Interrupted(written, _short_reason(exc)) from None
        if total is not None and written != total:
            raise _Interrupted(written, f"got {written} of {total} bytes")


def _content_range_total(header: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", header)
    return int(match.group(1)) if match else None


def _short_reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error, without object reprs."""
    text = _one_line(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Connection refused", r"timed out"):
        match = re.search(pattern, text)
        if match:
            return match.group(0).strip()
    return text[:160]


def verify_sha256(path: Path, expected: str, *, remove: bool) -> None:
    """Raise SourceError when the file's SHA-256 differs (removing the file when `remove`)."""
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        if remove:
            path.unlink(missing_ok=True)
        raise SourceError(
            f"sha256 mismatch for {path.name}: expected {expected}, got {actual}"
            + ("; the file was removed" if remove else "")
            + " (fix download.sha256 or the source)"
        )


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def is_archive(path: Path) -> bool:
    """True for a file whose name ends in a known archive suffix."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _strip_archive_suffix(name: str) -> str:
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "archive"
    return name


def _check_member_name(name: str, archive: Path) -> str:
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
            raise UnsafeArchiveError(f"unsafe archive {archive.name}: {_one_line(exc)}") from None
        raise SourceError(f"cannot extract {archive.name}: {_one_line(exc)}") from None


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            name = _check_member_name(info.filename, archive)
            if stat.S_ISLNK(info.external_attr >> 16):
                # zipfile writes links as small files holding the target; still refuse escapes.
                target = zf.read(info).decode("utf-8", "replace")
                _check_link_target(name, target, archive, hard=False)
        zf.extractall(dest, members=members)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():
            name = _check_member_name(member.name, archive)
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
            safe_extract(archive, archive.with_name(_strip_archive_suffix(archive.name)))
            archive.unlink()


# --------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SourceError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix")
    return parsed.netloc, parsed.path.lstrip("/")


def download_s3(
    uri: str,
    dest: Path,
    *,
    endpoint_url: str | None = None,
    threads: int = 8,
    progress: bool = True,
) -> list[Path]:
    """Download every object under `s3://bucket/prefix` into `dest` (key paths below the prefix
    kept). Credentials come from boto3's usual chain (env, profile, instance role), never params.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, prefix = parse_s3_uri(uri)
    where = f" at {endpoint_url}" if endpoint_url else ""
    # A fresh session: boto3's default one caches credentials from the first call on.
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}),
    )
    try:
        keys = _list_keys(client, bucket, prefix)
        if not keys:
            raise SourceError(f"no objects under {uri}{where}")
        jobs = []
        for key in keys:
            # s3://b/raw is the folder raw/ (not raw2/), or the single object raw (an archive).
            relative = PurePosixPath(key).name if key == prefix else key[len(prefix) :]
            relative = _check_member_name(relative.lstrip("/"), Path(uri))
            jobs.append((key, dest / relative))
        with (
            ThreadPoolExecutor(threads) as pool,
            tqdm(total=len(jobs), desc="s3", unit="file", disable=not progress, leave=False) as bar,
        ):
            for _ in pool.map(lambda job: _get_object(client, bucket, *job), jobs):
                bar.update()
        return [target for _, target in jobs]
    except NoCredentialsError:
        raise SourceError(
            f"no AWS credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            f"AWS_PROFILE) in the environment, never in params.yaml; or {OFFLINE_HINT}"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SourceError(
            f"S3 error for {uri}{where}: {error.get('Code', '?')} {error.get('Message', '')}"
            f"; check the bucket, prefix and credentials, or {OFFLINE_HINT}"
        ) from None
    except BotoCoreError as exc:
        raise SourceError(
            f"cannot reach S3 for {uri}{where} ({_one_line(exc)}); {OFFLINE_HINT}"
        ) from None


def _list_keys(client, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    folder = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    return sorted(key for key in keys if key == prefix or key.startswith(folder))


def _get_object(client, bucket: str, key: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    client.download_file(bucket, key, str(target))


# --------------------------------------------------------------------------------------------
# Kaggle
# --------------------------------------------------------------------------------------------


def download_kaggle(competition: str, dest: Path) -> Path:
    """Download a Kaggle competition's files into `dest` (cached there) and return it.

    Needs Kaggle credentials (~/.kaggle/kaggle.json, KAGGLE_USERNAME/KAGGLE_KEY or
    KAGGLE_API_TOKEN) and the competition's rules accepted on kaggle.com.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", competition):
        raise SourceError(f"bad Kaggle source kaggle://{competition}: expected kaggle://<name>")
    api = _kaggle_api()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        api.competition_download_files(competition, path=str(dest), quiet=False)
    except Exception as exc:  # the client raises many kinds (HTTP, auth, I/O); report one line
        raise SourceError(
            f"Kaggle download of {competition!r} failed ({_short_reason(exc)}); accept the "
            f"competition rules on kaggle.com and check the network, or {OFFLINE_HINT}"
        ) from None
    return dest


def _kaggle_api():
    """An authenticated KaggleApi. Importing `kaggle` authenticates and prints a page of help
    when credentials are missing; silence that and raise one line instead."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except (Exception, SystemExit):
        raise SourceError(
            "no Kaggle credentials: put your API token in ~/.kaggle/kaggle.json (or set "
            f"KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN), or {OFFLINE_HINT}"
        ) from None
    return api
