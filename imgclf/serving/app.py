"""The HTTP interface: a FastAPI app that service.py mounts on the BentoML service.

The running service documents itself: Swagger UI at /docs (try an upload from the browser; the
Authorize button takes the JWT) and the OpenAPI document at /openapi.json, generated from the
routes below, the bodies in schemas.py and the error codes in errors.py.

The routes read the request themselves, so that the body is read under a byte limit before
anything parses it, every bad upload keeps its own status and reason code (FastAPI's 422 never
answers), and BentoML's multipart parser (which fetches a URL given in a file field) is never
involved; `openapi_extra` documents the bodies and the query they take.

The classes are the served model's, so the document is FastAPI's with the loaded model's class
list written in (`ServedDocument`), rewritten when a swap brings other classes.
"""

from __future__ import annotations

import copy
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
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.routing import Match

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
from imgclf.serving.validation import ValidatedImage, validate_image

logger = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 64 * 1024  # per image, on top of max_bytes (nginx's body limit uses it)
MAX_FEEDBACK_BYTES = 4096
BENTOML_PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})  # served by BentoML
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
# The "too many files" of Starlette's multipart parser (a 400 otherwise indistinguishable).
TOO_MANY_FILES = "Too many files"
TOP_K = "top_k"  # query parameter of the classify routes
REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "this request's id (a prediction's is also in its body and the log)",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
}
# Documents the bearer JWT (the Authorize button); JWTAuthMiddleware checks it on every route.
bearer_jwt = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description="HS256 or RS256; `aud` and `exp` required (imgclf/serving/auth.py)",
    auto_error=False,
)


def current_runtime(request: Request) -> ServingRuntime:
    """The worker's runtime, from the callable `build_app` was given."""
    return request.app.state.runtime()


Runtime = Annotated[ServingRuntime, Depends(current_runtime)]


@dataclass(frozen=True)
class Call:
    """One request's id and start time."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)


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


def _router(settings: ServeSettings) -> APIRouter:
    router = APIRouter(dependencies=[Security(bearer_jwt)])
    classify_responses = error_responses(CLASSIFY_ERRORS) | {200: {"headers": REQUEST_ID_HEADER}}

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
        work = _classify(request, runtime, call, batch=False)
        return await _answer(runtime, "predict", call, work)

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
        work = _classify(request, runtime, call, batch=True)
        return await _answer(runtime, "predict_batch", call, work)

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
        responses=error_responses(FEEDBACK_ERRORS) | {200: {"headers": REQUEST_ID_HEADER}},
        openapi_extra=_feedback_body(),
    )
    async def feedback(request: Request, runtime: Runtime) -> JSONResponse:
        call = Call()
        work = _record_feedback(request, runtime)
        return await _answer(runtime, "feedback", call, work)

    return router


# ------------------------------------------------------------------------------ handling


async def _answer(
    runtime: ServingRuntime, endpoint: str, call: Call, work: Awaitable[Any]
) -> JSONResponse:
    """Await the route's work and answer it, or the error it raised; count and time both."""
    try:
        # exclude_none: a field that does not apply (`probability` past two classes) is absent
        status, content = 200, jsonable_encoder(await work, exclude_none=True)
    except ServiceError as exc:
        status = exc.code.status
        content = error_json(exc.code, exc.detail, call.request_id, exc.index)
    except Exception:
        logger.exception("request %s failed", call.request_id)
        status = ErrorCode.INTERNAL.status
        content = error_json(ErrorCode.INTERNAL, "see the server log", call.request_id)
    runtime.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
    runtime.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - call.started)
    return JSONResponse(content, status_code=status, headers={"X-Request-ID": call.request_id})


async def _classify(
    request: Request, runtime: ServingRuntime, call: Call, batch: bool
) -> Prediction | list[BatchPrediction]:
    settings = runtime.settings
    max_count = settings.max_images_per_request if batch else 1
    top_k = _top_k(request)
    try:
        images = await _validated(await _uploads(request, settings, max_count), settings)
        predictions = await runtime.classify(images, call.request_id, call.started, top_k)
    except ServiceError as exc:
        if batch or exc.index is None:
            raise
        raise ServiceError(exc.code, exc.detail) from exc  # one image: no position to name
    if not batch:
        return predictions[0]
    return [BatchPrediction(index=i, **p.model_dump()) for i, p in enumerate(predictions)]


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
    if _media_type(request) != "application/json":
        raise ServiceError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE, "send the feedback as application/json"
        )
    body = await _read_body(request, MAX_FEEDBACK_BYTES)
    try:
        feedback = Feedback.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ServiceError(ErrorCode.INVALID_FEEDBACK, problems) from exc
    labelled = await run_in_threadpool(runtime.record_feedback, feedback)
    return FeedbackAnswer(
        request_id=labelled.request_id,
        index=labelled.item,
        label=labelled.true_label,
        predicted=labelled.predicted,
        correct=labelled.correct,
        model_version=labelled.model_version,
        recorded=labelled.recorded,
    )


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServiceError(
            ErrorCode.TOO_MANY_BYTES, f"request body {declared} bytes > limit {limit}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(ErrorCode.TOO_MANY_BYTES, f"request body over the limit of {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


async def _uploads(
    request: Request, settings: ServeSettings, max_count: int
) -> list[tuple[bytes, str | None]]:
    """[(bytes, declared content type)] from a multipart form or a raw image body."""
    media = _media_type(request)
    if media == "multipart/form-data":
        return await _form_files(request, max_count, settings.max_bytes)
    if max_count == 1 and (media.startswith("image/") or media == UNDECLARED):
        return [(await _read_body(request, settings.max_bytes), media)]
    raise ServiceError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"content type {media or 'none'!r}: send multipart/form-data"
        + (" or a raw image body" if max_count == 1 else ""),
    )


async def _form_files(
    request: Request, max_count: int, max_bytes: int
) -> list[tuple[bytes, str | None]]:
    """The file fields of a multipart body, read whole under the limit and parsed from memory."""
    body = await _read_body(request, max_count * (max_bytes + MULTIPART_OVERHEAD))

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        # The parser stops at the first file over max_count: a flood of tiny parts never piles up.
        form = await Request(request.scope, replay).form(
            max_files=max_count, max_fields=max_count + 8
        )
    except HTTPException as exc:
        if str(exc.detail).startswith(TOO_MANY_FILES):
            detail = f"over the limit of {max_count} images per request"
            raise ServiceError(ErrorCode.TOO_MANY_IMAGES, detail) from exc
        raise ServiceError(ErrorCode.BAD_MULTIPART, str(exc.detail)) from exc
    except Exception as exc:
        raise ServiceError(ErrorCode.BAD_MULTIPART, f"cannot parse the form: {exc}") from exc
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise ServiceError(ErrorCode.NO_FILE, "the form holds no file field (e.g. `image`)")
        return [(await f.read(), f.content_type) for f in files]
    finally:
        await form.close()


async def _validated(
    uploads: list[tuple[bytes, str | None]], settings: ServeSettings
) -> list[ValidatedImage]:
    """Each upload validated; a refusal names the image's position."""
    images = []
    for index, (data, content_type) in enumerate(uploads):
        try:
            image = await run_in_threadpool(
                validate_image,
                data,
                max_bytes=settings.max_bytes,
                max_pixels=settings.max_pixels,
                content_type=content_type,
            )
        except ServiceError as exc:
            raise ServiceError(exc.code, exc.detail, index) from exc
        images.append(image)
    return images


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
