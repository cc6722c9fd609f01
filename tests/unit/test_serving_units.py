"""Serving pieces without a server: JWT auth, upload validation, the served model's classes,
batcher, the HTTP app (routes, refusals, the OpenAPI document); settings: test_settings.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import logging
import threading
import time
from pathlib import Path
from unittest.mock import MagicMock

import jwt
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from imgclf.data.standardise import Reason
from imgclf.serving.app import ServedPaths, build_app
from imgclf.serving.auth import AuthError, JWTAuthMiddleware, JWTVerifier, verifier_from_env
from imgclf.serving.batcher import Batcher
from imgclf.serving.errors import CLASSIFY_ERRORS, ErrorCode, ServiceError
from imgclf.serving.holder import ChampionHolder, LoadedModel, build_loaded_model, model_classes
from imgclf.serving.settings import AuthSettings, ServeSettings, load_settings
from imgclf.serving.validation import (
    REASON_CODES,
    Upload,
    UploadLimits,
    ValidatedImage,
    decoded_uploads,
)

SECRET = "s" * 32
AUTH_VARIABLES = [f"IMGCLF_{name}".upper() for name in AuthSettings.model_fields]
LIMITS = UploadLimits(max_bytes=1_000_000, max_pixels=1_000_000, max_decoded_pixels=200_000)
SIDE = 32  # the model's input side the uploads are decoded for


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------- auth


def hs256() -> JWTVerifier:
    return JWTVerifier(key=SECRET, algorithm="HS256", audience="imgclf")


def test_valid_token_passes_and_bad_ones_fail() -> None:
    verifier = hs256()
    good = jwt.encode({"aud": "imgclf", "exp": time.time() + 60}, SECRET, "HS256")
    assert verifier.verify_header(f"Bearer {good}")["aud"] == "imgclf"
    bad = {
        "expired": jwt.encode({"aud": "imgclf", "exp": time.time() - 1}, SECRET, "HS256"),
        "audience": jwt.encode({"aud": "other", "exp": time.time() + 60}, SECRET, "HS256"),
        "no exp": jwt.encode({"aud": "imgclf"}, SECRET, "HS256"),
        "no aud": jwt.encode({"exp": time.time() + 60}, SECRET, "HS256"),
        "secret": jwt.encode({"aud": "imgclf", "exp": time.time() + 60}, "t" * 32, "HS256"),
        "none": jwt.encode({"aud": "imgclf", "exp": time.time() + 60}, None, "none"),
        "garbage": "abc.def.ghi",
    }
    for name, token in bad.items():
        with pytest.raises(AuthError):
            verifier.verify(token)
        assert name
    for header in (None, "", "Bearer", "Basic abc", good):
        with pytest.raises(AuthError):
            verifier.verify_header(header)


def verifier_under(monkeypatch: pytest.MonkeyPatch, **env: str) -> JWTVerifier | None:
    """The service's verifier with exactly the auth variables `env`."""
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return verifier_from_env()


def test_rs256_public_key_and_no_alg_confusion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pub.pem").write_bytes(public_pem)
    verifier = verifier_under(monkeypatch, IMGCLF_JWT_PUBLIC_KEY_FILE=str(tmp_path / "pub.pem"))
    assert verifier is not None and verifier.algorithm == "RS256"
    claims = {"aud": "imgclf", "exp": time.time() + 60}
    assert verifier.verify(jwt.encode(claims, key, "RS256"))["aud"] == "imgclf"

    # HS256 signed with the public key as the secret (the classic confusion attack) fails.
    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    body = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    forged = (body + b"." + b64(hmac.digest(public_pem, body, "sha256"))).decode()
    with pytest.raises(AuthError):
        verifier.verify(forged)


def test_auth_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert verifier_under(monkeypatch, IMGCLF_AUTH="disabled") is None
    with pytest.raises(ValueError, match="IMGCLF_AUTH=disabled"):
        verifier_under(monkeypatch)  # on by default: no key configured refuses to start
    with pytest.raises(ValueError, match="32 bytes"):
        verifier_under(monkeypatch, IMGCLF_JWT_SECRET="short")
    with pytest.raises(ValueError):
        verifier_under(monkeypatch, IMGCLF_AUTH="off")
    v = verifier_under(monkeypatch, IMGCLF_JWT_SECRET=SECRET, IMGCLF_JWT_AUDIENCE="a")
    assert (v.algorithm, v.audience) == ("HS256", "a")


async def ok_app(scope, receive, send) -> None:
    """Stands in for what a middleware wraps: 200 for everything."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _call(middleware, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


OPEN = [
    "/readyz",
    "/livez",
    "/healthz",
    "/metrics",
    "/docs",
    "/docs/",
    "/openapi.json",
    "/docs/assets/swagger-ui-bundle.js",
    "/docs/assets/swagger-ui.css",
    "/docs/assets/favicon-light-32x32.png",
]
NEEDS_A_TOKEN = [
    "/predict",
    "//predict",
    "/predict/",
    "/docs/../predict",
    "/docs/assets/other.css",
    "/docs/assets",
    "/docs/assets/../../predict",
    "/openapi.json.x",
    "/metrics/x",
    "/docs.json",
    "/",
]


@pytest.mark.parametrize("path", OPEN)
def test_middleware_opens_the_probes_and_the_docs_page(path: str) -> None:
    assert _call(JWTAuthMiddleware(ok_app, verifier_factory=hs256), path, {})[0] == 200


@pytest.mark.parametrize("path", NEEDS_A_TOKEN)
def test_middleware_needs_a_token_everywhere_else(path: str) -> None:
    middleware = JWTAuthMiddleware(ok_app, verifier_factory=hs256)
    status, body = _call(middleware, path, {})
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    good = jwt.encode({"aud": "imgclf", "exp": time.time() + 60}, SECRET, "HS256")
    assert _call(middleware, path, {"Authorization": f"Bearer {good}"})[0] == 200


def test_middleware_lets_everything_through_when_auth_is_disabled() -> None:
    assert _call(JWTAuthMiddleware(ok_app, verifier_factory=lambda: None), "/predict", {})[0] == 200


# ---------------------------------------------------------------------------- validation


def validated(data: bytes, content_type: str | None = None) -> tuple[ValidatedImage, np.ndarray]:
    """One upload through the service's checks and decoding."""
    ((image, pixels),) = decoded_uploads([Upload(data, content_type)], LIMITS, SIDE)
    return image, pixels


def test_a_plain_rgb_jpeg_decodes_to_the_pixels_the_pipeline_decodes() -> None:
    from imgclf.model.preprocess import decode_image

    data = encode(photo(), "JPEG", quality=90)
    image, pixels = validated(data)
    assert np.array_equal(pixels, decode_image(data))
    assert (image.width, image.height) == (80, 60)
    assert image.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("BMP", "RGB", {}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
    ],
)
def test_other_images_become_rgb_pixels(fmt: str, mode: str, options: dict) -> None:
    data = encode(photo().convert(mode), fmt, **options)
    image, pixels = validated(data)
    assert (pixels.shape, pixels.dtype) == ((60, 80, 3), np.uint8)
    assert (image.width, image.height) == (80, 60)
    if mode != "RGBA":  # RGBA: alpha flattened on white, which convert() does not do
        assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise to view
    image, pixels = validated(encode(photo(), "JPEG", exif=exif))
    assert (image.width, image.height) == (60, 80) and pixels.shape == (80, 60, 3)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda: b"", 400, "empty"),
        (lambda: b"\0" * 1_000_001, 413, "too_many_bytes"),
        (lambda: b"plain text, not an image", 415, "not_an_image"),
        (lambda: encode(photo(), "GIF"), 415, "unsupported_format"),
        (lambda: encode(photo(), "TIFF"), 415, "unsupported_format"),
        (lambda: encode(photo((400, 300)), "JPEG")[:20_000], 422, "truncated"),
        (lambda: encode(photo((400, 300)), "PNG")[:200_000], 422, "truncated"),
        (lambda: encode(Image.new("RGB", (1001, 1000)), "PNG"), 413, "too_many_pixels"),
        (lambda: encode(Image.new("1", (3000, 3000)), "PNG"), 413, "too_many_pixels"),
        (
            lambda: encode(
                Image.new("L", (9, 9)),
                "PNG",
                save_all=True,
                append_images=[Image.new("L", (9, 9), 255)],
            ),
            422,
            "animated",
        ),
        (
            lambda: encode(Image.fromarray(np.zeros((9, 9), np.uint16)), "PNG"),
            422,
            "high_bit_depth",
        ),
    ],
)
def test_bad_uploads_are_refused_with_their_code(make, status: int, code: str) -> None:
    with pytest.raises(ServiceError) as caught:
        validated(make())
    assert (caught.value.code, caught.value.code.status) == (code, status)
    assert caught.value.detail and caught.value.index == 0


def test_every_standardisation_reason_has_an_image_error_code() -> None:
    assert set(REASON_CODES) == set(Reason)
    assert set(REASON_CODES.values()) <= set(CLASSIFY_ERRORS)
    assert all(400 <= code.status < 500 for code in REASON_CODES.values())


@pytest.mark.parametrize(
    "content_type", ["image/png", "image/jpg", "image/x-ms-bmp", "application/octet-stream", None]
)
def test_declared_image_types_are_taken(content_type: str | None) -> None:
    data = encode(photo(), "PNG")  # the bytes decide the format
    assert validated(data, content_type=content_type)[0].width == 80


def test_other_declared_types_are_refused() -> None:
    with pytest.raises(ServiceError) as caught:
        validated(encode(photo(), "PNG"), content_type="text/plain")
    assert caught.value.code == ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert "JPEG, PNG, WebP or BMP" in caught.value.detail


def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self):
        raise AssertionError("decoded a bomb")

    big = encode(Image.new("RGB", (1001, 1000)), "PNG")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ServiceError) as caught:
        validated(big)
    assert caught.value.code == "too_many_pixels"


# ------------------------------------------------------------------------ the served model


def test_classes_come_from_the_metadata_then_the_tag_then_the_fallback() -> None:
    metadata, tag = {"classes": ["owl", "cat", "fox"]}, {"classes": '["a", "b"]'}
    assert model_classes(metadata, tag, ("x", "y"), "m") == ("owl", "cat", "fox")
    assert model_classes({"other": 1}, tag, ("x", "y"), "m") == ("a", "b")
    assert model_classes(None, {}, ("x", "y"), "m") == ("x", "y")
    with pytest.raises(ValueError, match="carries no class list"):
        model_classes(None, {}, None, "m")
    for bad in (["cat"], ["cat", "cat"], "cat,dog", ["cat", 2]):
        with pytest.raises(ValueError, match="two or more distinct names"):
            model_classes({"classes": bad}, {}, None, "m")


def test_a_loaded_model_gives_one_probability_per_class() -> None:
    from tests.support.helpers import tiny_model

    images = np.random.default_rng(0).random((4, 16, 16, 3), "float32")
    three = build_loaded_model(tiny_model(16, 0, classes=3), "1", "m", ("owl", "cat", "fox"))
    probabilities = three.forward(images)
    assert probabilities.shape == (4, 3)
    assert probabilities.sum(axis=1) == pytest.approx(np.ones(4))
    sigmoid = tiny_model(16, 0)
    binary = build_loaded_model(sigmoid, "1", "m", ("cat", "dog")).forward(images)
    p = np.asarray(sigmoid(images)).reshape(-1)
    assert binary[:, 1] == pytest.approx(p) and binary[:, 0] == pytest.approx(1 - p)
    with pytest.raises(ValueError, match="gives 3 probabilities"):
        build_loaded_model(tiny_model(16, 0, classes=3), "1", "m", ("cat", "dog"))


def test_a_problem_is_told_without_credentials_logged_once_and_ended(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import requests

    holder = ChampionHolder(registry=None, poll_seconds=1)
    assert holder.not_ready_reason() == "no model loaded yet"
    registry = "http://user:secret@mlflow:5000"
    with caplog.at_level(logging.INFO, logger="imgclf.serving.holder"):
        for attempt in range(3):  # three polls, one outage
            refused = requests.ConnectionError(f"{registry}/api refused ({attempt})")
            holder.failed(f"registry {registry} unreachable", refused)
        reason = holder.not_ready_reason()
        holder.failed("no version of m has the alias champion yet")
    assert "secret" not in reason + caplog.text
    assert reason.startswith("registry http://***@mlflow:5000 unreachable since 20")
    assert reason.endswith("refused (2))")  # the latest error
    levels = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert [level for level, _ in levels] == ["ERROR", "INFO", "WARNING"], levels
    assert "unreachable: over after" in levels[1][1]
    assert "has the alias champion yet since" in holder.not_ready_reason()


def test_top_k_keeps_the_most_probable_first() -> None:
    from imgclf.serving.runtime import _most_probable

    by_class = {"owl": 0.2, "cat": 0.5, "fox": 0.3}
    assert list(_most_probable(by_class, None).items()) == list(by_class.items())
    assert list(_most_probable(by_class, 2).items()) == [("cat", 0.5), ("fox", 0.3)]
    assert list(_most_probable({"a": 0.5, "b": 0.5}, 1)) == ["a"]  # a tie: the model's order


# ------------------------------------------------------------------------ batcher


def model_of(version: str, forward) -> LoadedModel:
    return LoadedModel(version, "x", 2, ("cat", "dog"), forward)


def test_batcher_batches_concurrent_images_and_runs_each_on_its_model() -> None:
    sizes = []

    def forward_by(offset: float):
        def forward(batch: np.ndarray) -> np.ndarray:
            time.sleep(0.02)
            return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True) + offset

        return forward

    old, new = model_of("1", forward_by(0)), model_of("2", forward_by(10))
    batcher = Batcher(max_batch_size=8, on_batch=sizes.append)
    futures = [
        batcher.submit_many([np.full((2, 2, 3), i / 20, "float32")], old if i < 10 else new)[0]
        for i in range(20)
    ]
    results = [float(f.result(timeout=10)[0]) for f in futures]
    batcher.close()
    assert results == pytest.approx([i / 20 + (0 if i < 10 else 10) for i in range(20)])
    assert sum(sizes) == 20 and max(sizes) > 1 and max(sizes) <= 8


def test_batcher_never_waits_and_batches_what_queued_during_a_forward_pass() -> None:
    sizes: list[int] = []
    running, release = threading.Event(), threading.Event()

    def forward(batch: np.ndarray) -> np.ndarray:
        running.set()
        release.wait(timeout=10)  # the first pass holds until more images are queued
        return batch.reshape(len(batch), -1).mean(axis=1, keepdims=True)

    model = model_of("1", forward)
    batcher = Batcher(max_batch_size=8, on_batch=sizes.append)
    (first,) = batcher.submit_many([np.zeros((2, 2, 3), "float32")], model)
    assert running.wait(timeout=5)  # alone in the queue: it went to the model at once
    rest = batcher.submit_many([np.ones((2, 2, 3), "float32")] * 3, model)
    (single,) = batcher.submit_many([np.ones((2, 2, 3), "float32")], model)
    release.set()
    assert [f.result(timeout=5)[0] for f in [first, *rest, single]] == [0.0] + [1.0] * 4
    # A submit_many bigger than the room left is split, never lost.
    many = batcher.submit_many([np.zeros((2, 2, 3), "float32")] * 13, model)
    assert len([f.result(timeout=5) for f in many]) == 13
    batcher.close()
    assert sizes[:2] == [1, 4] and max(sizes) <= 8 and sum(sizes) == 18


def test_batcher_passes_model_errors_to_the_request() -> None:
    def broken(batch):
        raise RuntimeError("boom")

    batcher = Batcher(max_batch_size=4)
    (future,) = batcher.submit_many([np.zeros((2, 2, 3))], model_of("1", broken))
    with pytest.raises(RuntimeError, match="boom"):
        future.result(timeout=5)
    batcher.close()


# ------------------------------------------------------------------------------- OpenAPI


class ServedClasses:
    """A runtime as far as the document reads it: the served model's classes (None: no model)."""

    def __init__(self, classes: tuple[str, ...] | None) -> None:
        self.classes = classes


def _spec(classes: tuple[str, ...] | None = ("cat", "dog")) -> dict:
    runtime = ServedClasses(classes)
    return build_app(load_settings(), lambda: runtime).openapi()


def test_openapi_document_is_valid_and_documents_the_routes() -> None:
    from openapi_spec_validator import validate

    spec = _spec()
    validate(spec)
    paths = spec["paths"]
    assert {path: set(item) for path, item in paths.items()} == {
        "/predict": {"post"},
        "/predict_batch": {"post"},
        "/feedback": {"post"},
    }
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert all(item["post"]["security"] == [{"bearerAuth": []}] for item in paths.values())
    binary = {"type": "string", "format": "binary"}
    predict = paths["/predict"]["post"]["requestBody"]["content"]
    assert predict["multipart/form-data"]["schema"]["properties"]["image"] == binary
    assert predict["image/jpeg"]["schema"] == binary
    assert set(predict) == {
        "multipart/form-data",
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "application/octet-stream",
    }
    batch = paths["/predict_batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch["schema"]["properties"]["images"]["items"] == binary
    assert batch["schema"]["properties"]["images"]["maxItems"] == 32  # params.yaml's limit
    label = paths["/feedback"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert label["properties"]["label"]["enum"] == ["cat", "dog"]  # the classes served
    assert "`cat`, `dog`" in spec["info"]["description"]
    assert "`probability` is P(dog)" in spec["info"]["description"]
    assert "HTTPValidationError" not in str(spec)  # FastAPI's own 422 never answers


def feedback_labels(spec: dict) -> list[str] | None:
    body = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    return body["schema"]["properties"]["label"].get("enum")


def test_openapi_document_follows_the_served_models_classes() -> None:
    from openapi_spec_validator import validate

    runtime = ServedClasses(("owl", "cat", "fox"))
    app = build_app(load_settings(), lambda: runtime)
    spec = app.openapi()
    validate(spec)
    assert feedback_labels(spec) == ["owl", "cat", "fox"]
    assert "`owl`, `cat`, `fox`" in spec["info"]["description"]
    assert "the most probable class" in spec["info"]["description"]
    for name in ("Prediction", "BatchPrediction"):
        properties = spec["components"]["schemas"][name]["properties"]
        assert properties["label"]["enum"] == ["owl", "cat", "fox"]
        assert properties["probabilities"]["propertyNames"]["enum"] == ["owl", "cat", "fox"]
    for path in ("/predict", "/predict_batch"):
        (top_k,) = spec["paths"][path]["post"]["parameters"]
        assert (top_k["name"], top_k["schema"]["minimum"], top_k["schema"]["maximum"]) == (
            "top_k",
            1,
            3,
        )
    runtime.classes = ("cat", "dog")  # a hot swap to a model with other classes
    assert feedback_labels(app.openapi()) == ["cat", "dog"]
    runtime.classes = None
    unloaded = app.openapi()
    validate(unloaded)
    assert feedback_labels(unloaded) is None and "no model is loaded yet" in str(unloaded)
    offline = build_app(load_settings(), lambda: None).openapi()  # no runtime at all
    assert offline["paths"] == unloaded["paths"]


def test_openapi_lists_every_error_code_under_its_status() -> None:
    from imgclf.serving.errors import FEEDBACK_ERRORS

    spec = _spec()
    assert spec["components"]["schemas"]["ErrorCode"]["enum"] == [c.value for c in ErrorCode]
    for path, codes in [
        ("/predict", CLASSIFY_ERRORS),
        ("/predict_batch", CLASSIFY_ERRORS),
        ("/feedback", FEEDBACK_ERRORS),
    ]:
        responses = spec["paths"][path]["post"]["responses"]
        documented = {
            (int(status), code)
            for status, response in responses.items()
            for code in ErrorCode
            if f"`{code}`" in response["description"]
        }
        assert documented == {(code.status, code) for code in codes}, path
    # Only the router's own refusals (unknown path or method) belong to no route.
    unlisted = set(ErrorCode) - set(CLASSIFY_ERRORS) - set(FEEDBACK_ERRORS)
    assert unlisted == {ErrorCode.NOT_FOUND, ErrorCode.METHOD_NOT_ALLOWED}


# ------------------------------------------------------------------------------ the app


class ModelessRuntime:
    """A runtime without a model: every request that passes the body checks gets not_ready."""

    classes = None

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = MagicMock()

    async def classify(self, uploads, request_id, started, top_k, subject=None):
        raise ServiceError(ErrorCode.NOT_READY, "no model in unit tests")


class LastImageRefused(ModelessRuntime):
    """A runtime that refuses the last image of every request, naming its position."""

    async def classify(self, uploads, request_id, started, top_k, subject=None):
        raise ServiceError(ErrorCode.NOT_AN_IMAGE, "refused", index=len(uploads) - 1)


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = load_settings()
    runtime = ModelessRuntime(settings)
    return TestClient(build_app(settings, lambda: runtime))


def form(field: str, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (f"{n}.png", encode(photo(), "PNG"), "image/png")) for n in range(count)]


def test_one_image_per_predict_and_every_extra_is_too_many(client: TestClient) -> None:
    assert client.post("/predict", files=form("image", 1)).json()["error"] == "not_ready"
    for count in (2, 3):
        response = client.post("/predict", files=form("image", count))
        assert (response.status_code, response.json()["error"]) == (413, "too_many_images")


def test_predict_batch_takes_its_limit_and_refuses_more(client: TestClient) -> None:
    limit = client.app.state.runtime().settings.max_images_per_request
    full = client.post("/predict_batch", files=form("images", limit))
    assert full.json()["error"] == "not_ready"
    for count in (limit + 1, limit + 2):
        response = client.post("/predict_batch", files=form("images", count))
        assert (response.status_code, response.json()["error"]) == (413, "too_many_images")


@pytest.mark.parametrize("top_k", ["0", "-1", "x", "1.5", "", "²"])
def test_top_k_must_be_a_positive_whole_number(client: TestClient, top_k: str) -> None:
    for route, field in (("/predict", "image"), ("/predict_batch", "images")):
        response = client.post(route, params={"top_k": top_k}, files=form(field, 1))
        assert refusal(response) == (422, "invalid_top_k"), (route, top_k)
    passes = client.post("/predict", params={"top_k": "2"}, files=form("image", 1))
    assert refusal(passes) == (503, "not_ready")  # on to the model, which bounds it by K


def multipart(boundary: bytes, *parts: tuple[bytes, bytes]) -> bytes:
    """A multipart body of (Content-Disposition parameters, content) parts, written by hand."""
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (boundary, header, data)
        for header, data in parts
    )
    return body + b"--%s--\r\n" % boundary


def refusal(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


@pytest.mark.parametrize("route", ["/predict", "/predict_batch"])
def test_a_form_with_only_a_text_field_has_no_file(client: TestClient, route: str) -> None:
    response = client.post(route, files={"note": (None, "hi")})
    assert refusal(response) == (400, "no_file")


def test_a_part_without_a_filename_is_a_text_field_not_a_file(client: TestClient) -> None:
    """curl `-F image=<cat.png` sends the bytes with no filename: by RFC 7578 that is a text field
    (Starlette decodes it to a str), so it is no file, while the same part named as a file is."""
    png = encode(photo(), "PNG")
    headers = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    as_text = multipart(b"b0undary", (b'name="image"', png))
    as_file = multipart(b"b0undary", (b'name="image"; filename="cat.png"', png))
    assert refusal(client.post("/predict", content=as_text, headers=headers)) == (400, "no_file")
    assert refusal(client.post("/predict", content=as_file, headers=headers)) == (503, "not_ready")


def test_a_boundary_that_never_appears_is_bad_multipart(client: TestClient) -> None:
    """The same body passes the form checks under its own boundary and fails under another."""
    body = multipart(b"sent", (b'name="image"; filename="cat.png"', encode(photo(), "PNG")))

    def post(boundary: str):
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        return client.post("/predict", content=body, headers=headers)

    assert refusal(post("sent")) == (503, "not_ready")
    assert refusal(post("declared")) == (400, "bad_multipart")


def test_a_bad_image_is_named_by_its_position_in_a_batch_only() -> None:
    settings = load_settings()
    client = TestClient(build_app(settings, lambda: LastImageRefused(settings)))
    body = client.post("/predict_batch", files=form("images", 3)).json()
    assert (body["error"], body["index"]) == ("not_an_image", 2)
    body = client.post("/predict", files=form("image", 1)).json()
    assert body["error"] == "not_an_image" and "index" not in body


def test_a_wrong_method_or_a_missing_asset_gets_an_error_body(client: TestClient) -> None:
    wrong_method = client.get("/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_method.json() == {"error": "method_not_allowed", "detail": "Method Not Allowed"}
    missing = client.get("/docs/assets/other.css")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_docs_page_keeps_no_token_in_the_browser(client: TestClient) -> None:
    page = client.get("/docs").text
    assert "persistAuthorization" not in page and "tryItOutEnabled" in page


def _get(app, path: str) -> dict:
    """The response-start message of GET `path` through an ASGI app."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent[0] | {"body": b"".join(m.get("body", b"") for m in sent[1:])}


def test_only_the_api_and_bentoml_probes_are_served(client: TestClient) -> None:
    served = ServedPaths(ok_app, api=client.app)
    for path in ("/livez", "/metrics", "/predict", "/docs", "/openapi.json", "/docs/assets/x"):
        assert _get(served, path)["status"] == 200, path
    for path in ("/docs.json", "/schema.json", "/static_content/index.css", "/predict/x", "/a"):
        answer = _get(served, path)
        assert (answer["status"], json.loads(answer["body"])["error"]) == (404, "not_found"), path
    index = _get(served, "/")
    assert index["status"] == 307 and (b"location", b"/docs") in index["headers"]
