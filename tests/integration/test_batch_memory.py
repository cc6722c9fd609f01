"""A /predict_batch body cannot make the service buffer more than its limits, and a worker takes
at most serve.max_in_flight requests at once: over raw HTTP against the session's shared
`bentoml serve` (tests/support/service.py: MAX_BATCH_BYTES, MAX_BYTES, MAX_IN_FLIGHT).

Each client here sends part of a body and holds the rest: the service must answer 413 from what
it has read so far (a declared length, the bytes counted, one image's part), never waiting for
the rest; and the request past the cap gets 503 `overloaded` with Retry-After before its body is
read. Behaviour only: the memory this saves is measured by hand (the issue's report).
"""

from __future__ import annotations

import contextlib
import socket
import time

import requests

from tests.support.helpers import metric_samples
from tests.support.service import (
    BODY_TIMEOUT,
    MAX_BATCH_BYTES,
    MAX_BYTES,
    MAX_IN_FLIGHT,
    LiveService,
    answer_on,
    auth,
    held_request,
)

BOUNDARY = "b0undary"
ANSWER_TIMEOUT = 30  # seconds; the service answers these at once (the body deadline is shorter)


def file_part(index: int, size: int) -> bytes:
    """A multipart file part's head and `size` bytes of content (no closing CRLF)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="{index}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    )
    return head.encode() + bytes([index]) * size


def batch_head(**headers: str) -> dict[str, str]:
    return {
        **auth(),
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        **headers,
    }


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def refusal(connection: socket.socket) -> tuple[int, str, int | None]:
    status, _, body = answer_on(connection, ANSWER_TIMEOUT)
    return status, body.get("error", ""), body.get("index")


def test_a_body_declared_over_the_batch_limit_is_refused_before_it_is_sent(
    live_service: LiveService,
) -> None:
    head = batch_head(**{"Content-Length": str(MAX_BATCH_BYTES + 1)})
    with contextlib.closing(held_request(live_service.url, "/predict_batch", head)) as held:
        assert refusal(held)[:2] == (413, "too_many_bytes")


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_batch_limit(
    live_service: LiveService,
) -> None:
    """Chunked (no length declared): two images just under MAX_BYTES, then the start of a third
    that takes the body past MAX_BATCH_BYTES; the rest is never sent."""
    part = MAX_BYTES - 100_000
    sent = b"".join(chunk(file_part(i, part) + b"\r\n") for i in range(2))
    sent += chunk(file_part(2, MAX_BATCH_BYTES - 2 * part + 1))
    assert len(sent) < 3 * MAX_BYTES  # far from what three whole images would be
    head = batch_head(**{"Transfer-Encoding": "chunked"})
    with contextlib.closing(held_request(live_service.url, "/predict_batch", head, sent)) as held:
        assert refusal(held)[:2] == (413, "too_many_bytes")


def test_an_image_over_its_limit_is_refused_while_it_arrives(live_service: LiveService) -> None:
    """A declared length the batch may have, but its second image is over MAX_BYTES: answered
    once that image's bytes pass the limit, with its position, the rest never sent."""
    small = file_part(0, 1000) + b"\r\n"
    big = file_part(1, MAX_BYTES + 200_000)
    length = len(small) + len(big) + len(f"\r\n--{BOUNDARY}--\r\n")
    assert length <= MAX_BATCH_BYTES
    sent = small + big[: len(big) - 100_000]
    head = batch_head(**{"Content-Length": str(length)})
    with contextlib.closing(held_request(live_service.url, "/predict_batch", head, sent)) as held:
        assert refusal(held) == (413, "too_many_bytes", 1)


def overloaded_count(service: LiveService, endpoint: str) -> float:
    samples = metric_samples(service.url, "imgclf_overloaded_total")
    return sum(value for labels, value in samples if labels["endpoint"] == endpoint)


def test_past_the_in_flight_cap_a_request_gets_503_with_retry_after(
    live_service: LiveService,
) -> None:
    before = overloaded_count(live_service, "feedback")
    head = batch_head(**{"Content-Length": "100000"})
    held = [
        held_request(live_service.url, "/predict_batch", head, file_part(n, 10))
        for n in range(MAX_IN_FLIGHT)
    ]
    try:
        # Within the body deadline every held request is still in flight: once the worker has
        # taken them all (it reads heads as they come), the next request is refused at once.
        deadline = time.monotonic() + BODY_TIMEOUT - 1
        while True:
            answer = requests.post(
                live_service.url + "/feedback", json={}, headers=auth(), timeout=ANSWER_TIMEOUT
            )
            if answer.status_code == 503 or time.monotonic() > deadline:
                break
        assert (answer.status_code, answer.json()["error"]) == (503, "overloaded"), answer.text
        assert int(answer.headers["Retry-After"]) >= 1
        assert str(MAX_IN_FLIGHT) in answer.json()["detail"]
    finally:
        for connection in held:
            connection.close()
    assert overloaded_count(live_service, "feedback") >= before + 1
    # The places come back with the clients gone (or their bodies' deadline).
    deadline = time.monotonic() + BODY_TIMEOUT + 10
    while (
        requests.post(
            live_service.url + "/feedback", json={}, headers=auth(), timeout=ANSWER_TIMEOUT
        ).status_code
        != 422
    ):
        assert time.monotonic() < deadline, "in-flight places not given back"
        time.sleep(0.2)
