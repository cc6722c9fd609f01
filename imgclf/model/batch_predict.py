"""Batch prediction over a folder or archive (`imgclf predict`): find images, standardise each
one, predict, write a CSV.

Two classes: a Kaggle submission `id,label` (label 1 = classes[1]), optionally with
`<classes[1]>_probability`. The id is the numeric part of the file name (`123.jpg`,
`cat.123.jpg` -> 123; other names keep their stem); rows are sorted by id, numbers first.
More classes: `path,label,confidence` (the path inside the input, the class name, its
probability), optionally with one probability column per class named by the class; rows sorted
by path.

The class list is the model's own: an MLflow model's metadata `classes`, else its registry
version's tag `classes`; a model that carries neither (a .keras file, or one logged before models
recorded their classes) gets the project's list (`project_classes`).

Every file goes through `imgclf.data.standardise`, the standardisation the download stage and the
service use (EXIF rotation applied, CMYK/palette/alpha converted, damaged JPEGs refused), so a
phone photo reaches the model upright here too; a file that cannot be standardised is reported
and skipped. The probabilities come from `imgclf.model.inference.predict_probabilities`, the
function evaluate uses, through the same exported engine (the export stage's for train's model,
the version's `engine` for a registered one), so a file gets the same probability in both;
labels come from THE decision rule (`imgclf.model.decision`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.config import Params, Paths
from imgclf.data.labels import ClassListError, read_classes
from imgclf.data.listing import list_files
from imgclf.data.sources import local_folder
from imgclf.data.standardise import ImageRejected, Limits, standardise
from imgclf.model.decision import class_probabilities, predicted_indices
from imgclf.model.engines import ENGINE_TAG, Engine, load_engine
from imgclf.model.export import exported_engine
from imgclf.model.inference import (
    MLFLOW_URI_PREFIXES,
    as_engine,
    load_model,
    predict_probabilities,
)

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


@dataclass(frozen=True)
class Classifier:
    """A loaded model and its classes, in the order of its probability columns."""

    model: Engine
    classes: tuple[str, ...]


def project_classes(paths: Paths, params: Params) -> list[str]:
    """The project's class list, for a model that carries none: the split stage's resolved list
    (what train, evaluate and register use) once the pipeline has run, else download.classes."""
    if paths.split_classes.is_file():
        return read_classes(paths.split_classes)
    if params.download.classes == "auto":
        raise ClassListError(
            "the model carries no class list and download.classes is auto: "
            "run `dvc repro split` to resolve it, or predict with a model logged with its classes"
        )
    return params.download.classes


def load_classifier(ref: str, paths: Paths, params: Params) -> Classifier:
    """The model at `ref` (a .keras file or an MLflow URI) with the classes it carries, else
    the project's. A registry alias is resolved to its version once, so the weights and the
    classes come from the same version even if the alias moves meanwhile. Raises
    ClassListError when the classes do not match the model's outputs in number."""
    uri, version_tags = _pinned(ref)
    model = _forward_pass(ref, uri, version_tags, paths, params.export.threads)
    classes = _classes_of(uri, version_tags, paths, params)
    outputs = class_probabilities(np.zeros((0, model.outputs), "float32")).shape[1]
    if outputs != len(classes):
        raise ClassListError(
            f"{ref} gives {outputs} class probabilities but the class list has "
            f"{len(classes)}: {', '.join(classes)}"
        )
    return Classifier(model, classes)


def model_reference(ref: str, paths: Paths, params: Params) -> tuple[str, tuple[str, ...]]:
    """`ref` pinned (a registry alias resolved to its version) and its classes, nothing loaded:
    imgclf.model.cluster_predict hands them to Ray actors, each of which then
    `load_classifier`s the pinned reference."""
    uri, version_tags = _pinned(ref)
    return uri, _classes_of(uri, version_tags, paths, params)


def _classes_of(
    uri: str, version_tags: dict[str, str], paths: Paths, params: Params
) -> tuple[str, ...]:
    """The classes the model at `uri` carries, else the project's."""
    return tuple(_carried_classes(uri, version_tags) or project_classes(paths, params))


def _forward_pass(
    ref: str, uri: str, version_tags: dict[str, str], paths: Paths, threads: int
) -> Engine:
    """The engine that answers for `ref`: train's model -> the export stage's engine; a
    registered version -> its `engine` artifact; otherwise (a .keras file, a version registered
    before engines were exported) the Keras model itself."""
    if ref == str(paths.model) and paths.export_report.is_file():
        return exported_engine(paths, threads)
    if ENGINE_TAG in version_tags:
        from mlflow import MlflowClient
        from mlflow.store.artifact.utils.models import get_model_name_and_version

        client = MlflowClient()
        registered = client.get_model_version(*get_model_name_and_version(client, uri))
        with tempfile.TemporaryDirectory(prefix="imgclf-engine-") as scratch:
            path = client.download_artifacts(registered.run_id, version_tags[ENGINE_TAG], scratch)
            return load_engine(Path(path), threads)  # read while loading: the file may go
    return as_engine(load_model(uri))


def _pinned(ref: str) -> tuple[str, dict[str, str]]:
    """A `models:/NAME@alias` (or /latest) URI as `models:/NAME/VERSION` with that version's
    tags; any other reference as it is, with no tags."""
    if not ref.startswith("models:/"):
        return ref, {}
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient()
    found = get_model_name_and_version(client, ref)
    if len(found) == 1:  # models:/<model id>: a logged model, no registry version
        return ref, {}
    name, version = found
    return f"models:/{name}/{version}", client.get_model_version(name, version).tags


def _carried_classes(uri: str, version_tags: dict[str, str]) -> list[str] | None:
    """The classes an MLflow model carries: its metadata, else its version's tag (JSON list)."""
    if not uri.startswith(MLFLOW_URI_PREFIXES):
        return None
    from mlflow.models import get_model_info

    metadata = get_model_info(uri).metadata or {}
    if "classes" in metadata:
        return list(metadata["classes"])
    return json.loads(version_tags["classes"]) if "classes" in version_tags else None


def probabilities_of(model: Engine, images: Sequence[ModelInput], batch_size: int) -> np.ndarray:
    """(n, K) class probabilities (float64, as the service's decision reads them) of standardised
    images: strictly decoded by `standardise`, so THE preprocessing's decoder takes them all."""
    files = [image.file for image in images]
    return predict_probabilities(model, files, batch_size).astype(np.float64)


def submission_id(path: Path | str) -> int | str:
    """`123.jpg` / `cat.123.jpg` / `img_123.png` -> 123; any other name -> its stem."""
    stem = Path(path).stem
    match = _NUMERIC_ID.match(stem)
    return int(match.group(1)) if match else stem


def submission_order(item: tuple[int | str, str]) -> tuple[int, int, str, str]:
    """Sort key of (id, relative path): numeric ids first, in numeric order, then names."""
    ident, rel = item
    return (0, ident, "", rel) if isinstance(ident, int) else (1, 0, ident, rel)


Row = list[int | str]  # one CSV line's cells; probabilities are already formatted


def submission_table(
    relative: Sequence[str],
    probabilities: np.ndarray,
    indices: np.ndarray,
    probability_column: str | None,
) -> tuple[Row, list[Row]]:
    """Two classes, Kaggle's format: `id,label[,probability]` with the class index as label and
    P(second class), rows in submission order (ties: by relative path)."""
    ids = [submission_id(rel) for rel in relative]
    order = sorted(range(len(ids)), key=lambda i: submission_order((ids[i], relative[i])))
    header: Row = ["id", "label"] + ([probability_column] if probability_column else [])
    rows: list[Row] = [
        [ids[i], int(indices[i])] + ([_number(probabilities[i, 1])] if probability_column else [])
        for i in order
    ]
    return header, rows


def class_table(
    relative: Sequence[str],
    probabilities: np.ndarray,
    indices: np.ndarray,
    classes: Sequence[str],
    proba: bool,
) -> tuple[Row, list[Row]]:
    """More classes: `path,label,confidence` with the class name and its probability, then with
    `proba` one probability column per class, named by the class; rows by path."""
    header: Row = ["path", "label", "confidence"] + (list(classes) if proba else [])
    rows: list[Row] = [
        [relative[i], classes[indices[i]], _number(probabilities[i, indices[i]])]
        + ([_number(p) for p in probabilities[i]] if proba else [])
        for i in sorted(range(len(relative)), key=relative.__getitem__)
    ]
    return header, rows


def _number(value: float) -> str:
    return format(float(value), ".9g")


def write_csv(out: Path, header: Row, rows: Sequence[Row]) -> None:
    """Write the CSV atomically (a scratch file renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    with open(scratch, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(scratch, out)


@dataclass(frozen=True)
class PredictSummary:
    """What run_predict did. `rows == 0`: no usable image, so nothing was written (and no model
    loaded: `classes` is empty)."""

    classes: tuple[str, ...]
    counts: tuple[int, ...]  # rows predicted as each class, in class order
    skipped: tuple[tuple[Path, str], ...]  # (path relative to the input, reason)
    ignored: int  # files without an image suffix
    duplicate_ids: tuple[int | str, ...]  # ids of more than one file: the names should differ

    @property
    def rows(self) -> int:
        return sum(self.counts)


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
    write the CSV to `out`. `model`: a .keras file or an MLflow URI (default: train's model);
    `batch_size` default: evaluate.batch_size. A file that cannot be used is skipped with its
    reason. Raises SourceError or OSError (a missing input or model), ClassListError."""
    with local_folder(source) as folder:
        found, ignored = list_files(folder, IMAGE_SUFFIXES)
        candidates = [folder / rel for rel in found]
        # The download stage's pixel limit: nothing larger ever reached training either.
        limits = Limits(params.download.max_pixels)
        with standardised_inputs(candidates, limits) as (good, rejected):
            if good:
                classifier = load_classifier(str(model or paths.model), paths, params)
                probabilities = probabilities_of(
                    classifier.model, good, batch_size or params.evaluate.batch_size
                )
        skipped = tuple((path.relative_to(folder), reason) for path, reason in rejected)
        if not good:
            return PredictSummary((), (), skipped, ignored, ())
        relative = [image.source.relative_to(folder).as_posix() for image in good]
    return write_predictions(
        out, relative, probabilities, classifier.classes, params, proba, skipped, ignored
    )


def write_predictions(
    out: Path,
    relative: Sequence[str],
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    params: Params,
    proba: bool,
    skipped: tuple[tuple[Path, str], ...],
    ignored: int,
) -> PredictSummary:
    """The CSV of the usable images (`relative` paths, their (n, K) probabilities) at `out`,
    and the summary, whoever computed the probabilities: here, or a Ray cluster
    (imgclf.model.cluster_predict)."""
    indices = predicted_indices(probabilities, params.evaluate.threshold)  # THE decision rule
    binary = len(classes) == 2
    if binary:
        probability_column = f"{classes[1]}_probability" if proba else None
        header, rows = submission_table(relative, probabilities, indices, probability_column)
    else:
        header, rows = class_table(relative, probabilities, indices, classes, proba)
    write_csv(out, header, rows)
    return PredictSummary(
        classes=classes,
        counts=tuple(np.bincount(indices, minlength=len(classes)).tolist()),
        skipped=skipped,
        ignored=ignored,
        duplicate_ids=shared_ids(relative) if binary else (),
    )


def shared_ids(relative: Sequence[str]) -> tuple[int | str, ...]:
    """Submission ids that more than one file gets (`a/1.jpg`, `b/cat.1.jpg`)."""
    ids = Counter(submission_id(rel) for rel in relative)
    return tuple(ident for ident, count in ids.items() if count > 1)
