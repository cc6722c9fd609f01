"""Small helpers every stage uses: TSV manifests, JSON reports, all-or-nothing outputs, and URLs
safe to print."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a tab-separated file with a header line."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def write_tsv(
    path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str], delimiter: str = "\t"
) -> None:
    """Write rows (only `columns`, in that order) with Unix newlines, so reruns are byte-identical.

    `delimiter=","` writes CSV (what DVC plots and spreadsheets read).
    """
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(
            fh,
            fieldnames=list(columns),
            delimiter=delimiter,
            lineterminator="\n",
            extrasaction="ignore",
        )
        writer.writeheader()
        writer.writerows(rows)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file + rename), creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp")
    with open(scratch, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(scratch, path)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that replaces `final` only if the block succeeds.

    An interrupted or failing stage therefore never leaves a half-written output behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    scratch.chmod(0o755)  # mkdtemp's 0700 would make outputs private to this user
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)


def redact(uri: str) -> str:
    """The URI without a password, for messages and reports."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
