"""The registry's MLflow calls: connecting, reading versions and aliases, one-line errors.

Aliases (MLflow 3 replaces stages with aliases):
    challenger  the newest registered version: every new version takes it when registered
    champion    the version in service: the BentoML service loads `models:/<name>@champion`

mlflow is imported inside the functions, so the gate and the model card load without it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from imgclf.io import redact
from imgclf.model.engines import ENGINE_TAG
from imgclf.registry.gate import Candidate

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
CLASSES_TAG = "classes"  # a version's class list, a JSON list in label order
ENGINE_ARTIFACTS = "engine"  # the run's artifact folder holding it


class RegistryError(Exception):
    """A problem the user can act on; the CLI prints it as one line."""


@contextmanager
def mlflow_errors() -> Iterator[None]:
    """Turn MLflow's exceptions (long, multi-line) into a one-line RegistryError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"MLflow: {str(exc.message).strip().splitlines()[0]}") from None


def connect(uri: str, timeout: float = 5.0) -> MlflowClient:
    """An MlflowClient for tracking and registry at `uri`.

    A server URI is probed first (GET /health): MLflow's own client retries a dead server for
    minutes before failing with a long traceback; this fails in `timeout` seconds with one line.
    """
    import urllib.error
    import urllib.request

    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
                pass
        except urllib.error.HTTPError:
            pass  # something answers (auth, proxy): let MLflow report the details
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(
                f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); start it, "
                f"or unset MLFLOW_TRACKING_URI to use params.yaml's mlflow.tracking_uri"
            ) from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def utc_now() -> str:
    """When a registry record is written: UTC, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


@contextmanager
def _missing_as(message: str) -> Iterator[None]:
    """A lookup of something that does not exist raises RegistryError(message)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if _is_missing(exc):
            raise RegistryError(message) from None
        raise


def get_run(client: MlflowClient, run_id: str) -> Run:
    with _missing_as(f"no MLflow run {run_id}: run train (and evaluate) first"):
        return client.get_run(run_id)


def registered_model(client: MlflowClient, name: str) -> RegisteredModel:
    with _missing_as(f"no registered model {name!r}"):
        return client.get_registered_model(name)


def model_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    with _missing_as(f"model {name!r} has no version {version}"):
        return client.get_model_version(name, str(version))


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create the registered model on first use."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if not _is_missing(exc):
            raise
        client.create_registered_model(
            name,
            description=f"Image classifier; `{CHAMPION}` is served. See imgclf/registry/.",
        )


def version_for_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The (first) version registered from `run_id`, if any."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version `champion` points at, or None."""
    version = registered_model(client, name).aliases.get(CHAMPION)
    return None if version is None else str(version)  # the SQL store answers an int


def aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    aliases = registered_model(client, name).aliases
    return sorted(alias for alias, v in aliases.items() if str(v) == str(version))


def test_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """A version's test_<metric>: its tag, else its run's metric."""
    key = f"test_{metric}"
    if key in version.tags:
        try:
            return float(version.tags[key])
        except ValueError:
            return None
    if version.run_id:
        return client.get_run(version.run_id).data.metrics.get(key)
    return None


def data_version_of(client: MlflowClient, version: ModelVersion) -> str | None:
    if "data_version" in version.tags:
        return version.tags["data_version"]
    if version.run_id:
        return client.get_run(version.run_id).data.tags.get("data_version")
    return None


def classes_of(version: ModelVersion) -> list[str] | None:
    """A version's class list (tag `classes`), or None where it has none (registered before the
    tag existed) or a hand-edited one that is no JSON list."""
    try:
        classes = json.loads(version.tags[CLASSES_TAG])
    except (KeyError, ValueError):
        return None
    return [str(name) for name in classes] if isinstance(classes, list) else None


def engine_artifact_of(version: ModelVersion) -> str | None:
    """The run artifact path of a version's exported engine, or None (registered before export
    existed: serve its Keras model)."""
    return version.tags.get(ENGINE_TAG)


def candidate_of(client: MlflowClient, version: ModelVersion, metric: str) -> Candidate:
    """What the gate needs to know about a registered version."""
    classes = classes_of(version)
    return Candidate(
        str(version.version),
        test_metric(client, version, metric),
        data_version_of(client, version),
        None if classes is None else tuple(classes),
    )
