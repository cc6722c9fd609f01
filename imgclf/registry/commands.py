"""What the `register` stage and the `imgclf` registry verbs run: one call per command, from the
project's paths and params to a result; every MLflow failure arrives as a one-line RegistryError.

The registry is MLflow's: params.yaml's mlflow.tracking_uri, or $MLFLOW_TRACKING_URI (a server).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.config import MlflowParams, Params, Paths, RegisterParams
from imgclf.io import read_json, write_json
from imgclf.registry import history
from imgclf.registry.client import RegistryError, connect, mlflow_errors
from imgclf.registry.gate import engine_problem
from imgclf.registry.registration import register_run

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def _client(paths: Paths, params: MlflowParams) -> MlflowClient:
    from imgclf.tracking import tracking_uri

    return connect(tracking_uri(params, paths.root))


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def run_register(
    paths: Paths, params: RegisterParams, classes: Sequence[str], mlflow_params: MlflowParams
) -> dict[str, Any]:
    """Register train's run (artifacts/train/mlflow_run.json) with its exported engine, run the
    gate, write reports/register.json; returns that report. An engine that disagrees with Keras
    (reports/export.json), or a reduced-precision one that loses more than export.max_metric_drop
    of the test metric, is refused: nothing is registered."""
    if not paths.mlflow_run.is_file():
        raise RegistryError(f"{paths.mlflow_run} missing: run train and evaluate first")
    if not paths.export_report.is_file():
        raise RegistryError(f"{paths.export_report} missing: run the export stage first")
    export = read_json(paths.export_report)
    metrics = _optional_json(paths.metrics)
    if problem := engine_problem(export, metrics, params):
        raise RegistryError(f"not registered: {problem}")
    with mlflow_errors():
        report = register_run(
            _client(paths, mlflow_params),
            read_json(paths.mlflow_run)["run_id"],
            params,
            metrics=metrics,
            split_counts=_optional_json(paths.split_report),
            classes=classes,
            engine=(paths.export_dir / export["file"], export),
        )
    write_json(paths.register_report, report)
    return report


def run_promote(paths: Paths, params: Params, version: int, reason: str = "") -> dict[str, Any]:
    """Point `champion` at `version` by hand; {"version", "previous", "event", "note"}."""
    with mlflow_errors():
        return history.promote(
            _client(paths, params.mlflow), params.register.model_name, version, reason
        )


def run_rollback(paths: Paths, params: Params, reason: str = "") -> dict[str, Any]:
    """Return `champion` to the version it replaced; {"version", "previous", "event", "note"}."""
    with mlflow_errors():
        return history.rollback(_client(paths, params.mlflow), params.register.model_name, reason)


def run_history(paths: Paths, params: Params) -> list[dict[str, Any]]:
    """Every recorded move of `champion`, oldest first."""
    with mlflow_errors():
        return history.champion_history(_client(paths, params.mlflow), params.register.model_name)
