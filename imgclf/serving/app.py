"""The HTTP interface: a FastAPI app that service.py mounts on the BentoML service.

The running service documents itself: Swagger UI at /docs (try an upload from the browser; the
Authorize button takes the JWT) and the OpenAPI document at /openapi.json, generated from the
routes below, the bodies in schemas.py and the error codes in errors.py.

The routes read the request themselves (uploads.py), so that the body is read under byte limits
and a deadline as it arrives, every bad upload keeps its own status and reason code (FastAPI's
422 never answers), and BentoML's multipart parser (which fetches a URL given in a file field) is
never involved; `openapi_extra` documents the bodies and the query they take. A worker handles
at most serve.max_in_flight requests at once: one more is answered 503 `overloaded` at once,
with Retry-After, before its body is read.

The classes are the served model's, so the document is FastAPI's with the loaded model's class
list written in (`ServedDocument`), rewritten when a swap brings other classes.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from imgclf.serving.caller import caller_of
from imgclf.serving.errors import (
    CLASSIFY_ERRORS,
    FEEDBACK_ERRORS,
    ErrorCode,
    Routes,
    ServiceError,
    error_json,
    error_responses,
)
from imgclf.serving.formats import FORMAT_NAMES, STANDARD_MEDIA_TYPES, UNDECLARED
from imgclf.serving.runtime import ServingRuntime
from imgclf.serving.schemas import BatchPrediction, Feedback, FeedbackAnswer, Prediction
from imgclf.serving.settings import ServeSettings
from imgclf.serving.uploads import BodyLimits, media_type, read_body, read_uploads

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024  # per image, on top of max_bytes (nginx's body limit uses it)
MAX_FEEDBACK_BYTES = 4096
RETRY_AFTER_SECONDS = 1  # an overloaded worker: in-flight requests take about this long
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client gone before its answer (metrics only)
READYZ = "/readyz"
BENTOML_PROBES = frozenset({"/livez", READYZ, "/healthz", "/metrics"})  # served by BentoML
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
DOCS_ASSETS_PATH = "/docs/assets"
DOCS_ASSETS = {  # the page's files, as Swagger UI's static folder names them
    "js": f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
    "css": f"{DOCS_ASSETS_PATH}/swagger-ui.css",
    "favicon": f"{DOCS_ASSETS_PATH}/favicon-light-32x32.png",
}
# Open without a token (auth.OPEN_PATHS): a browser cannot send one to load the docs page.
DOCS_OPEN_PATHS = frozenset({DOCS_PATH, OPENAPI_PATH, *DOCS_ASSETS.values()})
TOP_K = "top_k"  # query parameter of the classify routes
REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "this request's id (a prediction's is also in its body and the log)",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
}
RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "`overloaded` only: seconds to wait before sending it again",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
# Documents the bearer JWT (the Authorize button); JWTAuthMiddleware checks it on every route.
bearer_jwt = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="HS256 or RS256; `aud` and `exp` required (imgclf/serving/auth.py)",
    auto_error=False,
)


async def current_runtime(request: Request) -> ServingRuntime:
    """The worker's runtime, from the callable `build_app` was given (async: FastAPI would run a
    plain function in its thread pool, a thread hop per request for an attribute read)."""
    return request.app.state.runtime()


Runtime = Annotated[ServingRuntime, Depends(current_runtime)]


@dataclass(frozen=True)
class Call:
    """One request's id and start time."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)


class InFlight:
    """The requests a worker is handling, at most `limit`: one more is refused, never queued
    (its body is not even read). Touched from the event loop only: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def enter(self) -> bool:
        """Take a place; False when all `limit` are taken."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        self.count -= 1


def build_app(settings: ServeSettings, runtime: Callable[[], ServingRuntime]) -> FastAPI:
    """The app for a service with these settings; `runtime` gives the worker's runtime."""
    app = FastAPI(
        title="imgclf image classifier",
        version="1",
        openapi_url=OPENAPI_PATH,  # the description: ServedDocument, per class list
        docs_url=None,  # served below, with local assets
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # Unknown methods (and missing docs assets) answer an ErrorBody too.
        exception_handlers={
            code.status: _routing_error(code) for code in ErrorCode if code.routes == Routes.NONE
        },
    )
    app.state.runtime = runtime
    app.state.in_flight = InFlight(settings.max_in_flight)
    app.openapi = ServedDocument(app, settings)  # type: ignore[method-assign]
    app.include_router(_router(settings))
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=_swagger_ui_dir()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=OPENAPI_PATH,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=DOCS_ASSETS["js"],
            swagger_css_url=DOCS_ASSETS["css"],
            swagger_favicon_url=DOCS_ASSETS["favicon"],
            # No persistAuthorization: it would keep the JWT in the browser's localStorage.
            swagger_ui_parameters={"tryItOutEnabled": True},
        )

    return app


def _routing_error(code: ErrorCode) -> Callable[[Request, HTTPException], Awaitable[JSONResponse]]:
    async def answer(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(error_json(code, exc.detail), code.status, headers=exc.headers)

    return answer


class ServedPaths:
    """ASGI middleware (service.py adds it): the service answers `api`'s routes and BentoML's
    probes only. BentoML's own index page, /docs.json and /schema.json would describe the API a
    second time (empty): `/` redirects to /docs, and every other path is a 404."""

    def __init__(self, app: Callable[..., Awaitable[None]], api: FastAPI) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self._served(scope):
            await self.app(scope, receive, send)
            return
        if scope["path"].rstrip("/") == "":
            response = RedirectResponse(DOCS_PATH)
        else:
            detail = f"no such path: {scope['path']}"
            response = JSONResponse(error_json(ErrorCode.NOT_FOUND, detail), 404)
        await response(scope, receive, send)

    def _served(self, scope: dict[str, Any]) -> bool:
        """A probe, or a path of `api` (for any method: a wrong one gets its 405)."""
        if scope["path"] in BENTOML_PROBES:
            return True
        return any(route.matches(scope)[0] != Match.NONE for route in self.api.routes)


class ReadinessReason:
    """ASGI middleware (service.py adds it): while the worker has no model, /readyz answers 503
    with why (an ErrorBody `not_ready`: e.g. the registry unreachable since when, its last
    error) instead of BentoML's bare "not ready"; once it has one, BentoML's /readyz answers."""

    def __init__(self, app: Callable[..., Awaitable[None]], api: FastAPI) -> None:
        self.app = app
        self.api = api

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == READYZ:
            runtime = self.api.state.runtime()
            reason = None if runtime is None else runtime.not_ready_reason
            if reason is not None:
                response = JSONResponse(error_json(ErrorCode.NOT_READY, reason), 503)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _router(settings: ServeSettings) -> APIRouter:
    router = APIRouter(dependencies=[Security(bearer_jwt)])
    classify_responses = _responses(CLASSIFY_ERRORS)

    @router.post(
        "/predict",
        operation_id="predict",
        tags=["classify"],
        summary="Classify one image",
        response_model=Prediction,
        responses=classify_responses,
        openapi_extra=_upload_body(settings, batch=False),
    )
    async def predict(request: Request, runtime: Runtime) -> JSONResponse:
        call = Call()
        work = functools.partial(_classify, request, runtime, call, batch=False)
        return await _answer(request, runtime, "predict", call, work)

    @router.post(
        "/predict_batch",
        operation_id="predict_batch",
        tags=["classify"],
        summary=f"Classify up to {settings.max_images_per_request} images in one request",
        response_model=list[BatchPrediction],
        responses=classify_responses,
        openapi_extra=_upload_body(settings, batch=True),
    )
    async def predict_batch(request: Request, runtime: Runtime) -> JSONResponse:
        call = Call()
        work = functools.partial(_classify, request, runtime, call, batch=True)
        return await _answer(request, runtime, "predict_batch", call, work)

    @router.post(
        "/feedback",
        operation_id="feedback",
        tags=["feedback"],
        summary="Give the true label of a logged prediction",
        description=(
            "Ground truth for monitoring: stored beside the prediction in the prediction log "
            "and counted in imgclf_live_accuracy (the served version's last "
            f"{settings.feedback_window} labelled predictions)."
        ),
        response_model=FeedbackAnswer,
        responses=_responses(FEEDBACK_ERRORS),
        openapi_extra=_feedback_body(),
    )
    async def feedback(request: Request, runtime: Runtime) -> JSONResponse:
        call = Call()
        work = functools.partial(_record_feedback, request, runtime)
        return await _answer(request, runtime, "feedback", call, work)

    return router


def _responses(codes: tuple[ErrorCode, ...]) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: its error codes, the request id of a 200, the Retry-After
    of an `overloaded` 503."""
    responses = error_responses(codes) | {200: {"headers": REQUEST_ID_HEADER}}
    responses[ErrorCode.OVERLOADED.status]["headers"] = RETRY_AFTER_HEADER
    return responses


# ------------------------------------------------------------------------------ handling


async def _answer(
    request: Request,
    runtime: ServingRuntime,
    endpoint: str,
    call: Call,
    work: Callable[[], Awaitable[Any]],
) -> JSONResponse:
    """Start the route's `work` if the worker has room for one more request (else 503
    `overloaded`, nothing read), and answer what it returns or the error it raises; count and
    time both."""
    headers = {"X-Request-ID": call.request_id}
    in_flight: InFlight = request.app.state.in_flight
    if in_flight.enter():
        try:
            status, content = await _outcome(work(), call)
        finally:
            in_flight.leave()
    else:
        runtime.metrics.overloaded.labels(endpoint=endpoint).inc()
        detail = f"{in_flight.limit} requests in flight already (serve.max_in_flight)"
        status, content = _refusal(ServiceError(ErrorCode.OVERLOADED, detail), call)
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    runtime.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
    runtime.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - call.started)
    return JSONResponse(content, status_code=status, headers=headers)


async def _outcome(work: Awaitable[Any], call: Call) -> tuple[int, Any]:
    try:
        # exclude_none: a field that does not apply (`probability` past two classes) is absent
        return 200, jsonable_encoder(await work, exclude_none=True)
    except ServiceError as exc:
        return _refusal(exc, call)
    except ClientDisconnect:  # nobody to answer: counted, not a server error
        logger.info("request %s: the client left before its body was read", call.request_id)
        return CLIENT_CLOSED_REQUEST, {}
    except Exception:
        logger.exception("request %s failed", call.request_id)
        return _refusal(ServiceError(ErrorCode.INTERNAL, "see the server log"), call)


def _refusal(exc: ServiceError, call: Call) -> tuple[int, dict[str, Any]]:
    return exc.code.status, error_json(exc.code, exc.detail, call.request_id, exc.index)


async def _classify(
    request: Request, runtime: ServingRuntime, call: Call, batch: bool
) -> Prediction | list[BatchPrediction]:
    settings = runtime.settings
    top_k = _top_k(request)
    try:
        uploads = await read_uploads(request, _body_limits(settings, batch))
        subject = caller_of(request.scope).subject
        predictions = await runtime.classify(uploads, call.request_id, call.started, top_k, subject)
    except ServiceError as exc:
        if batch or exc.index is None:
            raise
        raise ServiceError(exc.code, exc.detail) from exc  # one image: no position to name
    if not batch:
        return predictions[0]
    return [BatchPrediction(index=i, **p.model_dump()) for i, p in enumerate(predictions)]


def _body_limits(settings: ServeSettings, batch: bool) -> BodyLimits:
    """/predict: one image and its form's overhead; /predict_batch: serve.max_batch_bytes."""
    return BodyLimits(
        body_bytes=settings.max_batch_bytes if batch else settings.max_bytes + MULTIPART_OVERHEAD,
        file_bytes=settings.max_bytes,
        files=settings.max_images_per_request if batch else 1,
        seconds=settings.body_timeout_seconds,
    )


def _top_k(request: Request) -> int | None:
    """The `top_k` query parameter: None when absent; a positive whole number (the model's
    class count bounds it: runtime.classify) or a 422."""
    value = request.query_params.get(TOP_K)
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]+", value) or int(value) < 1:
        raise ServiceError(ErrorCode.INVALID_TOP_K, f"top_k {value!r} is not a whole number >= 1")
    return int(value)


async def _record_feedback(request: Request, runtime: ServingRuntime) -> FeedbackAnswer:
    if media_type(request) != "application/json":
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send the feedback as application/json"
        )
    body = await read_body(request, MAX_FEEDBACK_BYTES, runtime.settings.body_timeout_seconds)
    try:
        feedback = Feedback.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ServiceError(ErrorCode.INVALID_FEEDBACK, problems) from exc
    caller = caller_of(request.scope)
    labelled = await run_in_threadpool(runtime.record_feedback, feedback, caller)
    return FeedbackAnswer(
        request_id=labelled.request_id,
        index=labelled.item,
        label=labelled.true_label,
        predicted=labelled.predicted,
        correct=labelled.correct,
        model_version=labelled.model_version,
        recorded=labelled.recorded,
    )


# ------------------------------------------------------------------------------ OpenAPI


class ServedDocument:
    """`app.openapi`: FastAPI's document with the served model's classes written in (the
    description, label enums, the keys of `probabilities`, top_k's maximum), rebuilt when they
    change; before a model is loaded (or without a runtime: documenting the API offline) it
    names none."""

    def __init__(self, app: FastAPI, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings
        self.classes: tuple[str, ...] | None = None
        self.document: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        runtime = self.app.state.runtime()
        classes = None if runtime is None else runtime.classes
        if self.document is None or classes != self.classes:
            document = copy.deepcopy(FastAPI.openapi(self.app))  # FastAPI caches the original
            _write_classes(document, self.settings, classes)
            self.classes, self.document = classes, document
        return self.document


def _write_classes(
    document: dict[str, Any], settings: ServeSettings, classes: tuple[str, ...] | None
) -> None:
    document["info"]["description"] = _description(settings, classes)
    if classes is None:
        return
    enum = list(classes)
    for name in ("Prediction", "BatchPrediction"):
        properties = document["components"]["schemas"][name]["properties"]
        properties["label"]["enum"] = enum
        properties["probabilities"]["propertyNames"] = {"enum": enum}
    for path in ("/predict", "/predict_batch"):
        for parameter in document["paths"][path]["post"]["parameters"]:
            if parameter["name"] == TOP_K:
                parameter["schema"]["maximum"] = len(classes)
    feedback = document["paths"]["/feedback"]["post"]["requestBody"]["content"]
    feedback["application/json"]["schema"]["properties"]["label"]["enum"] = enum


def _description(settings: ServeSettings, classes: tuple[str, ...] | None) -> str:
    return (
        f"{_classes_text(classes, settings.threshold)}\n\n"
        f"{_image_limits(settings)}\n\n"
        "Every route needs `Authorization: Bearer <JWT>` (the Authorize button) except BentoML's "
        "/livez, /readyz (200 once a model is loaded), /healthz and /metrics (Prometheus), "
        "and this page and /openapi.json."
    )


def _classes_text(classes: tuple[str, ...] | None, threshold: float) -> str:
    if classes is None:
        return (
            "Image classification into the served model's classes: no model is loaded yet "
            "(this document names them once one is)."
        )
    if len(classes) == 2:
        rule = (
            f"the label is `{classes[1]}` when its probability reaches {threshold}, else "
            f"`{classes[0]}`; `probability` is P({classes[1]})"
        )
    else:
        rule = "the label is the most probable class"
    names = ", ".join(f"`{c}`" for c in classes)
    return (
        f"Image classification into {names} (the served model's classes, in its order): "
        f"{rule}. `confidence` is the label's probability; `probabilities` gives every class's "
        f"(`?{TOP_K}=k`: the k most probable)."
    )


def _image_limits(settings: ServeSettings) -> str:
    return (
        f"Each image: at most {settings.max_bytes} bytes and {settings.max_pixels} pixels "
        f"(width x height, read from the header before decoding); {FORMAT_NAMES}, still, "
        "8-bit. EXIF orientation is applied; non-RGB images are converted to RGB."
    )


def _upload_body(settings: ServeSettings, batch: bool) -> dict[str, Any]:
    """`openapi_extra` for an upload route: a multipart file field (Swagger UI shows a file
    picker) and, for /predict, the raw image as the body."""
    binary = {"type": "string", "format": "binary"}
    name = "images" if batch else "image"
    field = binary
    if batch:
        field = {
            "type": "array",
            "items": binary,
            "minItems": 1,
            "maxItems": settings.max_images_per_request,
        }
    form = {
        "schema": {"type": "object", "required": [name], "properties": {name: field}},
        "encoding": {name: {"contentType": ", ".join(STANDARD_MEDIA_TYPES)}},
    }
    content: dict[str, Any] = {"multipart/form-data": form}
    if batch:
        description = "One file field `images` per image; a bad image fails the request and "
        description += "its position is named in `index`."
    else:
        description = "A file field `image`, or the raw image as the body with its Content-Type."
        raw = (*STANDARD_MEDIA_TYPES, UNDECLARED)
        content |= {media: {"schema": binary} for media in raw}
    top_k = {
        "name": TOP_K,
        "in": "query",
        "required": False,
        "description": "answer only the k most probable classes in `probabilities`, most "
        "probable first (default: every class, in the model's order)",
        "schema": {"type": "integer", "minimum": 1},  # maximum: ServedDocument
    }
    return {
        "description": f"{description} {_image_limits(settings)}",
        "parameters": [top_k],
        "requestBody": {"required": True, "content": content},
    }


def _feedback_body() -> dict[str, Any]:
    """`openapi_extra` for /feedback: the Feedback schema (its label's enum: ServedDocument)."""
    schema = Feedback.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _swagger_ui_dir() -> Path:
    """Swagger UI's files as BentoML ships them for its own page: no CDN needed."""
    from bentoml._internal import server

    return Path(server.__file__).parent / "static_content"
