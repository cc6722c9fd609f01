"""Batch prediction over a folder or archive (`imgclf predict`): find images, standardise each
one, predict, write a Kaggle submission CSV `id,label` (label 1 = classes[1]), optionally with
`<classes[1]>_probability`.

The id is the numeric part of the file name (`123.jpg`, `cat.123.jpg` -> 123; other names keep
their stem); rows are sorted by id, numbers first.

Every file goes through `imgclf.data.standardise`, the standardisation the download stage and the
service use (EXIF rotation applied, CMYK/palette/alpha converted), so a phone photo reaches the
model upright here too; a file that cannot be standardised, or that the model's decoder
refuses, is reported and skipped. The probabilities come from
`imgclf.model.inference.predict_probabilities`, the function evaluate uses, so a file gets the
same probability in both; labels come from THE decision rule (`imgclf.model.decision`).
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from imgclf.config import Params, Paths
from imgclf.data.listing import list_files
from imgclf.data.sources import local_folder
from imgclf.data.standardise import ImageRejected, Limits, Reason, standardise
from imgclf.model.decision import class_probabilities, predicted_indices
from imgclf.model.inference import load_model, predict_probabilities
from imgclf.model.preprocess import decode_image

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
_NUMERIC_ID = re.compile(r"^(?:.*[._\-\s])?(\d+)$")


@dataclass(frozen=True)
class ModelInput:
    """One usable file: the user's `source`, and the `file` the model reads (the source itself
    when it is already clean, else its standardised copy)."""

    source: Path
    file: Path


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


def predict_decodable(
    model, images: Sequence[ModelInput], batch_size: int
) -> tuple[list[ModelInput], np.ndarray, list[tuple[Path, str]]]:
    """The images THE preprocessing can decode with P(class 1) for each, and (source, reason)
    for the rest. Pillow has read every file, but TensorFlow's JPEG decoder refuses some damaged
    JPEGs that Pillow reads and `standardise` passes on as they are. Only after a failed run is
    each file decoded on its own, so a clean folder costs nothing more."""
    files = [image.file for image in images]
    try:
        return list(images), predict_probabilities(model, files, batch_size)[:, 1], []
    except tf.errors.InvalidArgumentError:
        refused = [(image.source, _decoder_refuses(image.file)) for image in images]
        refused = [(source, reason) for source, reason in refused if reason]
        if not refused:
            raise
    sources = {source for source, _ in refused}
    usable = [image for image in images if image.source not in sources]
    files = [image.file for image in usable]
    return usable, predict_probabilities(model, files, batch_size)[:, 1], refused


def _decoder_refuses(file: Path) -> str:
    """Why THE preprocessing's decoder refuses `file`; empty when it decodes it."""
    try:
        decode_image(tf.io.read_file(str(file)))
    except tf.errors.InvalidArgumentError:
        return f"{Reason.CORRUPT}: the model's decoder (TensorFlow) refuses it"
    return ""


def submission_id(path: Path | str) -> int | str:
    """`123.jpg` / `cat.123.jpg` / `img_123.png` -> 123; any other name -> its stem."""
    stem = Path(path).stem
    match = _NUMERIC_ID.match(stem)
    return int(match.group(1)) if match else stem


def submission_order(item: tuple[int | str, str]) -> tuple[int, int, str, str]:
    """Sort key of (id, relative path): numeric ids first, in numeric order, then names."""
    ident, rel = item
    return (0, ident, "", rel) if isinstance(ident, int) else (1, 0, ident, rel)


def write_submission(
    out: Path,
    rows: Sequence[tuple[int | str, float]],
    labels: np.ndarray,
    probability_column: str | None,
) -> None:
    """Write `id,label[,probability]` atomically; `labels`: the class index of each row."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    with open(scratch, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "label"] + ([probability_column] if probability_column else []))
        for (ident, prob), label in zip(rows, labels, strict=True):
            extra = [format(prob, ".9g")] if probability_column else []
            writer.writerow([ident, int(label), *extra])
    os.replace(scratch, out)


@dataclass(frozen=True)
class PredictSummary:
    """What run_predict did. `rows == 0`: no usable image, so nothing was written."""

    classes: tuple[str, ...]
    rows: int
    positives: int  # rows labelled classes[1]
    skipped: tuple[tuple[Path, str], ...]  # (path relative to the input, reason)
    ignored: int  # files without an image suffix
    duplicate_ids: tuple[int | str, ...]  # ids of more than one file: the names should differ


def run_predict(
    paths: Paths,
    params: Params,
    source: Path,
    out: Path,
    *,
    model: str | None = None,
    batch_size: int | None = None,
    proba: bool = False,
) -> PredictSummary:
    """Predict every usable image of `source` (a folder, searched recursively, or an archive) and
    write the submission to `out`. `model`: a .keras file or an MLflow URI (default: train's
    model); `batch_size` default: evaluate.batch_size. A file that cannot be used is skipped
    with its reason. Raises SourceError or OSError (a missing input or model)."""
    classes = tuple(params.download.classes)
    with local_folder(source) as folder:
        found, ignored = list_files(folder, IMAGE_SUFFIXES)
        candidates = [folder / rel for rel in found]
        # The download stage's pixel limit: nothing larger ever reached training either.
        limits = Limits(params.download.max_pixels)
        with standardised_inputs(candidates, limits) as (good, rejected):
            if good:
                good, probabilities, refused = predict_decodable(
                    load_model(model or paths.model),
                    good,
                    batch_size or params.evaluate.batch_size,
                )
                rejected = sorted([*rejected, *refused])
        skipped = tuple((path.relative_to(folder), reason) for path, reason in rejected)
        if not good:
            return PredictSummary(classes, 0, 0, skipped, ignored, ())
        relative = [image.source.relative_to(folder).as_posix() for image in good]

    rows = _submission_rows(relative, probabilities)
    # THE decision rule's class index per row.
    labels = predicted_indices(
        class_probabilities(np.array([prob for _, prob in rows])), params.evaluate.threshold
    )
    write_submission(out, rows, labels, f"{classes[1]}_probability" if proba else None)
    ids = Counter(ident for ident, _ in rows)
    return PredictSummary(
        classes=classes,
        rows=len(rows),
        positives=int(labels.sum()),
        skipped=skipped,
        ignored=ignored,
        duplicate_ids=tuple(ident for ident, count in ids.items() if count > 1),
    )


def _submission_rows(
    relative: Sequence[str], probabilities: Sequence[float]
) -> list[tuple[int | str, float]]:
    """(id, probability) per file, in submission order (ties: by relative path)."""
    rows = sorted(
        (
            (submission_id(rel), rel, float(prob))
            for rel, prob in zip(relative, probabilities, strict=True)
        ),
        key=lambda row: submission_order(row[:2]),
    )
    return [(ident, prob) for ident, _, prob in rows]
