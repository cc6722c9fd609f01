"""The served model: load the registry's `@champion` (or the bento's packaged copy), poll the
alias, and hot-swap to a newly promoted version (batching: batcher.py).

Swapping: the poller resolves the alias to a version number, loads `models:/<name>/<version>`
fully (weights, classes, a traced forward function, one warm-up call) while the old model keeps
serving, then replaces one reference. A request takes a snapshot of that reference before
preprocessing and its forward pass runs on that snapshot, so in-flight requests finish on the
model they started with, and the version and classes in every response are those of the model
that computed it.

Classes come from the model, never from params.yaml: its MLflow model metadata `classes` (logged
by training), else its model-version tag `classes` (set at registration); only a model registered
before models carried them falls back to the settings' classes.

Outages: every registry call is bounded (`bound_registry_calls`) and never retried by MLflow, so
a poll fails fast and the next poll, `poll_seconds` later, is the retry: a registry back up is
used within one interval. The holder keeps the current `Problem` (what fails, since when, the
latest error), which /readyz and every 503 answer; the log gets one line when a problem starts or
changes, and one when it is over, not one per poll. Stopping never waits for a poll in progress.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from imgclf.model.decision import class_probabilities

logger = logging.getLogger(__name__)

CLASSES_KEY = "classes"  # the MLflow model metadata key, model-version tag and bento metadata key
# user:password@ in a URL: problems are told on the open /readyz, never with credentials
_URL_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]+@")


@dataclass(frozen=True)
class LoadedModel:
    version: str  # registry version number (or "bento:<tag>" for an unregistered package)
    source: str  # the URI or path it came from
    image_size: int
    classes: tuple[str, ...]  # in the order of the model's probabilities
    # (n, S, S, 3) images -> (n, K) class probabilities (float64)
    forward: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    test_accuracy: float | None = None  # as registered: the bar live accuracy is held to


class ModelNotReady(Exception):
    """No model is loaded yet (no champion in the registry, or it failed to load)."""


@dataclass(frozen=True)
class Problem:
    """Why no model (or not the newest) is served: what fails, since when, its latest error."""

    what: str
    since: dt.datetime
    error: str | None = None
    started: float = field(default_factory=time.monotonic, compare=False, repr=False)

    def __str__(self) -> str:
        text = f"{self.what} since {self.since:%Y-%m-%dT%H:%M:%SZ}"
        return f"{text} ({self.error})" if self.error else text


def bound_registry_calls(timeout_seconds: int) -> None:
    """Bound every MLflow HTTP call of this process: at most `timeout_seconds` to connect and
    between reads, and no retries (MLflow's default retries 7 times with backoff, minutes on a
    registry that is down). MlflowClient has no per-client setting: MLflow's REST layer reads
    these variables on every call; when the deployment sets them itself, its values stand."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def model_classes(
    metadata: Mapping[str, Any] | None,
    tags: Mapping[str, str],
    fallback: Sequence[str] | None,
    source: str,
) -> tuple[str, ...]:
    """The classes `source` carries: its metadata `classes` (a list), else its tag `classes` (a
    JSON list), else `fallback`, for a model registered before models carried them."""
    if metadata and CLASSES_KEY in metadata:
        declared = metadata[CLASSES_KEY]
    elif CLASSES_KEY in tags:
        declared = json.loads(tags[CLASSES_KEY])
    elif fallback is not None:
        declared = fallback
    else:
        raise ValueError(
            f"{source} carries no class list (metadata or tag `{CLASSES_KEY}`) and the settings "
            "name none to fall back on (download.classes)"
        )
    names = list(declared) if isinstance(declared, list | tuple) else []
    if len(names) < 2 or len(set(names)) < len(names) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: classes {declared!r} are not two or more distinct names")
    return tuple(names)


def build_loaded_model(
    model: Any,
    version: str,
    source: str,
    classes: Sequence[str],
    test_accuracy: float | None = None,
) -> LoadedModel:
    """Check the model's output against its classes and warm up its forward pass. `model` is the
    version's exported engine, or a Keras model (one compiled graph with an open batch
    dimension) for a version registered before engines were exported."""
    from imgclf.model.inference import as_engine

    engine = as_engine(model)
    columns = max(engine.outputs, 2)  # a sigmoid head's one column: two classes
    if columns != len(classes):
        raise ValueError(f"{source} gives {columns} probabilities for the classes {classes}")

    def forward(batch: np.ndarray) -> np.ndarray:
        # float64 before 1 - p: a sigmoid's two columns then sum to 1 as exactly as they can
        return class_probabilities(np.asarray(engine(batch), dtype=np.float64))

    size = engine.image_size
    forward(np.zeros((1, size, size, 3), "float32"))  # trace + warm up before serving
    return LoadedModel(
        version=version,
        source=source,
        image_size=size,
        classes=tuple(classes),
        forward=forward,
        test_accuracy=test_accuracy,
    )


class RegistryChampion:
    """Resolves `name@alias` in the MLflow Model Registry and loads versions; `fallback_classes`
    are the classes of a version that carries none."""

    def __init__(
        self,
        tracking_uri: str,
        name: str,
        alias: str,
        fallback_classes: Sequence[str] | None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self.fallback_classes = fallback_classes
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def resolve(self) -> str | None:
        """The version the alias points at now, or None when there is none (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc):
                return None
            raise

    def load(self, version: str) -> LoadedModel:
        import mlflow

        uri = self.uri(version)
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        classes = self.classes(version)
        return build_loaded_model(
            self.model(version), version, uri, classes, self.test_accuracy(version)
        )

    def model(self, version: str) -> Any:
        """The version's exported engine (tag `engine`), or its Keras model when it has none."""
        from imgclf.model.engines import load_engine
        from imgclf.model.inference import load_model

        # The engine reads its file while loading (LiteRT maps it, and a mapping outlives the
        # unlinked file), so the download need not outlive this call.
        with tempfile.TemporaryDirectory(prefix="imgclf-engine-") as scratch:
            path = self.engine_file(version, Path(scratch))
            return load_model(self.uri(version)) if path is None else load_engine(path)

    def engine_file(self, version: str, folder: Path) -> Path | None:
        """The version's exported engine downloaded as `folder`/<its file name>, or None for a
        version registered before engines were exported (its Keras model answers)."""
        from imgclf.registry.client import engine_artifact_of

        registered = self.client.get_model_version(self.name, version)
        artifact = engine_artifact_of(registered)
        if artifact is None:
            return None
        with tempfile.TemporaryDirectory(prefix="imgclf-engine-") as scratch:
            downloaded = self.client.download_artifacts(registered.run_id, artifact, scratch)
            return Path(shutil.move(downloaded, folder / PurePosixPath(artifact).name))

    def uri(self, version: str) -> str:
        return f"models:/{self.name}/{version}"  # by number: the alias may move meanwhile

    def classes(self, version: str) -> tuple[str, ...]:
        """The version's classes (`model_classes`); MLflow's URIs must point at the registry."""
        import mlflow

        uri = self.uri(version)
        metadata = mlflow.models.get_model_info(uri).metadata  # reads the MLmodel file only
        tags = self.client.get_model_version(self.name, version).tags
        return model_classes(metadata, tags, self.fallback_classes, uri)

    def test_accuracy(self, version: str) -> float | None:
        """The version's registered test accuracy; None (not a failed load) when unreadable:
        it only feeds the live-accuracy alarm's bar."""
        from imgclf.registry.client import test_metric

        try:
            registered = self.client.get_model_version(self.name, version)
            return test_metric(self.client, registered, "accuracy")
        except Exception:
            logger.warning("no test accuracy for %s version %s", self.name, version, exc_info=True)
            return None


def load_bento_model(tag: str, fallback_classes: Sequence[str] | None) -> LoadedModel | None:
    """The champion packaged in this bento (see bento_model.py), or None when absent: its
    exported engine when it carries one (as registry mode serves), else its Keras model. Its
    classes are in the bento model's metadata (`fallback_classes` for a bento built before)."""
    import bentoml

    from imgclf.model.engines import load_engine
    from imgclf.model.inference import load_mlflow_model
    from imgclf.serving.bento_model import ENGINE_KEY, MLFLOW_MODEL_FOLDER

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    source = f"bento:{stored.tag}"
    engine = stored.info.metadata.get(ENGINE_KEY)
    if engine is None:  # packaged before engines were exported, or from a version without one
        model = load_mlflow_model(stored.path_of(MLFLOW_MODEL_FOLDER))
    else:
        model = load_engine(Path(stored.path_of(engine)))
        source = f"{source}/{engine}"  # the log line and errors name the file that answers
    labels = stored.info.labels
    version = labels.get("registered_version") or f"bento:{stored.tag.version}"
    accuracy = float(labels["test_accuracy"]) if "test_accuracy" in labels else None
    classes = model_classes(stored.info.metadata, {}, fallback_classes, source)
    return build_loaded_model(model, str(version), source, classes, accuracy)


class ChampionHolder:
    """The current model (an atomically replaced reference), the alias poller and the current
    `Problem`."""

    def __init__(
        self,
        registry: RegistryChampion | None,
        poll_seconds: float,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.registry = registry
        self.poll_seconds = poll_seconds
        self.on_swap = on_swap
        self._current: LoadedModel | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.problem: Problem | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def not_ready_reason(self) -> str:
        return str(self.problem) if self.problem else "no model loaded yet"

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady(self.not_ready_reason())
        return model

    def set(self, model: LoadedModel) -> None:
        self._current = model  # one reference assignment: atomic under the GIL
        logger.info("serving model version %s (%s)", model.version, model.source)
        if self.on_swap is not None:
            self.on_swap(model)

    def failed(self, what: str, exc: BaseException | None = None) -> None:
        """Record a problem. A new one (another `what`) ends the previous one and is logged
        once, with the traceback unless it is a registry that cannot be reached; the same one
        again only updates its latest error."""
        what = _URL_CREDENTIALS.sub("***@", what)
        error = (
            None if exc is None else _URL_CREDENTIALS.sub("***@", f"{type(exc).__name__}: {exc}")
        )
        if self.problem is not None and self.problem.what == what:
            self.problem = replace(self.problem, error=error)
            return
        self._recovered()
        self.problem = Problem(what, dt.datetime.now(dt.UTC), error)
        serving = self._current.version if self._current else "none"
        level = logging.WARNING if exc is None else logging.ERROR
        trace = exc if exc is not None and not _unreachable(exc) else None
        logger.log(level, "%s; serving version %s", self.problem, serving, exc_info=trace)

    def _recovered(self) -> None:
        if self.problem is not None:
            seconds = time.monotonic() - self.problem.started
            logger.info("%s: over after %.0f s", self.problem.what, seconds)
            self.problem = None

    def refresh(self) -> bool:
        """Resolve the alias once; load and swap when it moved. True when swapped."""
        registry = self.registry
        if registry is None:
            return False
        try:
            version = registry.resolve()
        except Exception as exc:  # keep serving the old model; the next poll tries again
            state = "unreachable" if _unreachable(exc) else "failing"
            self.failed(f"registry {registry.tracking_uri} {state}", exc)
            return False
        if version is None:
            self.failed(f"no version of {registry.name} has the alias {registry.alias} yet")
            return False
        current = self._current
        if current is None or current.version != version:
            try:
                model = registry.load(version)
            except Exception as exc:
                self.failed(f"loading {registry.name} version {version} failed", exc)
                return False
            if self._stop.is_set():  # stopped meanwhile: never swap in after close
                return False
            self.set(model)
        self._recovered()
        return current is not self._current

    def start_polling(self) -> None:
        if self.registry is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll, name="champion-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:  # the heavy imports, before any champion exists: a promotion then loads fast
            import mlflow.keras  # noqa: F401
            import tensorflow  # noqa: F401
        except Exception:
            logger.exception("pre-import failed")
        self.refresh()
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def stop(self) -> None:
        """Stop polling, without waiting for a poll in progress (a daemon thread: it ends at its
        next look at the stop flag, and never swaps after it)."""
        self._stop.set()


def _unreachable(exc: BaseException) -> bool:
    """A connection that failed or timed out. MLflow raises its own exception for it, with
    requests' error as the cause or the context it was raised in."""
    import requests

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, requests.ConnectionError | requests.Timeout):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
