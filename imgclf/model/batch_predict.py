"""Batch prediction over a folder or archive: find images, standardise each one, name rows.

Every file goes through `imgclf.data.standardise`, the standardisation the download stage and the
service use (EXIF rotation applied, CMYK/palette/alpha converted), so a phone photo reaches the
model upright here too; a file that cannot be standardised is reported and skipped. The
probabilities come from `imgclf.model.inference.predict_probabilities`, the function evaluate
uses, so a file gets the same probability in both.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.data.sources import SourceError, extracted, is_archive
from imgclf.data.standardise import ImageRejected, Limits, standardise
from imgclf.model.decision import predicted_indices

# Files with these suffixes are candidates (and reported if unusable); others are ignored.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".jpe",
    ".jfif",
    ".png",
    ".gif",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
)
_SKIPPED_DIRS = {"__MACOSX"}
_NUMERIC_ID = re.compile(r"^(?:.*[._\-\s])?(\d+)$")


@dataclass(frozen=True)
class ModelInput:
    """One usable file: the user's `source`, and the `file` the model reads (the source itself
    when it is already clean, else its standardised copy)."""

    source: Path
    file: Path


def find_images(folder: Path) -> tuple[list[Path], int]:
    """Candidate image files below `folder` (recursive, sorted) and how many other files there
    were."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_file():
                continue
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("._"):
                found.append(path)
            else:
                ignored += 1
    return sorted(found), ignored


def standardise_file(source: Path, copy: Path, limits: Limits) -> ModelInput:
    """`source` standardised; a re-encoded image is written to `copy`. Raises ImageRejected or
    OSError (an unreadable file)."""
    clean = standardise(source.read_bytes(), limits)
    if not clean.changes:
        return ModelInput(source, source)
    copy.write_bytes(clean.data)
    return ModelInput(source, copy)


@contextlib.contextmanager
def standardised_inputs(
    candidates: Sequence[Path], limits: Limits
) -> Iterator[tuple[list[ModelInput], list[tuple[Path, str]]]]:
    """Usable files and (file, reason) for the rest; re-encoded copies live in a temporary
    folder until the block ends. Decodes in threads (Pillow releases the GIL)."""

    def attempt(job: tuple[int, Path]) -> ModelInput | str:
        index, source = job
        try:
            return standardise_file(source, Path(scratch, f"{index}.png"), limits)
        except ImageRejected as exc:
            return f"{exc.reason}: {exc.detail}"
        except OSError as exc:
            return f"unreadable: {exc.strerror or exc}"

    workers = min(8, len(os.sched_getaffinity(0)))
    with (
        tempfile.TemporaryDirectory(prefix="imgclf-standardised-") as scratch,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        outcomes = list(pool.map(attempt, enumerate(candidates)))
        usable = [outcome for outcome in outcomes if isinstance(outcome, ModelInput)]
        rejected = [
            (source, outcome)
            for source, outcome in zip(candidates, outcomes, strict=True)
            if isinstance(outcome, str)
        ]
        yield usable, rejected


def submission_id(path: Path | str) -> int | str:
    """`123.jpg` / `cat.123.jpg` / `img_123.png` -> 123; any other name -> its stem."""
    stem = Path(path).stem
    match = _NUMERIC_ID.match(stem)
    return int(match.group(1)) if match else stem


def submission_order(item: tuple[int | str, str]) -> tuple[int, int, str, str]:
    """Sort key of (id, relative path): numeric ids first, in numeric order, then names."""
    ident, rel = item
    return (0, ident, "", rel) if isinstance(ident, int) else (1, 0, ident, rel)


@contextlib.contextmanager
def input_folder(source: Path) -> Iterator[Path]:
    """A folder as is; an archive extracted (safely) into a temporary folder."""
    if source.is_dir():
        yield source
    elif source.is_file() and is_archive(source):
        with extracted(source) as folder:
            yield folder
    else:
        raise SourceError(f"{source} is neither a folder nor a .zip/.tar archive")


def write_submission(
    out: Path,
    rows: Sequence[tuple[int | str, float]],
    threshold: float,
    probability_column: str | None,
) -> None:
    """Write `id,label[,probability]` atomically; the label is THE decision rule's class index."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    with open(scratch, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label"] + ([probability_column] if probability_column else []))
        labels = predicted_indices(np.array([prob for _, prob in rows]), threshold)
        for (ident, prob), label in zip(rows, labels, strict=True):
            extra = [format(prob, ".9g")] if probability_column else []
            writer.writerow([ident, int(label), *extra])
    os.replace(scratch, out)
