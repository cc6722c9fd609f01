"""Slow clients against the real stack: deploy/nginx/imgclf.conf in front of the session's
champion service (`bentoml serve`), with nginx's client timeouts shortened to SHORT seconds in a
copy of the config (only those values replaced).

A stalled body or half-sent head is the client's fault: nginx cuts it (logs 408) and the service
never sees it; a trickling upload is buffered whole by nginx, so the service's own 60 s request
timeout (a 504) never runs while a client uploads. uvicorn itself has no header timeout: only
its keep-alive, which nginx's upstream keep-alive must stay under.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager

import pytest

from tests.infra.test_nginx_proxy import CONF, Nginx, http1, read_answer, running

SHORT = 2  # seconds, for every client timeout of the test copy
MARGIN = 10  # seconds past SHORT before a test gives up waiting for nginx (a loaded CI machine)
TIMEOUTS = ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout")


def with_short_timeouts(text: str) -> str:
    """The config with every client timeout (and the upstream keep-alive) set to SHORT."""
    for directive in TIMEOUTS:
        text, found = re.subn(rf"\b{directive} \d+s;", f"{directive} {SHORT}s;", text)
        assert found, f"{directive} is no longer set in {CONF.name}: update this test"
    return text


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, champion_service) -> Iterator[Nginx]:
    text = with_short_timeouts(CONF.read_text())
    upstream = f"127.0.0.1:{champion_service.port}"
    with running(tmp_path_factory.mktemp("nginx"), upstream, text) as nginx:
        yield nginx


def seconds_until_closed(connection: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection, and what it sent meanwhile."""
    start = time.monotonic()
    connection.settimeout(limit)
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    return time.monotonic() - start, received


def connect(proxy: Nginx, scheme: str) -> AbstractContextManager[socket.socket]:
    """A connection to nginx's HTTPS server (TLS, HTTP/1.1) or its plain HTTP one."""
    if scheme == "https":
        return http1(proxy, timeout=SHORT + MARGIN)
    return socket.create_connection(("127.0.0.1", proxy.http_port), SHORT + MARGIN)


def post_head(trace: str, authorization: str, length: int) -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: {trace}\r\n"
        f"Authorization: {authorization}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_stalled_body_is_cut_by_nginx_not_answered_504(proxy: Nginx, champion_service) -> None:
    trace = uuid.uuid4().hex
    with http1(proxy, timeout=SHORT + MARGIN) as tls:
        tls.sendall(post_head(trace, champion_service.headers()["Authorization"], 10_000))
        tls.sendall(b"\xff\xd8" + b"\0" * 998)  # a tenth of the body, then nothing
        waited, answer = seconds_until_closed(tls, SHORT + MARGIN)
    assert waited >= SHORT - 0.5 and answer == b""  # nginx closes; no 5xx, no answer at all
    line = proxy.log_for("request_id", trace)
    assert (line["status"], line["upstream_addr"]) == (408, "")  # the service never saw it


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_half_sent_headers_are_cut(proxy: Nginx, scheme: str) -> None:
    """On both servers: the HTTP one only redirects, but a held connection costs the same."""
    trace = uuid.uuid4().hex
    with connect(proxy, scheme) as connection:
        connection.sendall(f"POST /predict HTTP/1.1\r\nX-Request-ID: {trace}\r\nAuth".encode())
        waited, answer = seconds_until_closed(connection, SHORT + MARGIN)
    assert waited >= SHORT - 0.5 and answer == b""
    line = proxy.log_for("request_id", trace)
    assert (line["status"], line["upstream_addr"]) == (408, "")


def test_a_trickled_upload_reaches_the_service_whole(
    proxy: Nginx, champion_service, sample_data_dir
) -> None:
    """A real photo sent in pieces, each within client_body_timeout, the whole upload longer
    than it: answered 200, and the service spent none of the upload time on the request (nginx
    handed it over complete)."""
    photo = (sample_data_dir / "cat" / "cat.1.jpg").read_bytes()
    pieces, pause = 6, SHORT / 2
    step = -(-len(photo) // pieces)
    trace = uuid.uuid4().hex
    with http1(proxy, timeout=SHORT + MARGIN) as tls:
        tls.sendall(post_head(trace, champion_service.headers()["Authorization"], len(photo)))
        for start in range(0, len(photo), step):
            time.sleep(pause)
            tls.sendall(photo[start : start + step])
        answer = read_answer(tls)
    assert answer.status == 200, answer.body
    line = proxy.log_for("request_id", trace)
    assert line["request_time"] >= pieces * pause - 0.5  # the upload took that long ...
    assert float(line["upstream_response_time"]) < pause  # ... none of it at the service


def test_an_idle_keepalive_connection_is_closed(proxy: Nginx) -> None:
    with http1(proxy, timeout=SHORT + MARGIN) as tls:
        tls.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(tls).status == 200
        waited, after = seconds_until_closed(tls, SHORT + MARGIN)
    assert waited >= SHORT - 0.5 and after == b""


def test_the_proxy_lets_idle_service_connections_go_before_the_service_does(
    champion_service,
) -> None:
    """The service (uvicorn, no header timeout) closes an idle keep-alive connection after its
    own timeout; nginx's upstream keep-alive must be shorter, or nginx may send a request down
    a connection the service is closing (a 502). Measured on the real service, plain HTTP."""
    upstream_block = re.search(r"upstream imgclf \{[^}]*\}", CONF.read_text())[0]
    nginx_idle = re.search(r"keepalive_timeout (\d+)s;", upstream_block)
    assert nginx_idle, f"no keepalive_timeout in {CONF.name}'s upstream block"
    with socket.create_connection(("127.0.0.1", champion_service.port), timeout=60) as plain:
        plain.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert plain.recv(65536).startswith(b"HTTP/1.1 200")
        service_idle, _ = seconds_until_closed(plain, 60)
    assert int(nginx_idle[1]) < service_idle


def test_the_short_timeout_copy_changes_only_the_timeouts() -> None:
    original, short = CONF.read_text(), with_short_timeouts(CONF.read_text())
    lines = zip(original.splitlines(), short.splitlines(), strict=True)
    changed = {re.search(r"\b(\w+_timeout) ", a)[1] for a, b in lines if a != b}
    assert changed == set(TIMEOUTS)
