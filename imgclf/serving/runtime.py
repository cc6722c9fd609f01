"""`ServingRuntime`: what one worker needs to answer: the model holder, the batcher, the
prediction log and the metrics. service.py starts one per worker; app.py's routes call it."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import operator
import threading
import time

import numpy as np
from starlette.concurrency import run_in_threadpool

from imgclf.model.decision import decide
from imgclf.monitoring.schema import PredictionRecord
from imgclf.serving.batcher import Batcher
from imgclf.serving.caller import Caller
from imgclf.serving.errors import ErrorCode, ServiceError
from imgclf.serving.holder import (
    ChampionHolder,
    LoadedModel,
    ModelNotReady,
    RegistryChampion,
    bound_registry_calls,
    load_bento_model,
)
from imgclf.serving.metrics import Periodic, ProcessSampler, service_metrics
from imgclf.serving.prediction_log import (
    ConflictingLabel,
    LabelledPrediction,
    OtherSubject,
    PredictionLog,
    UnknownPrediction,
)
from imgclf.serving.schemas import Feedback, Prediction
from imgclf.serving.settings import BENTO_MODEL_NAME, ServeSettings, bento_tag
from imgclf.serving.validation import Upload, UploadLimits, ValidatedImage, model_inputs

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
            bound_registry_calls(settings.registry_timeout_seconds)
            registry = RegistryChampion(
                settings.tracking_uri,
                settings.model_name,
                settings.alias,
                settings.fallback_classes,
            )
        self.holder = ChampionHolder(registry, settings.poll_seconds, on_swap=self._swapped)
        self.batcher = Batcher(settings.max_batch_size, on_batch=self.metrics.batch_size.observe)
        self.upload_limits = UploadLimits(
            settings.max_bytes, settings.max_pixels, settings.max_decoded_pixels
        )
        self.log = PredictionLog(
            settings.prediction_db_url, on_drop=lambda n: self.metrics.log_dropped.inc(n)
        )
        self._live_scores_lock = threading.Lock()
        self._recall_labels: set[str] = set()  # every class a recall series was exported for
        self.tickers = [
            Periodic(ProcessSampler(self.metrics).sample, _PROCESS_SAMPLE_SECONDS, "process"),
            # Other workers and hosts label predictions in the shared log too: re-read it.
            Periodic(self.refresh_live_scores, settings.poll_seconds, "live-scores"),
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
            model = load_bento_model(
                bento_tag() or f"{BENTO_MODEL_NAME}:latest", self.settings.fallback_classes
            )
            if model is None:
                self.holder.failed(f"no {BENTO_MODEL_NAME} model in this bento")
            else:
                self.holder.set(model)
        except Exception as exc:
            self.holder.failed("loading the packaged model failed", exc)

    def _swapped(self, model: LoadedModel) -> None:
        try:
            self.metrics.model_version.set(float(model.version))
        except ValueError:  # a bento of an unregistered model: serving, but no number
            self.metrics.model_version.set(-1)
        self.metrics.champion_test_accuracy.set(_gauge_value(model.test_accuracy))
        try:  # a restarted or newly promoted server picks up the feedback already logged
            self.refresh_live_scores()
        except Exception:
            logger.exception("live scores: reading the prediction log failed")

    @property
    def classes(self) -> tuple[str, ...] | None:
        """The served model's classes; None before a model is loaded."""
        model = self.holder.current
        return None if model is None else model.classes

    def refresh_live_scores(self) -> None:
        """Recompute live accuracy and per-class recall for the served version from the
        prediction log."""
        with self._live_scores_lock:  # one reader at a time: the last write is the newest
            model = self.holder.current
            if model is None:
                return
            scores = self.log.live_scores(model.version, self.settings.feedback_window)
            if self.holder.current is not model:  # swapped meanwhile: the swap refreshes
                return
            self.metrics.live_accuracy.set(_gauge_value(scores.accuracy))
            self.metrics.live_accuracy_samples.set(scores.count)
            # Multiprocess metrics cannot drop a series: a class the model lacks reads NaN.
            for label in self._recall_labels - set(model.classes):
                self.metrics.live_recall.labels(label=label).set(math.nan)
            for label in model.classes:
                self.metrics.live_recall.labels(label=label).set(_gauge_value(scores.recall(label)))
            self._recall_labels |= set(model.classes)

    def record_feedback(self, feedback: Feedback, caller: Caller) -> LabelledPrediction:
        """Store a true label, one of the served model's classes, beside its prediction and
        update the live scores. Only the subject that asked for the prediction may label it,
        or a caller with the `feedback:any` scope."""
        if not caller.labels_any and caller.subject is None:
            raise ServiceError(
                ErrorCode.FORBIDDEN, "a token without `sub` labels nothing without feedback:any"
            )
        classes = self.classes
        if classes is None:
            raise ServiceError(
                ErrorCode.NOT_READY, "no model loaded yet: its classes are the labels"
            )
        if feedback.label not in classes:
            raise ServiceError(
                ErrorCode.UNKNOWN_LABEL,
                f"label {feedback.label!r} is not one of {', '.join(classes)}",
            )
        try:
            labelled = self._record_label(feedback, None if caller.labels_any else caller.subject)
        except UnknownPrediction as exc:
            raise ServiceError(ErrorCode.UNKNOWN_PREDICTION, str(exc)) from exc
        except OtherSubject as exc:
            raise ServiceError(ErrorCode.FORBIDDEN, str(exc)) from exc
        except ConflictingLabel as exc:
            raise ServiceError(ErrorCode.CONFLICTING_LABEL, str(exc)) from exc
        if labelled.recorded:
            correct = str(labelled.correct).lower()
            self.metrics.feedback.labels(correct=correct, label=labelled.true_label).inc()
            try:  # the label is stored: a failed gauge update must not turn that into a 500
                self.refresh_live_scores()
            except Exception:
                logger.exception("live scores: reading the prediction log failed")
        return labelled

    def _record_label(self, feedback: Feedback, owner: str | None) -> LabelledPrediction:
        record = functools.partial(
            self.log.record_label, feedback.request_id, feedback.index, feedback.label, owner=owner
        )
        try:
            return record()
        except UnknownPrediction:  # maybe still queued: answered a moment ago, not yet written
            self.log.flush()
            return record()

    @property
    def ready(self) -> bool:
        return self.holder.current is not None

    @property
    def not_ready_reason(self) -> str | None:
        """Why no model is served (None: one is): for /readyz."""
        return None if self.ready else self.holder.not_ready_reason()

    def close(self) -> None:
        for ticker in self.tickers:
            ticker.stop()
        self.holder.stop()
        self.batcher.close()
        self.log.close()

    async def classify(
        self,
        uploads: list[Upload],
        request_id: str,
        started: float,
        top_k: int | None,
        subject: str | None = None,
    ) -> list[Prediction]:
        """Validate and decode the uploads for one snapshot of the model, then THE resize and
        a batched forward pass; count and log every answer (with the caller's `subject`).
        `top_k`: answer the k most probable classes."""
        try:
            model = self.holder.require()
        except ModelNotReady as exc:
            raise ServiceError(ErrorCode.NOT_READY, str(exc)) from exc
        if top_k is not None and top_k > len(model.classes):
            detail = f"top_k {top_k} > {len(model.classes)} classes ({', '.join(model.classes)})"
            raise ServiceError(ErrorCode.INVALID_TOP_K, detail)
        images, inputs = await run_in_threadpool(
            model_inputs, uploads, self.upload_limits, model.image_size
        )
        futures = self.batcher.submit_many(inputs, model)
        rows = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [
            self._answered(image, index, row, model, request_id, latency_ms, top_k, subject)
            for index, (image, row) in enumerate(zip(images, rows, strict=True))
        ]

    def _answered(
        self,
        image: ValidatedImage,
        index: int,
        row: np.ndarray,
        model: LoadedModel,
        request_id: str,
        latency_ms: float,
        top_k: int | None,
        subject: str | None,
    ) -> Prediction:
        decision = decide(row, model.classes, self.settings.threshold)
        by_class = dict(zip(model.classes, row.tolist(), strict=True))
        # Two classes: P(second class), as answered before the service knew K classes.
        probability = by_class[model.classes[1]] if len(model.classes) == 2 else None
        self.metrics.predictions.labels(label=decision.label, model_version=model.version).inc()
        self.metrics.confidence.labels(label=decision.label).observe(decision.confidence)
        self.log.log(
            PredictionRecord(
                request_id=request_id,
                item=index,
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                label=decision.label,
                probability=decision.confidence if probability is None else probability,
                model_version=model.version,
                latency_ms=latency_ms,
                confidence=decision.confidence,
                probabilities=by_class,
                subject=subject,
            )
        )
        return Prediction(
            label=decision.label,
            probability=probability,
            confidence=decision.confidence,
            probabilities=_most_probable(by_class, top_k),
            model_version=model.version,
            request_id=request_id,
        )


def _most_probable(by_class: dict[str, float], top_k: int | None) -> dict[str, float]:
    """Every class in the model's order, or the `top_k` most probable, most probable first
    (ties in the model's order: the sort is stable)."""
    if top_k is None:
        return by_class
    return dict(sorted(by_class.items(), key=operator.itemgetter(1), reverse=True)[:top_k])


def _gauge_value(share: float | None) -> float:
    """A share for a gauge: NaN for none (not 0, which would read as a real, bad score)."""
    return math.nan if share is None else share
