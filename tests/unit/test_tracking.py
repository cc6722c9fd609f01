"""Where runs go: the configured store, a server by env var, the real repo for queued exps; a
logged classifier carries its classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf.config import MlflowParams
from imgclf.tracking import flatten, log_classifier, open_run, tracking_uri


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)


def test_relative_sqlite_store_is_anchored_at_the_project_root(tmp_path: Path) -> None:
    assert tracking_uri(MlflowParams(), tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_queued_experiments_log_into_the_real_repo(tmp_path: Path, monkeypatch) -> None:
    """`dvc exp run --queue` runs stages in a scratch copy; DVC_ROOT names the real repo."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    scratch = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert tracking_uri(MlflowParams(), scratch) == f"sqlite:///{tmp_path}/repo/mlflow.db"


def test_environment_names_a_server(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(MlflowParams(), tmp_path) == "http://127.0.0.1:5000"


def test_params_are_flattened_with_dotted_names() -> None:
    nested = {"train": {"lr": 1e-3, "augment": {"flip": True}}, "split": {"seed": 42}}
    assert flatten(nested) == {"train.lr": 1e-3, "train.augment.flip": True, "split.seed": 42}


def test_logged_classifier_carries_its_classes(tmp_path: Path) -> None:
    """In the MLflow model's metadata (wherever the model goes) and as the run's tag."""
    import keras
    import mlflow
    import numpy as np

    classes = ["cat", "dog", "fox"]
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)]
    )
    params = MlflowParams(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_location="mlartifacts"
    )
    with open_run(params, tmp_path) as run:
        log_classifier(model, np.zeros((1, 8, 8, 3), "float32"), classes)

    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.metadata == {"classes": classes}
    assert json.loads(mlflow.get_run(run.info.run_id).data.tags["classes"]) == classes
