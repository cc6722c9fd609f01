"""The classification endpoints (a Starlette app that service.py mounts on the BentoML service)
and `ServingRuntime`, which owns the model holder, the batcher and the prediction log.

POST /predict        one image: multipart field `image` (any single file field), or the raw
                     bytes with Content-Type image/jpeg|png|webp|bmp
                     -> {label, probability, confidence, model_version, request_id}
POST /predict_batch  multipart, one or more file fields (`images`), at most
                     serve.max_images_per_request -> [{index, label, ..., request_id}, ...]
POST /feedback       JSON {request_id, label[, index]}: the true label of a logged prediction
                     -> {request_id, index, label, predicted, correct, model_version, recorded};
                     feeds imgclf_live_accuracy (the served version's last N labelled answers)
GET /openapi.json    the OpenAPI 3 document of all this (imgclf/serving/openapi.py)
Errors are JSON {error, detail, request_id[, index]} with a 4xx status (503 while no model is
loaded); openapi.py lists every code.

The routes are plain Starlette rather than `@bentoml.api` methods so that the body is read under
a byte limit before anything parses it, every bad upload gets its own status and message, and
BentoML's multipart parser (which fetches a URL given in a file field) is never involved.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from imgclf.serving.holder import (
    Batcher,
    ChampionHolder,
    LoadedModel,
    ModelNotReady,
    RegistryChampion,
    load_bento_model,
)
from imgclf.serving.metrics import Periodic, ProcessSampler
from imgclf.serving.openapi import SPEC_PATH, spec_for
from imgclf.serving.prediction_log import (
    ConflictingLabel,
    LabelledPrediction,
    PredictionLog,
    PredictionRecord,
    UnknownPrediction,
)
from imgclf.serving.settings import BENTO_MODEL_NAME, ServeSettings, bento_tag, load_settings
from imgclf.serving.validation import InvalidImage, Rejected, ValidatedImage, check_content_type

logger = logging.getLogger(__name__)
_MULTIPART_OVERHEAD = 64 * 1024
_MAX_FEEDBACK_BYTES = 4096
_PROCESS_SAMPLE_SECONDS = 5.0


class FeedbackRequest(BaseModel):
    """POST /feedback body: the true label of one logged prediction."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern="^[0-9a-f]{32}$")  # as answered by /predict(_batch)
    label: str  # one of the classes
    index: int = Field(default=0, ge=0, lt=2**31)  # position in a /predict_batch request


class ServingRuntime:
    """Everything a worker needs to answer; `start()` returns at once (the model loads in the
    background and `ready` turns True when it is in), `close()` flushes the prediction log."""

    def __init__(self, settings: ServeSettings) -> None:
        from imgclf.serving.metrics import service_metrics

        self.settings = settings
        self.metrics = service_metrics()
        registry = None
        if settings.model_source == "registry":
            registry = RegistryChampion(settings.tracking_uri, settings.model_name, settings.alias)
        self.holder = ChampionHolder(registry, settings.poll_seconds, on_swap=self._swapped)
        self.batcher = Batcher(
            settings.max_batch_size,
            settings.max_latency_ms,
            on_batch=self.metrics.batch_size.observe,
        )
        self.log = PredictionLog(
            settings.prediction_db_url, on_drop=lambda n: self.metrics.log_dropped.inc(n)
        )
        self._live_accuracy_lock = threading.Lock()
        self.tickers = [
            Periodic(ProcessSampler(self.metrics).sample, _PROCESS_SAMPLE_SECONDS, "process"),
            # Other workers and hosts label predictions in the shared log too: re-read it.
            Periodic(self.refresh_live_accuracy, settings.poll_seconds, "live-accuracy"),
        ]

    @classmethod
    def from_env(cls) -> ServingRuntime:
        return cls(load_settings())

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

    def record_feedback(self, feedback: FeedbackRequest) -> LabelledPrediction:
        """Store a true label beside its prediction and update the live-accuracy metrics."""
        if feedback.label not in self.settings.classes:
            classes = ", ".join(self.settings.classes)
            raise Rejected(
                422, "unknown_label", f"label {feedback.label!r} is not one of {classes}"
            )
        record = functools.partial(
            self.log.record_label, feedback.request_id, feedback.index, feedback.label
        )
        try:
            labelled = record()
        except UnknownPrediction:  # maybe still queued: answered a moment ago, not yet written
            self.log.flush()
            labelled = record()
        if labelled.recorded:
            self.metrics.feedback.labels(correct=str(labelled.correct).lower()).inc()
            try:  # the label is stored: a failed gauge update must not turn that into a 500
                self.refresh_live_accuracy()
            except Exception:
                logger.exception("live accuracy: reading the prediction log failed")
        return labelled

    @property
    def ready(self) -> bool:
        return self.holder.current is not None

    def close(self) -> None:
        for ticker in self.tickers:
            ticker.stop()
        self.holder.stop()
        self.batcher.close()
        self.log.close()

    # ---------------------------------------------------------------------------------------

    async def classify(
        self, images: list[ValidatedImage], request_id: str, started: float
    ) -> list[dict[str, Any]]:
        """Preprocess (THE preprocessing) and batch-predict validated images on one snapshot."""
        model = self.holder.require()
        self.batcher.expect(len(images))  # the batcher waits for these rather than leave
        inputs: list[np.ndarray] = []
        try:
            inputs = await run_in_threadpool(_preprocess, [i.model_bytes for i in images], model)
        finally:
            futures = self.batcher.submit_many(inputs, model, announced=len(images))
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        latency_ms = (time.perf_counter() - started) * 1000.0
        classes, threshold = self.settings.classes, self.settings.threshold
        answers = []
        for index, (image, (probability, version)) in enumerate(zip(images, results, strict=True)):
            label = classes[1] if probability >= threshold else classes[0]
            confidence = max(probability, 1.0 - probability)
            answers.append(
                {
                    "label": label,
                    "probability": probability,
                    "confidence": confidence,
                    "model_version": version,
                    "request_id": request_id,
                }
            )
            self.metrics.predictions.labels(label=label, model_version=version).inc()
            self.metrics.confidence.labels(label=label).observe(confidence)
            self.log.log(
                PredictionRecord(
                    request_id=request_id,
                    item=index,
                    sha256=image.sha256,
                    width=image.width,
                    height=image.height,
                    label=label,
                    probability=probability,
                    model_version=version,
                    latency_ms=latency_ms,
                )
            )
        return answers


def _preprocess(encoded: list[bytes], model: LoadedModel) -> list[np.ndarray]:
    import tensorflow as tf

    preprocess = _traced_preprocess(model.image_size)
    try:
        return [preprocess(tf.constant(b)).numpy() for b in encoded]
    except tf.errors.InvalidArgumentError as exc:
        raise InvalidImage(422, "corrupt", "the image cannot be decoded") from exc


@functools.cache
def _traced_preprocess(image_size: int) -> Callable[[Any], Any]:
    """THE preprocessing (imgclf.model.preprocess.preprocess_bytes, unchanged) as one graph, traced
    once per image size for a scalar string: eager op-by-op dispatch costs more per image."""
    import tensorflow as tf

    from imgclf.model.preprocess import preprocess_bytes

    def preprocess(data: tf.Tensor) -> tf.Tensor:
        return preprocess_bytes(data, image_size)

    return tf.function(preprocess, input_signature=[tf.TensorSpec([], tf.string)], autograph=False)


# -------------------------------------------------------------------------------------------
# HTTP
# -------------------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidImage(413, "too_many_bytes", f"request body {declared} bytes > limit {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidImage(413, "too_many_bytes", f"request body over the limit of {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(request: Request, settings: ServeSettings, max_count: int) -> list[tuple]:
    """[(bytes, declared content type)] from a multipart form or a raw image body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        limit = max_count * (settings.max_bytes + _MULTIPART_OVERHEAD)
        body = await _read_body(request, limit)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=max_count + 1, max_fields=max_count + 8
            )
        except HTTPException as exc:
            raise InvalidImage(400, "bad_multipart", str(exc.detail)) from exc
        except Exception as exc:
            raise InvalidImage(400, "bad_multipart", f"cannot parse the form: {exc}") from exc
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise InvalidImage(400, "no_file", "the form holds no file field (e.g. `image`)")
        if len(files) > max_count:
            raise InvalidImage(
                413, "too_many_images", f"{len(files)} images > limit of {max_count} per request"
            )
        uploads = [(await f.read(), f.content_type) for f in files]
        await form.close()
        return uploads
    if max_count == 1 and (media.startswith("image/") or media == "application/octet-stream"):
        check_content_type(media)
        return [(await _read_body(request, settings.max_bytes), media)]
    raise InvalidImage(
        415,
        "unsupported_media_type",
        f"content type {media or 'none'!r}: send multipart/form-data"
        + (" or a raw image body" if max_count == 1 else ""),
    )


def _respond(
    runtime: ServingRuntime,
    endpoint: str,
    started: float,
    request_id: str,
    status: int,
    payload: Any,
) -> JSONResponse:
    """Count and time the request, then answer; error bodies carry the request id."""
    if status != 200:
        payload = {**payload, "request_id": request_id}
    runtime.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
    runtime.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
    return JSONResponse(payload, status_code=status, headers={"X-Request-ID": request_id})


async def _feedback(request: Request) -> FeedbackRequest:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Rejected(415, "unsupported_media_type", "send the feedback as application/json")
    body = await _read_body(request, _MAX_FEEDBACK_BYTES)
    try:
        return FeedbackRequest.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise Rejected(422, "invalid_feedback", problems) from exc


def build_app(get_runtime: Callable[[], ServingRuntime]) -> Starlette:
    """The /predict, /predict_batch, /feedback and /openapi.json routes over whatever runtime
    `get_runtime` returns (the interface is described in openapi.py)."""
    from imgclf.serving.validation import validate_image

    async def handle(request: Request, endpoint: str, batch: bool) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        runtime = get_runtime()
        settings = runtime.settings
        index = None
        try:
            max_count = settings.max_images_per_request if batch else 1
            uploads = await _uploads(request, settings, max_count)
            images = []
            for index, (data, content_type) in enumerate(uploads):  # noqa: B007
                images.append(
                    await run_in_threadpool(
                        validate_image,
                        data,
                        max_bytes=settings.max_bytes,
                        max_pixels=settings.max_pixels,
                        content_type=content_type,
                    )
                )
            index = None
            answers = await runtime.classify(images, request_id, started)
            if batch:
                payload: Any = [{"index": i, **a} for i, a in enumerate(answers)]
            else:
                payload = answers[0]
            status = 200
        except InvalidImage as exc:
            status = exc.status
            payload = exc.to_json() | ({"index": index} if batch and index is not None else {})
        except ModelNotReady as exc:
            status, payload = 503, {"error": "not_ready", "detail": str(exc)}
        except Exception:
            logger.exception("request %s failed", request_id)
            status, payload = 500, {"error": "internal", "detail": "see the server log"}
        return _respond(runtime, endpoint, started, request_id, status, payload)

    async def predict(request: Request) -> JSONResponse:
        return await handle(request, "predict", batch=False)

    async def predict_batch(request: Request) -> JSONResponse:
        return await handle(request, "predict_batch", batch=True)

    async def feedback(request: Request) -> JSONResponse:
        started = time.perf_counter()
        request_id = uuid.uuid4().hex
        runtime = get_runtime()
        try:
            labelled = await run_in_threadpool(runtime.record_feedback, await _feedback(request))
            status, payload = (
                200,
                {
                    "request_id": labelled.request_id,
                    "index": labelled.item,
                    "label": labelled.true_label,
                    "predicted": labelled.predicted,
                    "correct": labelled.correct,
                    "model_version": labelled.model_version,
                    "recorded": labelled.recorded,
                },
            )
        except Rejected as exc:
            status, payload = exc.status, exc.to_json()
        except UnknownPrediction as exc:
            status, payload = 404, {"error": "unknown_prediction", "detail": str(exc)}
        except ConflictingLabel as exc:
            status, payload = 409, {"error": "conflicting_label", "detail": str(exc)}
        except Exception:
            logger.exception("feedback %s failed", request_id)
            status, payload = 500, {"error": "internal", "detail": "see the server log"}
        return _respond(runtime, "feedback", started, request_id, status, payload)

    spec: dict[str, Any] = {}

    async def openapi(request: Request) -> JSONResponse:
        if not spec:
            spec.update(spec_for(get_runtime().settings))
        return JSONResponse(spec)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/predict_batch", predict_batch, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route(SPEC_PATH, openapi, methods=["GET"]),
        ]
    )
