"""The BentoML service end to end: a real `bentoml serve` on 127.0.0.1, real HTTP requests, a
real `mlflow server` on loopback whose `@champion` alias the service polls every 2 s.

The server is the session's `live_service` (tests/support/service.py), shared with
test_service_fuzz.py: it started before any champion existed, and the fixture recorded what it
answered then. Tests here count only what they sent, and compare answers with the version each
answer names; the SIGTERM test stops a server of its own.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from tests.support.service import (
    AUDIENCE,
    MAX_BYTES,
    MAX_IMAGES,
    MAX_PIXELS,
    MAX_TOKEN_LIFETIME,
    POLL_SECONDS,
    LiveService,
    Server,
    answer_on,
    auth,
    held_request,
    token,
)

# A two-class answer: `probability` (P(second class)) is kept beside the K-class fields.
BINARY_ANSWER = {
    "label",
    "probability",
    "confidence",
    "probabilities",
    "model_version",
    "request_id",
}


def post(service: LiveService | Server, path: str, **kwargs) -> requests.Response:
    kwargs.setdefault("headers", auth())
    return requests.post(service.url + path, timeout=60, **kwargs)


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


def test_not_ready_until_a_champion_exists(live_service: LiveService) -> None:
    startup = live_service.startup
    assert (startup.readyz_before, startup.predict_before) == (503, 503)
    assert "has the alias champion yet since" in startup.readyz_body_before  # says why
    assert requests.get(live_service.url + "/livez", timeout=5).status_code == 200
    # One poll + loading the model; generous because two busy cores can stall either.
    assert startup.ready_after_s < POLL_SECONDS + 45


def test_predict_matches_evaluate_probability(
    live_service: LiveService, photos: list[Path]
) -> None:
    answers = [post(live_service, "/predict", files=upload(p, filename=p.name)) for p in photos]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    version = bodies[0]["model_version"]
    expected = live_service.registry.expected(version, photos)
    for body, (cat, p), answer in zip(bodies, expected, answers, strict=True):
        assert set(body) == BINARY_ANSWER
        assert body["model_version"] == version
        assert body["probability"] == pytest.approx(float(p), abs=1e-5)  # P(second class)
        assert body["label"] == ("dog" if p >= 0.5 else "cat")
        assert body["confidence"] == pytest.approx(max(p, 1 - p), abs=1e-5)
        assert list(body["probabilities"]) == ["cat", "dog"]  # the model's order
        assert list(body["probabilities"].values()) == pytest.approx([cat, p], abs=1e-5)
        assert answer.headers["X-Request-ID"] == body["request_id"]
    # The same photo as a raw body gives the same answer.
    raw = post(
        live_service,
        "/predict",
        data=photos[0].read_bytes(),
        headers={**auth(), "Content-Type": "image/jpeg"},
    )
    assert raw.json()["probability"] == pytest.approx(bodies[0]["probability"], abs=1e-7)


def test_predict_batch(live_service: LiveService, photos: list[Path]) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos[:5]]
    response = post(live_service, "/predict_batch", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["index"] for row in body] == list(range(5))
    assert len({row["request_id"] for row in body}) == 1
    expected = live_service.registry.expected(body[0]["model_version"], photos[:5])
    assert [row["probability"] for row in body] == pytest.approx(expected[:, 1], abs=1e-5)
    for count in (MAX_IMAGES + 1, MAX_IMAGES + 2):
        too_many = [("images", (p.name, p.read_bytes())) for p in (photos * 2)[:count]]
        refused = post(live_service, "/predict_batch", files=too_many)
        assert (refused.status_code, refused.json()["error"]) == (413, "too_many_images"), count


def test_other_formats_and_exif_rotation_are_standardised(
    live_service: LiveService, photos: list[Path], tmp_path: Path
) -> None:
    def expected(answer: requests.Response, reference: Path) -> float:
        version = answer.json()["model_version"]
        return float(live_service.registry.expected(version, [reference])[0, 1])

    photo = Image.open(photos[0]).convert("RGB")
    reference = tmp_path / "reference.png"
    photo.save(reference)
    for fmt, options in [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})]:
        response = post(live_service, "/predict", files=upload(encode(photo, fmt, **options)))
        assert response.status_code == 200, (fmt, response.text)
        assert response.json()["probability"] == pytest.approx(expected(response, reference)), fmt
    # Stored sideways with EXIF orientation 6 ("rotate 90 CW to view"): served upright.
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_jpeg = encode(photo.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)
    upright = tmp_path / "upright.png"
    ImageOps.exif_transpose(Image.open(io.BytesIO(rotated_jpeg))).save(upright)
    response = post(live_service, "/predict", files=upload(rotated_jpeg))
    assert response.status_code == 200, response.text
    assert response.json()["probability"] == pytest.approx(expected(response, upright), abs=1e-5)


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
        ("too-long-lived", "/predict"),
        ("wrong-secret", "/predict"),
        ("alg-none", "/predict_batch"),
        (None, "/predict_batch"),
    ],
)
def test_auth_rejects(live_service: LiveService, photos: list[Path], header, path) -> None:
    import jwt

    special = {
        "expired": f"Bearer {token(exp=time.time() - 5)}",
        "wrong-audience": f"Bearer {token(aud='someone-else')}",
        "no-exp": f"Bearer {token(exp=None)}",
        "too-long-lived": f"Bearer {token(exp=time.time() + MAX_TOKEN_LIFETIME + 600)}",
        "wrong-secret": "Bearer "
        + jwt.encode({"aud": AUDIENCE, "exp": time.time() + 60}, "x" * 40, "HS256"),
        "alg-none": "Bearer "
        + jwt.encode({"aud": AUDIENCE, "exp": time.time() + 60}, None, algorithm="none"),
    }
    headers = {} if header is None else {"Authorization": special.get(header, header)}
    field = "image" if path == "/predict" else "images"
    response = post(live_service, path, files=upload(photos[0], name=field), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_two_authorization_headers_are_refused(live_service: LiveService) -> None:
    """Even two valid ones: proxies and frameworks disagree on which one counts."""
    head = {**auth(), "authorization": auth()["Authorization"], "Content-Length": "0"}
    held = held_request(live_service.url, "/feedback", head)
    with held:
        status, _, body = answer_on(held, 30)
    assert (status, body["error"]) == (401, "unauthorized")


def test_health_and_metrics_are_open(live_service: LiveService) -> None:
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert requests.get(live_service.url + path, timeout=5).status_code == 200, path


def test_openapi_document_is_open_and_covers_the_live_routes(live_service: LiveService) -> None:
    url = live_service.url
    response = requests.get(url + "/openapi.json", timeout=5)  # no token needed
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    spec = response.json()
    batch = spec["paths"]["/predict_batch"]["post"]["requestBody"]["content"]
    assert batch["multipart/form-data"]["schema"]["properties"]["images"]["maxItems"] == MAX_IMAGES
    assert f"at most {MAX_BYTES} bytes and {MAX_PIXELS} pixels" in spec["info"]["description"]
    # Every documented operation exists on the live server (no 404/405) ...
    for path, item in spec["paths"].items():
        for method in item:
            answer = requests.request(method, url + path, headers=auth(), timeout=30)
            assert answer.status_code not in (404, 405), (method, path, answer.status_code)
    # ... and what is not documented is not served, BentoML's own pages included.
    for path in ("/predict/x", "/classify", "/admin", "/docs.json", "/schema.json"):
        missing = requests.post(url + path, headers=auth(), timeout=5)
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found"), path
        assert requests.get(url + path, headers=auth(), timeout=5).status_code == 404, path
    wrong_method = requests.get(url + "/predict", headers=auth(), timeout=5)
    assert (wrong_method.status_code, wrong_method.json()["error"]) == (405, "method_not_allowed")
    index = requests.get(url + "/", headers=auth(), timeout=5, allow_redirects=False)
    assert index.is_redirect and index.headers["location"] == "/docs"


def test_docs_page_loads_without_a_token_and_its_authorize_scheme_works(
    live_service: LiveService, photos: list[Path]
) -> None:
    page = requests.get(live_service.url + "/docs", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "'/openapi.json'" in page.text
    assets = re.findall(r'(?:href|src)="(/[^"]+)"', page.text)
    assert len(assets) == 3  # script, style sheet, icon: all served here, none from a CDN
    for asset in assets:
        assert requests.get(live_service.url + asset, timeout=5).status_code == 200, asset
    # What the Authorize button sends, per the document's scheme, to the documented form field.
    spec = requests.get(live_service.url + "/openapi.json", timeout=5).json()
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    operation = spec["paths"]["/predict"]["post"]
    assert operation["security"] == [{"bearerAuth": []}]
    field = next(
        iter(operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"])
    )
    files = upload(photos[0], name=field)
    assert post(live_service, "/predict", files=files, headers={}).status_code == 401
    bearer = {"Authorization": f"Bearer {token()}"}
    answer = post(live_service, "/predict", files=files, headers=bearer)
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
        "url-encoded form": ({"data": {"note": "hi"}}, 415, "unsupported_media_type"),
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
        "two files": (
            {"files": [("image", ("a.jpg", good)), ("image", ("b.jpg", good))]},
            413,
            "too_many_images",
        ),
        "three files": (
            {"files": [("image", (f"{n}.jpg", good)) for n in range(3)]},
            413,
            "too_many_images",
        ),
        "animated png": ({"files": upload(apng)}, 422, "animated"),
        "animated webp": ({"files": upload(awebp)}, 422, "animated"),
        "16-bit png": ({"files": upload(deep)}, 422, "high_bit_depth"),
    }


def test_bad_inputs_get_a_clear_4xx(live_service: LiveService, photos: list[Path]) -> None:
    failures = []
    for name, (kwargs, status, code) in _bad_inputs(photos[0]).items():
        headers = {**auth(), **kwargs.pop("headers", {})}
        response = post(live_service, "/predict", headers=headers, **kwargs)
        body = response.json() if response.headers.get("content-type") == "application/json" else {}
        if response.status_code != status or body.get("error") != code or not body.get("detail"):
            failures.append((name, response.status_code, response.text[:200]))
    assert not failures
    # A bad image inside a batch names its position; the service is still fine afterwards.
    files = [("images", ("a.jpg", photos[0].read_bytes())), ("images", ("b.jpg", b"garbage"))]
    response = post(live_service, "/predict_batch", files=files)
    assert (response.status_code, response.json()["index"]) == (415, 1)
    assert post(live_service, "/predict", files=upload(photos[0])).status_code == 200


def test_metrics_count_requests_classes_and_confidence(
    live_service: LiveService, photos: list[Path]
) -> None:
    assert post(live_service, "/predict", files=upload(photos[0])).status_code == 200
    assert post(live_service, "/predict", files=upload(b"not an image")).status_code == 415
    text = requests.get(live_service.url + "/metrics", timeout=5).text
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
    live_service: LiveService, photos: list[Path]
) -> None:
    registry = live_service.registry
    old_version = post(live_service, "/predict", files=upload(photos[1])).json()["model_version"]
    stop = threading.Event()
    # (sent, answered, status, version) per request: with two clients, answers arrive out of
    # send order, so "no flapping" is judged by send time against the first new answer.
    seen: list[tuple[float, float, int, str | None]] = []

    def hammer() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            response = post(live_service, "/predict", files=upload(photos[1]))
            version = response.json().get("model_version")
            seen.append((sent, time.monotonic(), response.status_code, version))

    def answers_from(version: str) -> int:
        return sum(v == version for *_, v in list(seen))

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(hammer) for _ in range(2)]
        new_version = registry.promote(seed=1)
        # Until several answers came from the new version (enough to see any flapping back),
        # polling with a deadline; a stuck hammer fails the test instead of hanging it.
        deadline = time.monotonic() + POLL_SECONDS + 60
        while time.monotonic() < deadline and answers_from(new_version) < 6:
            assert not any(w.done() for w in workers), [w.exception() for w in workers]
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.result(timeout=120)
    assert all(status == 200 for _, _, status, _ in seen), seen
    assert new_version != old_version and seen[-1][3] == new_version
    first_new_answer = min(answered for _, answered, _, v in seen if v == new_version)
    sent_later = {v for sent, _, _, v in seen if sent > first_new_answer}
    assert sent_later == {new_version}  # no flapping back after the swap
    body = post(live_service, "/predict", files=upload(photos[2])).json()
    expected = float(registry.expected(new_version, [photos[2]])[0, 1])
    assert body["probability"] == pytest.approx(expected, abs=1e-5)


def test_sigterm_flushes_every_prediction_to_the_log(
    own_server: Server, photos: list[Path]
) -> None:
    """Every image this test got an answer for is a row in its own server's log after SIGTERM."""
    import sqlalchemy as sa

    from imgclf.monitoring.schema import predictions

    def single(i: int) -> requests.Response:
        return post(own_server, "/predict", files=upload(photos[i % len(photos)]))

    def batch(i: int) -> requests.Response:
        files = [("images", (p.name, p.read_bytes())) for p in photos[i % 4 : i % 4 + 3]]
        return post(own_server, "/predict_batch", files=files)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = [*pool.map(single, range(12)), *pool.map(batch, range(3))]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    bodies = [a.json() for a in answers]
    rows_sent = [row for body in bodies for row in (body if isinstance(body, list) else [body])]
    assert own_server.stop() == 0
    engine = sa.create_engine(own_server.db_url)
    with engine.connect() as conn:
        logged = conn.execute(sa.select(predictions)).mappings().all()
    engine.dispose()
    assert len(logged) == len(rows_sent) == 12 + 3 * 3
    assert {(r["request_id"], r["item"]) for r in logged} == {
        (row["request_id"], row.get("index", 0)) for row in rows_sent
    }
    first = {r["request_id"]: r for r in logged}[bodies[0]["request_id"]]
    assert (first["width"], first["height"]) == Image.open(photos[0]).size
    assert first["sha256"] == hashlib.sha256(photos[0].read_bytes()).hexdigest()
    assert first["latency_ms"] > 0 and first["model_version"] == bodies[0]["model_version"]
