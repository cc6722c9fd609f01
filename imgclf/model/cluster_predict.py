"""Batch prediction on a Ray cluster (`imgclf predict INPUT --engine ray --address HOST:PORT`):
the CSV `imgclf.model.batch_predict.run_predict` writes, for inputs one machine cannot get
through.

INPUT is a folder or an archive on this machine, or an S3 prefix (`s3://bucket/prefix`), which
the workers read themselves through pyarrow's S3 file system (credentials from each node's
environment or instance role; endpoint: download.s3_endpoint_url, else $AWS_ENDPOINT_URL).

The model reference is pinned here (a registry alias resolved to its version, its classes
read), and each actor of the pool loads that version once, as batch prediction loads it (the
version's exported engine). Each batch of files then goes through batch prediction's own steps,
`standardised_inputs` then `probabilities_of`, in the actor's scratch folder, so every file gets
the probability and the skip reason the local engine gives it. Rows come back keyed by index
(a batch rerun after an actor died cannot repeat or lose a file), and the CSV is written here by
`write_predictions`; `parquet` adds the same predictions as a typed table.

Every node must reach the model: give a registry URI (`models:/NAME@champion`) with the MLflow
server reachable from the workers; a .keras file, or train's model with its exported engine,
works only where every node sees the path.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from imgclf.config import Params, Paths
from imgclf.data.cluster import connected, files_per_task, in_input_order, run_pipeline
from imgclf.data.listing import list_files
from imgclf.data.sources import local_folder
from imgclf.data.standardise import Limits
from imgclf.model.batch_predict import (
    IMAGE_SUFFIXES,
    PredictSummary,
    load_classifier,
    model_reference,
    probabilities_of,
    standardised_inputs,
    write_predictions,
)
from imgclf.model.decision import predicted_indices


@dataclass(frozen=True)
class Listing:
    """The input's image files: paths relative to INPUT (sorted), where each is read from (a
    local path, or bucket/key on `filesystem`), and the count of other files."""

    relative: list[str]
    locations: list[str]
    ignored: int
    filesystem: Any = None  # pyarrow's S3FileSystem for an S3 prefix; None: this machine's files


@contextlib.contextmanager
def listed(source: str, s3_endpoint_url: str | None) -> Iterator[Listing]:
    """The image files of a folder or archive (extracted until the block ends, as for the local
    engine), or of an S3 prefix."""
    if source.startswith("s3://"):
        yield _s3_listing(source, s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
        return
    with local_folder(Path(source)) as folder:
        found, ignored = list_files(folder, IMAGE_SUFFIXES)
        # Absolute: the read stage's worker does not run in this process's current folder.
        yield Listing(found, [os.path.abspath(folder / rel) for rel in found], ignored)


def _s3_listing(uri: str, endpoint: str | None) -> Listing:
    from pyarrow import fs

    prefix = uri.removeprefix("s3://").rstrip("/")
    filesystem = fs.S3FileSystem(endpoint_override=endpoint)
    infos = filesystem.get_file_info(fs.FileSelector(prefix, recursive=True))
    keys = sorted(info.path for info in infos if info.type == fs.FileType.File)
    images = [key for key in keys if PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES]
    relative = [key.removeprefix(prefix + "/") for key in images]
    return Listing(relative, images, len(keys) - len(images), filesystem)


def run_predict_on_ray(
    paths: Paths,
    params: Params,
    source: str,
    out: Path,
    *,
    model: str | None = None,
    batch_size: int | None = None,
    proba: bool = False,
    address: str | None = None,
    concurrency: int | None = None,
    parquet: Path | None = None,
    progress: bool = True,
) -> PredictSummary:
    """`run_predict` on the Ray cluster at `address` (None: $RAY_ADDRESS, else a Ray on this
    machine) with `concurrency` actors (default: one per CPU of the cluster), each predicting
    `batch_size` files at a time (default: evaluate.batch_size). Raises what run_predict
    raises."""
    uri, classes = model_reference(str(model or paths.model), paths, params)
    batch_size = batch_size or params.evaluate.batch_size
    with listed(source, params.download.s3_endpoint_url) as listing:
        rows = [{"index": i, "source": location} for i, location in enumerate(listing.locations)]
        bar = tqdm(total=len(rows), desc="predict", unit="img", disable=not progress)
        with connected(address), bar:
            batches = _predictions(rows, listing, uri, paths, params, batch_size, concurrency)
            placed = in_input_order(batches, len(rows), bar)
    skipped = tuple(
        sorted(
            (Path(rel), row["reason"])
            for rel, row in zip(listing.relative, placed, strict=True)
            if row["reason"]
        )
    )
    usable = [i for i, row in enumerate(placed) if not row["reason"]]
    if not usable:
        return PredictSummary((), (), skipped, listing.ignored, ())
    relative = [listing.relative[i] for i in usable]
    probabilities = np.array([placed[i]["probabilities"] for i in usable], dtype=np.float64)
    summary = write_predictions(
        out, relative, probabilities, classes, params, proba, skipped, listing.ignored
    )
    if parquet is not None:
        write_parquet(parquet, relative, probabilities, classes, params.evaluate.threshold)
    return summary


def _predictions(
    rows: list[dict[str, Any]],
    listing: Listing,
    uri: str,
    paths: Paths,
    params: Params,
    batch_size: int,
    concurrency: int | None,
) -> Iterator[pa.Table]:
    """Result batches (index, probabilities, reason) of the pipeline read -> `_Predictor`."""
    if not rows:  # no image file: no actor to start
        return
    import mlflow
    import ray
    import ray.data

    # One actor per CPU, as batch prediction runs one engine on all; never more than batches.
    batches = math.ceil(len(rows) / files_per_task(len(rows)))
    actors = min(concurrency or max(1, int(ray.cluster_resources().get("CPU", 1))), batches)
    yield from run_pipeline(
        rows,
        _read_inputs,
        _Predictor,
        read_kwargs={"limits": _limits(params), "filesystem": listing.filesystem},
        read_anywhere=listing.filesystem is not None,
        compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs={
            "uri": uri,
            "paths": paths,
            "params": params,
            "batch_size": batch_size,
            "tracking_uri": mlflow.get_tracking_uri(),
            "registry_uri": mlflow.get_registry_uri(),
        },
    )


def _limits(params: Params) -> Limits:
    """Batch prediction's limits: the download stage's pixel limit (run_predict's)."""
    return Limits(params.download.max_pixels)


def _read_inputs(batch: pa.Table, limits: Limits, filesystem: Any) -> pa.Table:
    """Read stage: each file's bytes and its name, or, for a local file that cannot be read,
    batch prediction's own report of it (made where the file lies)."""
    data, reasons = [], []
    for source in batch["source"].to_pylist():
        if filesystem is not None:
            with filesystem.open_input_stream(source) as stream:
                data.append(stream.readall())
            reasons.append("")
            continue
        try:
            data.append(Path(source).read_bytes())
            reasons.append("")
        except OSError:
            with standardised_inputs([Path(source)], limits) as (_, rejected):
                data.append(b"")
                reasons.append(rejected[0][1])
    names = [PurePosixPath(source).name for source in batch["source"].to_pylist()]
    return pa.table(
        {
            "index": batch["index"],
            "name": pa.array(names, pa.string()),
            "data": pa.array(data, pa.large_binary()),
            "reason": pa.array(reasons, pa.string()),
        }
    )


class _Predictor:
    """One actor of the pool: loads the model once, then predicts batch after batch with batch
    prediction's own steps, on files written to its scratch folder."""

    def __init__(
        self,
        uri: str,
        paths: Paths,
        params: Params,
        batch_size: int,
        tracking_uri: str,
        registry_uri: str,
    ) -> None:
        import mlflow
        import ray
        import tensorflow as tf

        # The engine and TensorFlow would each start a thread per core of the node: the actor
        # uses the CPUs Ray gave it.
        cpus = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
        params = params.model_copy(
            update={"export": params.export.model_copy(update={"threads": cpus})}
        )
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(registry_uri)
        self.classifier = load_classifier(uri, paths, params)
        self.limits = _limits(params)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons = batch["reason"].to_pylist()
        probabilities: list[Sequence[float] | None] = [None] * batch.num_rows
        with tempfile.TemporaryDirectory(prefix="imgclf-predict-") as scratch:
            files = self._written(batch, reasons, Path(scratch))
            with standardised_inputs(list(files), self.limits) as (good, rejected):
                if good:
                    predicted = probabilities_of(self.classifier.model, good, self.batch_size)
                    for image, row in zip(good, predicted, strict=True):
                        probabilities[files[image.source]] = row.tolist()
            for file, reason in rejected:
                reasons[files[file]] = reason
        return pa.table(
            {
                "index": batch["index"],
                "probabilities": pa.array(probabilities, pa.list_(pa.float64())),
                "reason": pa.array(reasons, pa.string()),
            }
        )

    @staticmethod
    def _written(batch: pa.Table, reasons: list[str], scratch: Path) -> dict[Path, int]:
        """The batch's readable files written under `scratch` with their own names: file ->
        position in the batch."""
        files = {}
        names, data = batch["name"].to_pylist(), batch["data"].to_pylist()
        for position, (name, content, reason) in enumerate(zip(names, data, reasons, strict=True)):
            if reason:
                continue
            file = scratch / str(position) / name
            file.parent.mkdir()
            file.write_bytes(content)
            files[file] = position
        return files


def write_parquet(
    out: Path,
    relative: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    threshold: float,
) -> None:
    """The predictions as Parquet, atomically: path, label (class name), confidence, then one
    float64 probability column per class, named by the class; rows by path (as the CSV of
    more than two classes)."""
    order = sorted(range(len(relative)), key=relative.__getitem__)
    probabilities = probabilities[order]
    indices = predicted_indices(probabilities, threshold)  # THE decision rule
    columns = [
        pa.array([relative[i] for i in order], pa.string()),
        pa.array([classes[i] for i in indices], pa.string()),
        pa.array(probabilities[np.arange(len(order)), indices], pa.float64()),
        *(pa.array(probabilities[:, k], pa.float64()) for k in range(len(classes))),
    ]
    table = pa.Table.from_arrays(columns, names=["path", "label", "confidence", *classes])
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, scratch)
    os.replace(scratch, out)
