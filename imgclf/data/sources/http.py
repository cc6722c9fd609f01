"""HTTP(S) archives: resumable downloads into a cache, with an optional checksum."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import requests
import urllib3
from tqdm import tqdm

from imgclf.data.sources.errors import OFFLINE_HINT, SourceError, short_reason
from imgclf.io import sha256_file

_CHUNK = 1 << 20


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
        raise SourceError(f"cannot reach {url} ({short_reason(exc)}); {OFFLINE_HINT}") from None
    except requests.RequestException as exc:
        raise SourceError(f"cannot download {url} ({short_reason(exc)}); {OFFLINE_HINT}") from None
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
                raise _Interrupted(written, short_reason(exc)) from None
        if total is not None and written != total:
            raise _Interrupted(written, f"got {written} of {total} bytes")


def _content_range_total(header: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", header)
    return int(match.group(1)) if match else None


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
