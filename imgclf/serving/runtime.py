"""`ServingRuntime`: what one worker needs to answer: the model holder, the batcher, the
prediction log and the metrics. service.py starts one per worker; app.py's routes call it."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgclf.model.decision import class_probabilities, decide
from imgclf.monitoring.schema import PredictionRecord
from imgclf.serving.batcher import Batcher
from imgclf.serving.errors import ErrorCode, ServiceError
from imgclf.serving.holder import (
    ChampionHolder,
    LoadedModel,
    ModelNotReady,
    RegistryChampion,
    load_bento_model,
)
from imgclf.serving.metrics import Periodic, ProcessSampler, service_metrics
from imgclf.serving.prediction_log import (
    ConflictingLabel,
    LabelledPrediction,
    PredictionLog,
    UnknownPrediction,
)
from imgclf.serving.schemas import Feedback, Prediction
from imgclf.serving.settings import BENTO_MODEL_NAME, ServeSettings, bento_tag
from imgclf.serving.validation import ValidatedImage

logger = logging.getLogger(__name__)
_PROCESS_SAMPLE_SECONDS = 5.0


class ServingRuntime:
    """`start()` returns at once (the model loads in the background and `ready` turns True when
    it is in); `close()` flushes the prediction log."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = service_metrics()
        registry = None
        if settings.model_source == "registry":
            registry = RegistryChampion(settings.tracking_uri, settings.model_name, settings.alias)
        self.holder = ChampionHolder(registry, settings.poll_seconds, on_swap=self._swapped)
        self.batcher = Batcher(settings.max_batch_size, on_batch=self.metrics.batch_size.observe)
        self.log = PredictionLog(
            settings.prediction_db_url, on_drop=lambda n: self.metrics.log_dropped.inc(n)
        )
        self._live_accuracy_lock = threading.Lock()
        self.tickers = [
            Periodic(ProcessSampler(self.metrics).sample, _PROCESS_SAMPLE_SECONDS, "process"),
            # Other workers and hosts label predictions in the shared log too: re-read it.
            Periodic(self.refresh_live_accuracy, settings.poll_seconds, "live-accuracy"),
        ]

    def start(self) -> None:
        for ticker in self.tickers:
            ticker.start()
        if self.settings.model_source == "bento":
            threading.Thread(target=self._load_bento, name="bento-model", daemon=True).start()
        else:
            self.holder.start_polling()

    def _load_bento(self) -> None:
        try:
            model = load_bento_model(bento_tag() or f"{BENTO_MODEL_NAME}:latest")
            if model is None:
                self.holder.last_error = f"no {BENTO_MODEL_NAME} model in this bento"
            else:
                self.holder.set(model)
        except Exception as exc:
            self.holder.last_error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the packaged model failed")

    def _swapped(self, model: LoadedModel) -> None:
        try:
            self.metrics.model_version.set(float(model.version))
        except ValueError:  # a bento of an unregistered model: serving, but no number
            self.metrics.model_version.set(-1)
        accuracy = model.test_accuracy
        self.metrics.champion_test_accuracy.set(math.nan if accuracy is None else accuracy)
        try:  # a restarted or newly promoted server picks up the feedback already logged
            self.refresh_live_accuracy()
        except Exception:
            logger.exception("live accuracy: reading the prediction log failed")

    def refresh_live_accuracy(self) -> None:
        """Recompute the live-accuracy gauges for the served version from the prediction log."""
        with self._live_accuracy_lock:  # one reader at a time: the last write is the newest
            model = self.holder.current
            if model is None:
                return
            window = self.settings.feedback_window
            accuracy, count = self.log.live_accuracy(model.version, window)
            if self.holder.current is not model:  # swapped meanwhile: the swap refreshes
                return
            self.metrics.live_accuracy.set(math.nan if accuracy is None else accuracy)
            self.metrics.live_accuracy_samples.set(count)

    def record_feedback(self, feedback: Feedback) -> LabelledPrediction:
        """Store a true label beside its prediction and update the live-accuracy metrics."""
        if feedback.label not in self.settings.classes:
            classes = ", ".join(self.settings.classes)
            raise ServiceError(
                ErrorCode.UNKNOWN_LABEL, f"label {feedback.label!r} is not one of {classes}"
            )
        try:
            labelled = self._record_label(feedback)
        except UnknownPrediction as exc:
            raise ServiceError(ErrorCode.UNKNOWN_PREDICTION, str(exc)) from exc
        except ConflictingLabel as exc:
            raise ServiceError(ErrorCode.CONFLICTING_LABEL, str(exc)) from exc
        if labelled.recorded:
            self.metrics.feedback.labels(correct=str(labelled.correct).lower()).inc()
            try:  # the label is stored: a failed gauge update must not turn that into a 500
                self.refresh_live_accuracy()
            except Exception:
                logger.exception("live accuracy: reading the prediction log failed")
        return labelled

    def _record_label(self, feedback: Feedback) -> LabelledPrediction:
        record = functools.partial(
            self.log.record_label, feedback.request_id, feedback.index, feedback.label
        )
        try:
            return record()
        except UnknownPrediction:  # maybe still queued: answered a moment ago, not yet written
            self.log.flush()
            return record()

    @property
    def ready(self) -> bool:
        return self.holder.current is not None

    def close(self) -> None:
        for ticker in self.tickers:
            ticker.stop()
        self.holder.stop()
        self.batcher.close()
        self.log.close()

    async def classify(
        self, images: list[ValidatedImage], request_id: str, started: float
    ) -> list[Prediction]:
        """Preprocess (THE preprocessing) and batch-predict validated images on one snapshot of
        the model; count and log every answer."""
        try:
            model = self.holder.require()
        except ModelNotReady as exc:
            raise ServiceError(ErrorCode.NOT_READY, str(exc)) from exc
        inputs = await run_in_threadpool(_preprocess, [i.model_bytes for i in images], model)
        futures = self.batcher.submit_many(inputs, model)
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [
            self._answered(image, index, probability, version, request_id, latency_ms)
            for index, (image, (probability, version)) in enumerate(
                zip(images, results, strict=True)
            )
        ]

    def _answered(
        self,
        image: ValidatedImage,
        index: int,
        probability: float,
        version: str,
        request_id: str,
        latency_ms: float,
    ) -> Prediction:
        decision = decide(
            class_probabilities([probability])[0], self.settings.classes, self.settings.threshold
        )
        self.metrics.predictions.labels(label=decision.label, model_version=version).inc()
        self.metrics.confidence.labels(label=decision.label).observe(decision.confidence)
        self.log.log(
            PredictionRecord(
                request_id=request_id,
                item=index,
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                label=decision.label,
                probability=probability,
                model_version=version,
                latency_ms=latency_ms,
            )
        )
        return Prediction(
            label=decision.label,
            probability=probability,
            confidence=decision.confidence,
            model_version=version,
            request_id=request_id,
        )


def _preprocess(encoded: list[bytes], model: LoadedModel) -> list[np.ndarray]:
    """The model inputs; an image TensorFlow cannot decode (though Pillow could) is `corrupt`,
    named by its position."""
    import tensorflow as tf

    preprocess = _traced_preprocess(model.image_size)
    inputs = []
    for index, data in enumerate(encoded):
        try:
            inputs.append(preprocess(tf.constant(data)).numpy())
        except tf.errors.InvalidArgumentError as exc:
            raise ServiceError(ErrorCode.CORRUPT, "the image cannot be decoded", index) from exc
    return inputs


@functools.cache
def _traced_preprocess(image_size: int) -> Callable[[Any], Any]:
    """THE preprocessing (imgclf.model.preprocess.preprocess_bytes, unchanged) as one graph, traced
    once per image size for a scalar string: eager op-by-op dispatch costs more per image."""
    import tensorflow as tf

    from imgclf.model.preprocess import preprocess_bytes

    def preprocess(data: tf.Tensor) -> tf.Tensor:
        return preprocess_bytes(data, image_size)

    return tf.function(preprocess, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
