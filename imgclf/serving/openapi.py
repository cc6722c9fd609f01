"""The service's OpenAPI 3 document, the one place that describes its HTTP interface.

Served (behind the same JWT auth as /docs.json) at GET /openapi.json by the app in api.py.
BentoML's own /docs.json only knows `@bentoml.api` methods, and this service has none: its
classification routes are plain Starlette routes (see api.py for why), so they are described
here. `build_spec(settings)` fills in the configured limits; tests check that every route the
app serves is documented and that a running server's answers conform (tests/test_service_fuzz.py).

Error bodies are `{error, detail, request_id[, index]}`; `error` is a machine code from the
per-status lists below (ERROR_CODES), which are what validation.py / api.py raise.
"""

from __future__ import annotations

import copy
from typing import Any

from imgclf.serving.validation import ACCEPTED_CONTENT_TYPES

SPEC_PATH = "/openapi.json"
PREDICT_PATHS = ("/predict", "/predict_batch")
FEEDBACK_PATH = "/feedback"
# Served by BentoML itself; open (no token) per auth.OPEN_PATHS, except the docs routes.
HEALTH_PATHS = ("/livez", "/healthz", "/readyz")
METRICS_PATH = "/metrics"
BENTOML_DOC_PATHS = ("/docs.json", "/schema.json")

# Every `error` code each status can carry, for the classification routes.
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: ("empty", "bad_multipart", "no_file"),
    413: ("too_many_bytes", "too_many_pixels", "too_many_images"),
    415: ("unsupported_media_type", "not_an_image", "unsupported_format"),
    422: ("corrupt", "truncated", "animated", "high_bit_depth"),
    503: ("not_ready",),
    500: ("internal",),
}
# The same for POST /feedback.
FEEDBACK_ERROR_CODES: dict[int, tuple[str, ...]] = {
    404: ("unknown_prediction",),
    409: ("conflicting_label",),
    413: ("too_many_bytes",),
    415: ("unsupported_media_type",),
    422: ("invalid_feedback", "unknown_label"),
    500: ("internal",),
}
FEEDBACK_ERROR_DESCRIPTIONS = {
    404: "No logged prediction has this request_id (and index)",
    409: "The prediction already carries a different true label: the first one stands",
    413: "Body over 4 KiB",
    415: "Not application/json",
    422: "Not a valid feedback object, or a label that is not one of the classes",
    500: "Unexpected server error (a bug: see the server log for the request id)",
}
ERROR_DESCRIPTIONS = {
    400: "Empty upload, malformed multipart body, or a form without a file field",
    401: "Missing, malformed, badly signed, expired or wrong-audience bearer token",
    413: "Over the byte limit (per image / per body), the pixel limit, or the image count",
    415: "Not multipart/form-data or an accepted image type; not an image; unaccepted format",
    422: "The image cannot be decoded: corrupt, truncated, animated, or 16-bit/float",
    500: "Unexpected server error (a bug: see the server log for the request id)",
    503: "No model loaded yet (no champion in the registry, or it failed to load)",
}
_UNAUTHORIZED = "#/components/schemas/Unauthorized"
_UNAUTHORIZED_RESPONSE = {"$ref": "#/components/responses/Unauthorized"}
RAW_IMAGE_TYPES = tuple(sorted(ACCEPTED_CONTENT_TYPES))


def _error_schema(
    status: int, *, batch: bool, codes: dict[int, tuple[str, ...]] = ERROR_CODES
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "error": {"type": "string", "enum": list(codes[status])},
        "detail": {"type": "string", "minLength": 1},
        "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    if batch and status in (400, 413, 415, 422):
        properties["index"] = {
            "type": "integer",
            "minimum": 0,
            "description": "position of the offending image in the batch (when one is to blame)",
        }
    return {
        "type": "object",
        "required": ["error", "detail", "request_id"],
        "properties": properties,
        "additionalProperties": False,
    }


_REQUEST_ID_HEADER = {
    "X-Request-ID": {
        "description": "Id of this HTTP request (a prediction's is also in its body and the "
        "prediction log)",
        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
}


def _json(schema: dict[str, Any], description: str, request_id: bool = True) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if request_id:
        response["headers"] = copy.deepcopy(_REQUEST_ID_HEADER)
    return response


def _classification_responses(batch: bool) -> dict[str, Any]:
    ok = (
        {"type": "array", "items": {"$ref": "#/components/schemas/BatchPrediction"}, "minItems": 1}
        if batch
        else {"$ref": "#/components/schemas/Prediction"}
    )
    responses: dict[str, Any] = {
        "200": _json(ok, "One prediction per image, in upload order" if batch else "Prediction")
    }
    for status in (400, 413, 415, 422, 401, 500, 503):
        responses[str(status)] = (
            copy.deepcopy(_UNAUTHORIZED_RESPONSE)
            if status == 401
            else _json(_error_schema(status, batch=batch), ERROR_DESCRIPTIONS[status])
        )
    return responses


def _feedback_operation(label: dict[str, Any]) -> dict[str, Any]:
    request_id = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
    index = {"type": "integer", "minimum": 0}
    answer = {
        "type": "object",
        "required": [
            "request_id", "index", "label", "predicted", "correct", "model_version", "recorded"
        ],
        "properties": {
            "request_id": request_id,
            "index": index,
            "label": label,
            "predicted": label,
            "correct": {"type": "boolean"},
            "model_version": {"type": "string"},
            "recorded": {
                "type": "boolean",
                "description": "false: this label was already recorded (a retry)",
            },
        },
        "additionalProperties": False,
    }  # fmt: skip
    responses: dict[str, Any] = {"200": _json(answer, "The label, stored beside the prediction")}
    for status, description in FEEDBACK_ERROR_DESCRIPTIONS.items():
        schema = _error_schema(status, batch=False, codes=FEEDBACK_ERROR_CODES)
        responses[str(status)] = _json(schema, description)
    responses["401"] = copy.deepcopy(_UNAUTHORIZED_RESPONSE)
    return {
        "post": {
            "operationId": "feedback",
            "summary": "Give the true label of a logged prediction",
            "description": (
                "Ground truth for monitoring: stored beside the prediction in the prediction log "
                "and counted in imgclf_live_accuracy (the served version's last "
                "serve.feedback_window labelled predictions)."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["request_id", "label"],
                            "properties": {
                                "request_id": request_id,
                                "label": label,
                                "index": {**index, "default": 0},
                            },
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": responses,
        }
    }


def _plain(description: str, media: str = "text/plain") -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": {"type": "string"}}}}


def _protected_json_get(operation_id: str, summary: str, description: str) -> dict[str, Any]:
    """A GET route that answers a JSON document and needs the bearer token."""
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "responses": {
                "200": _json({"type": "object"}, description, request_id=False),
                "401": copy.deepcopy(_UNAUTHORIZED_RESPONSE),
            },
        }
    }


def build_spec(
    *,
    max_bytes: int,
    max_pixels: int,
    max_images_per_request: int,
    classes: tuple[str, ...] = ("cat", "dog"),
    version: str = "1",
) -> dict[str, Any]:
    """The OpenAPI 3.0 document for a service with these limits (a fresh dict each call)."""
    binary = {"type": "string", "format": "binary"}
    image_types = ", ".join(t for t in RAW_IMAGE_TYPES if t != "application/octet-stream")
    limits = (
        f"Each image: at most {max_bytes} bytes and {max_pixels} pixels (width x height, read "
        "from the header before decoding); JPEG, PNG, WebP or BMP, still, 8-bit. EXIF "
        "orientation is applied; non-RGB images are converted to RGB."
    )
    label = {"type": "string", "enum": list(classes)}
    prediction_properties = {
        "label": label,
        "probability": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "description": f"P({classes[-1]})",
        },
        "confidence": {
            "type": "number",
            "minimum": 0.5,
            "maximum": 1,
            "description": "max(p, 1 - p)",
        },
        "model_version": {"type": "string", "description": "registry version that answered"},
        "request_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    }
    per_part = {"image": {"contentType": image_types}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "imgclf image classifier",
            "version": version,
            "description": (
                "Binary image classification served by BentoML. POST /predict, /predict_batch and "
                "/feedback need `Authorization: Bearer <JWT>` (HS256 or RS256, `aud` and "
                "`exp` required); health and metrics routes are open. " + limits
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": "Classify one image",
                    "description": (
                        "Send the image as a multipart file field `image`, or as the raw body "
                        "with its image Content-Type. " + limits
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {"image": binary},
                                },
                                "encoding": per_part,
                            },
                            **{media: {"schema": binary} for media in RAW_IMAGE_TYPES},
                        },
                    },
                    "responses": _classification_responses(batch=False),
                }
            },
            "/predict_batch": {
                "post": {
                    "operationId": "predict_batch",
                    "summary": f"Classify up to {max_images_per_request} images in one request",
                    "description": (
                        "Multipart with one file field `images` per image. A bad image fails the "
                        "whole request and its position is named in `index`. " + limits
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["images"],
                                    "properties": {
                                        "images": {
                                            "type": "array",
                                            "items": binary,
                                            "minItems": 1,
                                            "maxItems": max_images_per_request,
                                        }
                                    },
                                },
                                "encoding": {"images": {"contentType": image_types}},
                            }
                        },
                    },
                    "responses": _classification_responses(batch=True),
                }
            },
            FEEDBACK_PATH: _feedback_operation(label),
            SPEC_PATH: _protected_json_get("openapi", "This document", "OpenAPI 3 document"),
            **{
                path: {
                    "get": {
                        "operationId": path.strip("/"),
                        "summary": summary,
                        "security": [],
                        "responses": {
                            "200": _plain("OK"),
                            **(
                                {"503": _plain("Not ready: no model loaded yet")}
                                if path == "/readyz"
                                else {}
                            ),
                        },
                    }
                }
                for path, summary in (
                    ("/livez", "Liveness probe"),
                    ("/healthz", "Liveness probe (alias of /livez)"),
                    ("/readyz", "Readiness probe: 200 only once a model is loaded"),
                )
            },
            METRICS_PATH: {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (imgclf_* and bentoml_service_*)",
                    "security": [],
                    "responses": {"200": _plain("Prometheus text exposition format")},
                }
            },
            "/docs.json": _protected_json_get(
                "bentoml_docs",
                "BentoML's generated spec (its @bentoml.api methods only: none)",
                "OpenAPI document",
            ),
            "/schema.json": _protected_json_get(
                "bentoml_schema", "BentoML's service schema", "Service schema"
            ),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Prediction": {
                    "type": "object",
                    "required": list(prediction_properties),
                    "properties": prediction_properties,
                    "additionalProperties": False,
                },
                "BatchPrediction": {
                    "type": "object",
                    "required": ["index", *prediction_properties],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        **prediction_properties,
                    },
                    "additionalProperties": False,
                },
                "Unauthorized": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string", "enum": ["unauthorized"]},
                        "detail": {"type": "string", "minLength": 1},
                    },
                    "additionalProperties": False,
                },
            },
            "responses": {
                "Unauthorized": {
                    "description": ERROR_DESCRIPTIONS[401],
                    "headers": {
                        "WWW-Authenticate": {
                            "description": 'Bearer error="invalid_token"',
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {"application/json": {"schema": {"$ref": _UNAUTHORIZED}}},
                }
            },
        },
    }


def spec_for(settings: Any) -> dict[str, Any]:
    """`build_spec` with a ServeSettings' limits and classes."""
    return build_spec(
        max_bytes=settings.max_bytes,
        max_pixels=settings.max_pixels,
        max_images_per_request=settings.max_images_per_request,
        classes=tuple(settings.classes),
    )
