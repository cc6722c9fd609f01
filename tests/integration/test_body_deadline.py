"""A client connected to the service directly (no nginx in front) that stops sending its body
gets a 408 `request_timeout` once the body's deadline (serve.body_timeout_seconds: BODY_TIMEOUT
in the session's shared `bentoml serve`, tests/support/service.py) has passed, on every route
that reads a body: not BentoML's 504 after its 60 s request timeout, a server error for what is
the client's fault. The nginx half (client timeouts in front) is tests/integration/
test_slow_clients.py.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.support.service import BODY_TIMEOUT, LiveService, answer_on, auth, held_request

MARGIN = 20  # seconds past the deadline before the test stops waiting (a loaded CI machine)
STALLED = {  # path -> (Content-Type, the first bytes of a body that never ends)
    "/predict": ("image/jpeg", b"\xff\xd8\xff\xe0"),
    "/predict_batch": (
        "multipart/form-data; boundary=b0undary",
        b'--b0undary\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n',
    ),
    "/feedback": ("application/json", b'{"request_id": "'),
}


@pytest.mark.parametrize("path", list(STALLED))
def test_a_stalled_body_gets_408_after_the_deadline(live_service: LiveService, path: str) -> None:
    content_type, start = STALLED[path]
    head = {**auth(), "Content-Type": content_type, "Content-Length": "4000"}
    began = time.monotonic()
    with contextlib.closing(held_request(live_service.url, path, head, start)) as held:
        status, headers, body = answer_on(held, BODY_TIMEOUT + MARGIN)
    waited = time.monotonic() - began
    assert (status, body["error"]) == (408, "request_timeout"), body
    assert f"{BODY_TIMEOUT} s" in body["detail"] and body["request_id"] == headers["X-Request-ID"]
    assert waited >= BODY_TIMEOUT  # the deadline, not an early refusal
