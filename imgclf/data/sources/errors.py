"""Errors about `download.source`: each says in ONE line what to do, so the stage can print it
without a traceback."""

from __future__ import annotations

import re

OFFLINE_HINT = (
    "to use local images instead, point download.source at a folder or archive, e.g. "
    "`dvc exp run -S download.source=../shared/data/dogs-vs-cats` or edit download.source "
    "in params.yaml"
)


class SourceError(RuntimeError):
    """A user-fixable problem with `download.source`; str() is one line, fit to print as is."""


class UnsafeArchiveError(SourceError):
    """An archive member would land outside the extraction folder (zip-slip / tar-slip)."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def short_reason(exc: BaseException) -> str:
    """The innermost useful words of a requests/urllib3 error, without object reprs."""
    text = one_line(exc)
    for pattern in (r"\[Errno -?\d+\] [^'\")]+", r"Connection refused", r"timed out"):
        match = re.search(pattern, text)
        if match:
            return match.group(0).strip()
    return text[:160]
