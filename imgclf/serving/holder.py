"""The served model: load the registry's `@champion` (or the bento's packaged copy), poll the
alias, and hot-swap to a newly promoted version (batching: batcher.py).

Swapping: the poller resolves the alias to a version number, loads `models:/<name>/<version>`
fully (weights, a traced forward function, one warm-up call) while the old model keeps serving,
then replaces one reference. A request takes a snapshot of that reference before preprocessing
and its forward pass runs on that snapshot, so in-flight requests finish on the model they
started with, and the version in every response is the version that computed it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    version: str  # registry version number (or "bento:<tag>" for an unregistered package)
    source: str  # the URI or path it came from
    image_size: int
    forward: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    test_accuracy: float | None = None  # as registered: the bar live accuracy is held to


class ModelNotReady(Exception):
    """No model is loaded yet (no champion in the registry, or it failed to load)."""


def build_loaded_model(
    model: Any, version: str, source: str, test_accuracy: float | None = None
) -> LoadedModel:
    """Trace one forward function with an open batch dimension and warm it up."""
    import tensorflow as tf

    from imgclf.model.inference import model_image_size

    size = model_image_size(model)
    traced = tf.function(
        lambda batch: model(batch, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
    )

    def forward(batch: np.ndarray) -> np.ndarray:
        return np.asarray(traced(tf.convert_to_tensor(batch, tf.float32))).reshape(-1)

    forward(np.zeros((1, size, size, 3), "float32"))  # trace + warm up before serving
    return LoadedModel(
        version=version,
        source=source,
        image_size=size,
        forward=forward,
        test_accuracy=test_accuracy,
    )


class RegistryChampion:
    """Resolves `name@alias` in the MLflow Model Registry and loads versions."""

    def __init__(self, tracking_uri: str, name: str, alias: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
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

        from imgclf.model.inference import load_model

        uri = f"models:/{self.name}/{version}"  # by number: the alias may move meanwhile
        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        return build_loaded_model(load_model(uri), version, uri, self.test_accuracy(version))

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


def load_bento_model(tag: str) -> LoadedModel | None:
    """The champion packaged in this bento (see bento_model.py), or None when absent."""
    import bentoml

    from imgclf.model.inference import load_mlflow_model

    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    model = load_mlflow_model(stored.path_of("mlflow_model"))
    labels = stored.info.labels
    version = labels.get("registered_version") or f"bento:{stored.tag.version}"
    accuracy = float(labels["test_accuracy"]) if "test_accuracy" in labels else None
    return build_loaded_model(model, str(version), f"bento:{stored.tag}", accuracy)


class ChampionHolder:
    """The current model (an atomically replaced reference) and the alias poller."""

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
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise ModelNotReady(self.last_error or "no model loaded yet")
        return model

    def set(self, model: LoadedModel) -> None:
        self._current = model  # one reference assignment: atomic under the GIL
        logger.info("serving model version %s (%s)", model.version, model.source)
        if self.on_swap is not None:
            self.on_swap(model)

    def refresh(self) -> bool:
        """Resolve the alias once; load and swap when it moved. True when swapped."""
        if self.registry is None:
            return False
        try:
            version = self.registry.resolve()
            current = self._current
            if version is None or (current is not None and current.version == version):
                self.last_error = None if version else "no model has the alias yet"
                return False
            self.set(self.registry.load(version))
            self.last_error = None
            return True
        except Exception as exc:  # keep serving the old model; try again next poll
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("champion refresh failed; still serving %s", self._current)
            return False

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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
