"""The BentoML service end to end: a real `bentoml serve` on 127.0.0.1, real HTTP requests, a
real `mlflow server` on loopback (the session's `mlflow_server` fixture,
tests/support/mlflow_server.py) whose `@champion` alias the service polls every 2 s. Each Registry
registers under a name of its own, so modules sharing the session's server never see each other's
models.

One server for the whole module: it starts before any champion exists (not ready), becomes
ready once one is registered, answers predictions/auth/bad-input cases, follows an alias move,
and finally gets SIGTERM, after which the prediction log must hold every answered image.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.helpers import VENV_BIN, BentoServer, Registry, mint_token, mlflow_uris

SECRET = "test-secret-0123456789abcdef0123456789"
AUDIENCE = "imgclf"
POLL_SECONDS = 2
MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000
STARTUP_TIMEOUT = 120


def token(**claims) -> str:
    return mint_token(SECRET, AUDIENCE, **claims)


def auth() -> dict[str, str]:
    """A fresh valid bearer header: a token minted at import would expire in a long CI run."""
    return {"Authorization": f"Bearer {token()}"}


class Server(BentoServer):
    """The service under test: this module's registry, limits, prediction DB and JWT secret;
    returns once /livez answers (not /readyz: there may be no champion yet)."""

    def __init__(self, tmp: Path, tracking_uri: str, model_name: str) -> None:
        self.db_url = f"sqlite:///{tmp / 'predictions.db'}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_"))},
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": tracking_uri,
            "BENTOML_HOME": str(tmp / "bentoml"),
            "IMGCLF_SERVE_MODEL_NAME": model_name,
            "IMGCLF_SERVE_POLL_SECONDS": str(POLL_SECONDS),
            "IMGCLF_SERVE_MAX_BYTES": str(MAX_BYTES),
            "IMGCLF_SERVE_MAX_PIXELS": str(MAX_PIXELS),
            "IMGCLF_SERVE_MAX_IMAGES_PER_REQUEST": "8",
            "IMGCLF_PREDICTION_DB_URL": self.db_url,
            "IMGCLF_JWT_SECRET": SECRET,
            "IMGCLF_JWT_AUDIENCE": AUDIENCE,
        }
        super().__init__(env, tmp / "server.log")
        try:
            self.wait_for("/livez", STARTUP_TIMEOUT)
        except BaseException:
            self.stop()  # the fixture never gets a server to stop
            raise


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> Iterator[Registry]:
    with mlflow_uris(mlflow_server):
        yield Registry(tmp_path_factory.mktemp("registry"), mlflow_server)


@pytest.fixture(scope="module")
def server(registry: Registry, tmp_path_factory: pytest.TempPathFactory):
    server = Server(tmp_path_factory.mktemp("server"), registry.uri, registry.model_name)
    yield server
    server.stop()


ANSWERED: list[tuple[str, int]] = []  # (request_id, images) of every 200 answer


def post(server: Server, path: str, **kwargs) -> requests.Response:
    kwargs.setdefault("headers", auth())
    response = requests.post(server.url + path, timeout=60, **kwargs)
    if response.status_code == 200:
        body = response.json()
        rows = body if isinstance(body, list) else [body]
        ANSWERED.append((rows[0]["request_id"], len(rows)))
    return response


@pytest.fixture(scope="module")
def ready(server: Server, registry: Registry) -> dict[str, float]:
    """Not ready without a champion; ready within the poll interval (+ load) after one."""
    photo = encode(Image.new("RGB", (64, 64), "gray"), "JPEG")
    # Wait (polling, with a deadline) until a poll has found no champion: the 503's detail
    # turns from "no model loaded yet" into the poller's "no model has the alias yet".
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        before = post(server, "/predict", files=upload(photo))
        if before.status_code != 503 or "alias" in before.json().get("detail", ""):
            break
        assert time.monotonic() < deadline, f"no alias poll within {STARTUP_TIMEOUT}s"
        time.sleep(0.2)
    facts = {
        "readyz_before": requests.get(server.url + "/readyz", timeout=5).status_code,
        "predict_before": before.status_code,
    }
    facts["version"] = registry.promote(seed=0)
    facts["ready_after_s"] = server.wait_for("/readyz", 60)  # counted from the alias being set
    return facts


@pytest.fixture(scope="module")
def photos(sample_data_dir: Path) -> list[Path]:
    return (
        sorted((sample_data_dir / "cat").glob("*.jpg"))[:4]
        + sorted((sample_data_dir / "dog").glob("*.jpg"))[:4]
    )


def upload(path_or_bytes, name: str = "image", filename: str = "x.jpg", ctype=None) -> dict:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return {name: (filename, data) if ctype is None else (filename, data, ctype)}


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------


def test_not_ready_until_a_champion_exists(server: Server, ready: dict) -> None:
    assert ready["readyz_before"] == 503
    assert ready["predict_before"] == 503
    assert requests.get(server.url + "/livez", timeout=5).status_code == 200
    # One poll + loading the model; generous because two busy cores can stall either.
    assert ready["ready_after_s"] < POLL_SECONDS + 45


def test_predict_matches_evaluate_probability(
    server: Server, ready: dict, registry: Registry, photos: list[Path]
) -> None:
    answers = [post(server, "/predict", files=upload(p, filename=p.name)) for p in photos]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    version = bodies[0]["model_version"]
    expected = registry.expected(version, photos)
    for body, p, answer in zip(bodies, expected, answers, strict=True):
        assert set(body) == {"label", "probability", "confidence", "model_version", "request_id"}
        assert body["model_version"] == version == ready["version"]
        assert body["probability"] == pytest.approx(float(p), abs=1e-5)
        assert body["label"] == ("dog" if p >= 0.5 else "cat")
        assert body["confidence"] == pytest.approx(max(p, 1 - p), abs=1e-5)
        assert answer.headers["X-Request-ID"] == body["request_id"]
    # The same photo as a raw body gives the same answer.
    raw = post(
        server,
        "/predict",
        data=photos[0].read_bytes(),
        headers={**auth(), "Content-Type": "image/jpeg"},
    )
    assert raw.json()["probability"] == pytest.approx(bodies[0]["probability"], abs=1e-7)


def test_predict_batch(server: Server, ready: dict, registry: Registry, photos: list[Path]) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:5]]
    response = post(server, "/predict_batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body] == list(range(5))
    assert len({row["request_id"] for row in body}) == 1
    expected = registry.expected(body[0]["model_version"], photos[:5])
    assert [row["probability"] for row in body] == pytest.approx(expected.tolist(), abs=1e-5)
    too_many = [("images", (p.name, p.read_bytes())) for p in (photos * 2)[:9]]
    assert post(server, "/predict_batch", files=too_many).status_code == 413


def test_other_formats_and_exif_rotation_are_standardised(
    server: Server, ready: dict, registry: Registry, photos: list[Path], tmp_path: Path
) -> None:
    photo = Image.open(photos[0]).convert("RGB")
    reference = tmp_path / "reference.png"
    photo.save(reference)
    expected = float(registry.expected(ready["version"], [reference])[0])
    for fmt, options in [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})]:
        response = post(server, "/predict", files=upload(encode(photo, fmt, **options)))
        assert response.status_code == 200, (fmt, response.text)
        assert response.json()["probability"] == pytest.approx(expected, abs=1e-5), fmt
    # Stored sideways with EXIF orientation 6 ("rotate 90 CW to view"): served upright.
    sideways = photo.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = tmp_path / "upright.png"
    Image.open(io.BytesIO(encode(sideways, "JPEG", quality=95, exif=exif))).save(upright)
    rotated_jpeg = encode(sideways, "JPEG", quality=95, exif=exif)
    from PIL import ImageOps

    ImageOps.exif_transpose(Image.open(io.BytesIO(rotated_jpeg))).save(upright)
    expected_rotated = float(registry.expected(ready["version"], [upright])[0])
    response = post(server, "/predict", files=upload(rotated_jpeg))
    assert response.status_code == 200, response.text
    assert response.json()["probability"] == pytest.approx(expected_rotated, abs=1e-5)


@pytest.mark.parametrize(
    ("header", "path"),
    [
        (None, "/predict"),
        ("Bearer", "/predict"),
        ("Bearer not.a.jwt", "/predict"),
        ("Basic dXNlcjpwYXNz", "/predict"),
        ("expired", "/predict"),
        ("wrong-audience", "/predict"),
        ("no-exp", "/predict"),
        ("wrong-secret", "/predict"),
        ("alg-none", "/predict_batch"),
        (None, "/predict_batch"),
    ],
)
def test_auth_rejects(server: Server, ready: dict, photos: list[Path], header, path) -> None:
    import jwt

    special = {
        "expired": f"Bearer {token(exp=time.time() - 5)}",
        "wrong-audience": f"Bearer {token(aud='someone-else')}",
        "no-exp": f"Bearer {token(exp=None)}",
        "wrong-secret": "Bearer "
        + jwt.encode({"aud": AUDIENCE, "exp": time.time() + 60}, "x" * 40, "HS256"),
        "alg-none": "Bearer "
        + jwt.encode({"aud": AUDIENCE, "exp": time.time() + 60}, None, algorithm="none"),
    }
    headers = {} if header is None else {"Authorization": special.get(header, header)}
    field = "image" if path == "/predict" else "images"
    response = post(server, path, files=upload(photos[0], name=field), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_health_and_metrics_are_open(server: Server, ready: dict) -> None:
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert requests.get(server.url + path, timeout=5).status_code == 200, path


def test_openapi_document_is_open_and_covers_the_live_routes(server: Server, ready: dict) -> None:
    response = requests.get(server.url + "/openapi.json", timeout=5)  # no token needed
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    spec = response.json()
    batch = spec["paths"]["/predict_batch"]["post"]["requestBody"]["content"]
    assert batch["multipart/form-data"]["schema"]["properties"]["images"]["maxItems"] == 8
    assert f"at most {MAX_BYTES} bytes and {MAX_PIXELS} pixels" in spec["info"]["description"]
    # Every documented operation exists on the live server (no 404/405) ...
    for path, item in spec["paths"].items():
        for method in item:
            answer = requests.request(method, server.url + path, headers=auth(), timeout=30)
            assert answer.status_code not in (404, 405), (method, path, answer.status_code)
    # ... and what is not documented is not served.
    for path in ("/predict/x", "/classify", "/admin"):
        assert requests.post(server.url + path, headers=auth(), timeout=5).status_code == 404
    assert requests.get(server.url + "/docs.json", timeout=5).status_code == 401  # BentoML's


def test_docs_page_loads_without_a_token_and_its_authorize_scheme_works(
    server: Server, ready: dict, photos: list[Path]
) -> None:
    import re

    page = requests.get(server.url + "/docs", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "'/openapi.json'" in page.text
    assets = re.findall(r'(?:href|src)="(/[^"]+)"', page.text)
    assert len(assets) == 3  # script, style sheet, icon: all served here, none from a CDN
    for asset in assets:
        assert requests.get(server.url + asset, timeout=5).status_code == 200, asset
    # What the Authorize button sends, per the document's scheme, to the documented form field.
    spec = requests.get(server.url + "/openapi.json", timeout=5).json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operation = spec["paths"]["/predict"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    field = next(
        iter(operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])
    )
    files = upload(photos[0], name=field)
    assert post(server, "/predict", files=files, headers={}).status_code == 401
    answer = post(server, "/predict", files=files, headers={"Authorization": f"Bearer {token()}"})
    assert answer.status_code == 200, answer.text


def _bad_inputs(photo: Path) -> dict[str, tuple[dict, int, str]]:
    good = photo.read_bytes()
    rgb = Image.open(photo).convert("RGB")
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    awebp = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    deep = encode(Image.fromarray(np.full((64, 64), 40000, np.uint16)), "PNG")
    raw = {"Content-Type": "image/jpeg"}
    return {
        "wrong content type": (
            {"data": good, "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        "json body": ({"json": {"image": "http://127.0.0.1/x.jpg"}}, 415, "unsupported_media_type"),
        "part declared text": (
            {"files": upload(good, ctype="text/plain")},
            415,
            "unsupported_media_type",
        ),
        "not an image": ({"files": upload(b"hello, this is text\n" * 10)}, 415, "not_an_image"),
        "gif": ({"files": upload(encode(rgb, "GIF"))}, 415, "unsupported_format"),
        "truncated": ({"files": upload(good[: len(good) // 2])}, 422, "truncated"),
        "empty body": ({"data": b"", "headers": raw}, 400, "empty"),
        "empty file": ({"files": upload(b"")}, 400, "empty"),
        "no file field": ({"data": {"note": "hi"}, "files": {}}, 415, "unsupported_media_type"),
        "over byte limit": (
            {"files": upload(encode(Image.fromarray(noise), "PNG"))},
            413,
            "too_many_bytes",
        ),
        "over byte limit raw": (
            {"data": b"\xff" * (MAX_BYTES + 1), "headers": raw},
            413,
            "too_many_bytes",
        ),
        "over pixel limit": (
            {"files": upload(encode(Image.new("RGB", (2100, 2000)), "PNG"))},
            413,
            "too_many_pixels",
        ),
        "decompression bomb": (
            {"files": upload(encode(Image.new("1", (10000, 10000)), "PNG"))},
            413,
            "too_many_pixels",
        ),
        "animated png": ({"files": upload(apng)}, 422, "animated"),
        "animated webp": ({"files": upload(awebp)}, 422, "animated"),
        "16-bit png": ({"files": upload(deep)}, 422, "high_bit_depth"),
    }


def test_bad_inputs_get_a_clear_4xx(server: Server, ready: dict, photos: list[Path]) -> None:
    failures = []
    for name, (kwargs, status, code) in _bad_inputs(photos[0]).items():
        headers = {**auth(), **kwargs.pop("headers", {})}
        response = post(server, "/predict", headers=headers, **kwargs)
        body = response.json() if response.headers.get("content-type") == "application/json" else {}
        if response.status_code != status or body.get("error") != code or not body.get("detail"):
            failures.append((name, response.status_code, response.text[:200]))
    assert not failures
    # A bad image inside a batch names its position; the service is still fine afterwards.
    files = [("images", ("a.jpg", photos[0].read_bytes())), ("images", ("b.jpg", b"garbage"))]
    response = post(server, "/predict_batch", files=files)
    assert (response.status_code, response.json()["index"]) == (415, 1)
    assert post(server, "/predict", files=upload(photos[0])).status_code == 200


def test_metrics_count_requests_classes_and_confidence(server: Server, ready: dict) -> None:
    text = requests.get(server.url + "/metrics", timeout=5).text
    for name in (
        'imgclf_requests_total{endpoint="predict",status="200"}',
        'imgclf_requests_total{endpoint="predict",status="415"}',
        'imgclf_request_latency_seconds_bucket{endpoint="predict",le="0.5"}',
        "imgclf_predictions_total{label=",
        "imgclf_prediction_confidence_bucket{label=",
        "imgclf_inference_batch_size_count",
        "imgclf_model_version",
    ):
        assert name in text, name


def test_alias_move_switches_version_without_dropping_requests(
    server: Server, ready: dict, registry: Registry, photos: list[Path]
) -> None:
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    def hammer() -> None:
        while not stop.is_set():
            response = post(server, "/predict", files=upload(photos[1]))
            seen.append((response.status_code, response.json().get("model_version")))

    def answers_after_switch(version: str) -> int:
        versions = [v for _, v in list(seen)]
        return len(versions) - versions.index(version) if version in versions else 0

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(hammer) for _ in range(2)]
        new_version = registry.promote(seed=1)
        # Until several answers came from the new version (enough to see any flapping back),
        # polling with a deadline; a stuck hammer fails the test instead of hanging it.
        deadline = time.monotonic() + POLL_SECONDS + 60
        while time.monotonic() < deadline and answers_after_switch(new_version) < 6:
            assert not any(w.done() for w in workers), [w.exception() for w in workers]
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.result(timeout=120)
    assert all(status == 200 for status, _ in seen), seen
    versions = [v for _, v in seen]
    assert versions[-1] == new_version != ready["version"]
    switch = versions.index(new_version)
    assert set(versions[switch:]) == {new_version}  # no flapping back after the swap
    body = post(server, "/predict", files=upload(photos[2])).json()
    expected = float(registry.expected(new_version, [photos[2]])[0])
    assert body["probability"] == pytest.approx(expected, abs=1e-5)


def test_sigterm_flushes_every_prediction_to_the_log(
    server: Server, ready: dict, photos: list[Path]
) -> None:
    import sqlalchemy as sa

    from imgclf.monitoring.schema import predictions

    burst = 12
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda i: post(server, "/predict", files=upload(photos[i % len(photos)])),
                range(burst),
            )
        )
    assert all(a.status_code == 200 for a in answers)
    assert server.stop() == 0
    engine = sa.create_engine(server.db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(predictions)).mappings().all()
    engine.dispose()
    assert len(rows) == sum(n for _, n in ANSWERED)
    assert {r["request_id"] for r in rows} == {rid for rid, _ in ANSWERED}
    last = {r["request_id"]: r for r in rows}[answers[0].json()["request_id"]]
    image = Image.open(photos[0])
    assert (last["width"], last["height"]) == image.size
    import hashlib

    assert last["sha256"] == hashlib.sha256(photos[0].read_bytes()).hexdigest()
    assert last["latency_ms"] > 0 and last["model_version"] == answers[0].json()["model_version"]
