"""Kaggle competitions, through the official client and its credentials."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from imgclf.data.sources.errors import OFFLINE_HINT, SourceError, short_reason


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
            f"Kaggle download of {competition!r} failed ({short_reason(exc)}); accept the "
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
