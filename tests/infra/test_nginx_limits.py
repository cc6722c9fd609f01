"""deploy/nginx/imgclf.conf's body limit per route and its bearer-token check, through a real
nginx (tests/infra/test_nginx_proxy.py's) in front of the session's champion service.

The limits are measured, not read from the file, and without sending bodies: to a request with
`Expect: 100-continue` nginx answers `100 Continue` when it is about to read a body it takes, and
413 at once to a declared length over the limit.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import urllib3
import yaml

from imgclf.serving.app import MAX_FEEDBACK_BYTES, MULTIPART_OVERHEAD
from tests.infra.test_nginx_proxy import CONF, Answer, Nginx, http1, read_answer, running
from tests.support.helpers import REPO_ROOT

SERVE = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["serve"]
ONE_IMAGE = SERVE["max_bytes"] + MULTIPART_OVERHEAD  # the service's own limits (app.py)
BATCH = SERVE["max_batch_bytes"]
PROTECTED = ("/predict", "/predict_batch", "/feedback")
COMMENT = b"\xff\xfe"  # a JPEG COM segment: skipped by every decoder


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, champion_service) -> Iterator[Nginx]:
    upstream = f"127.0.0.1:{champion_service.port}"
    with running(tmp_path_factory.mktemp("nginx"), upstream, CONF.read_text()) as nginx:
        yield nginx


def announce(proxy: Nginx, path: str, length: int, authorization: str | None) -> Answer:
    """nginx's first answer to a POST head declaring `length` bytes; no body is sent."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {uuid.uuid4().hex}\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    )
    with http1(proxy) as tls:
        tls.sendall(head.encode())
        return read_answer(tls)


def never_proxied(proxy: Nginx, answer: Answer) -> None:
    """nginx's own JSON error, logged with the request's id and no upstream."""
    body = json.loads(answer.body)
    line = proxy.log_for("request_id", body["request_id"])
    assert line["status"] == answer.status and line["upstream_addr"] == ""


def padded_jpeg(jpeg: bytes, size: int) -> bytes:
    """`jpeg` grown to `size` bytes with comment segments after SOI (same pixels, no decoding)."""
    padding = b""
    while len(jpeg) + len(padding) < size:
        n = min(65533, size - len(jpeg) - len(padding) - 4)
        padding += COMMENT + struct.pack(">H", n + 2) + b"\0" * n
    return jpeg[:2] + padding + jpeg[2:]


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/predict", ONE_IMAGE),
        ("/predict_batch", BATCH),
        ("/feedback", MAX_FEEDBACK_BYTES),
        ("/readyz", MAX_FEEDBACK_BYTES),  # any other route: no larger body than /feedback's
    ],
)
def test_each_route_takes_exactly_the_services_limit(
    proxy: Nginx, champion_service, path: str, limit: int
) -> None:
    """Not a byte less (the service would take it) nor more (nginx would buffer what the
    service refuses); over it, nginx's own JSON 413 and the service never sees the request."""
    bearer = champion_service.headers()["Authorization"]
    assert announce(proxy, path, limit, bearer).status == 100
    over = announce(proxy, path, limit + 1, bearer)
    assert over.status == 413
    assert json.loads(over.body)["error"] == "too_many_bytes"
    never_proxied(proxy, over)


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Basic dGVzdDp0ZXN0", "Bearer "])
def test_no_bearer_token_is_401_before_the_body(
    proxy: Nginx, path: str, authorization: str | None
) -> None:
    """The answer comes instead of `100 Continue`: nginx reads no byte of the body (the test
    sends none) and buffers nothing; a JSON 401 like the service's, with its challenge."""
    answer = announce(proxy, path, 1000, authorization)
    assert answer.status == 401
    assert json.loads(answer.body)["error"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert answer.headers["strict-transport-security"].startswith("max-age=63072000")
    never_proxied(proxy, answer)


def test_the_service_still_verifies_the_token(proxy: Nginx) -> None:
    """nginx only checks that a bearer token is there; a forged one is the service's 401."""
    trace = uuid.uuid4().hex
    response = requests.post(
        f"{proxy.https}/feedback",
        json={"request_id": trace, "label": "cat"},
        headers={"Authorization": "Bearer not-a-jwt", "X-Request-ID": trace},
        verify=str(proxy.tls.ca),
        timeout=30,
    )
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert proxy.log_for("request_id", trace)["upstream_status"] == "401"


def test_a_batch_over_the_single_image_limit_reaches_the_service(
    proxy: Nginx, champion_service, sample_data_dir: Path
) -> None:
    """Three real photos padded to a third of the single-upload limit each: /predict_batch
    takes them (under every per-image limit), /predict's limit would not."""
    photo = (sample_data_dir / "dog" / "dog.1.jpg").read_bytes()
    image = padded_jpeg(photo, ONE_IMAGE // 3 + 1)
    assert len(image) <= SERVE["max_bytes"]
    files = [("images", (f"dog{n}.jpg", image, "image/jpeg")) for n in range(3)]
    body, content_type = urllib3.encode_multipart_formdata(files)
    assert ONE_IMAGE < len(body) <= BATCH
    response = requests.post(
        f"{proxy.https}/predict_batch",
        data=body,
        headers={**champion_service.headers(), "Content-Type": content_type},
        verify=str(proxy.tls.ca),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert [item["index"] for item in response.json()] == [0, 1, 2]
