"""MLflow runs: where they go, what every run records, and how evaluate rejoins train's run.

Nothing here runs at import: a stage calls `open_run` explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from imgclf.config import MlflowParams


def store_root(root: Path) -> Path:
    """Where a local store lives: the project root, also for a queued or `--temp` `dvc exp run`,
    whose stages run in a scratch copy that DVC deletes (DVC_ROOT names the real repo there)."""
    return Path(os.environ.get("DVC_ROOT") or root)


def tracking_uri(params: MlflowParams, root: Path) -> str:
    """$MLFLOW_TRACKING_URI wins; a relative sqlite path is anchored at the store root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(store_root(root) / uri.removeprefix(prefix))
    return uri


def _experiment_id(params: MlflowParams, root: Path, uri: str) -> str:
    """Get or create the experiment; a local store keeps artifacts under the project root."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(params.experiment)
    if experiment is not None:
        return experiment.experiment_id
    remote = uri.startswith(("http://", "https://", "databricks"))
    location = None if remote else (store_root(root) / params.artifact_location).resolve().as_uri()
    return client.create_experiment(params.experiment, artifact_location=location)


@contextmanager
def open_run(
    params: MlflowParams,
    root: Path,
    run_id: str | None = None,
    run_name: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start a new run (or resume `run_id`) against the configured store."""
    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            yield run
        return
    with mlflow.start_run(
        experiment_id=_experiment_id(params, root, uri), run_name=run_name
    ) as run:
        yield run


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}: MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(root: Path) -> str:
    """HEAD's sha, suffixed `-dirty` when tracked files differ; `unknown` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def data_version(manifests: Sequence[Path]) -> str:
    """A content hash of the split manifests: the exact data a model was trained and tested on."""
    digest = hashlib.sha256()
    for manifest in manifests:
        digest.update(manifest.name.encode())
        digest.update(manifest.read_bytes())
    return digest.hexdigest()[:16]


def log_run_context(params: Mapping[str, Any], root: Path, manifests: Sequence[Path]) -> None:
    """Flattened params plus the tags that make a run reproducible: code and data versions."""
    mlflow.log_params(flatten(params))
    mlflow.set_tags({"git_commit": git_commit(root), "data_version": data_version(manifests)})


def log_classifier(
    model: Any, example: np.ndarray, classes: Sequence[str], artifact_path: str = "model"
) -> None:
    """Log a Keras classifier with its signature, a real input example (for the registry) and
    its classes, in output order: the MLflow model's metadata `classes` (so the model carries
    them wherever it goes) and the run's tag `classes` (a JSON list, shown with the run).

    `mlflow.keras.log_model(..., input_example=...)` fails in MLflow 3.17 (mlflow/mlflow#16183:
    it writes the example before creating its folder), so the model is saved into a folder that
    exists and logged as the run's `model` artifact; `runs:/<id>/model` registers and loads.
    """
    import keras
    import tensorflow as tf

    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / artifact_path
        folder.mkdir()
        mlflow.keras.save_model(
            model,
            str(folder),
            signature=signature,
            input_example=example,
            metadata={"classes": list(classes)},
            # Listing them skips MLflow's 8-10 s requirement inference.
            pip_requirements=[f"tensorflow-cpu=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        mlflow.log_artifacts(str(folder), artifact_path)
    mlflow.set_tag("classes", json.dumps(list(classes)))
