"""The service under test for test_service.py and test_service_fuzz.py (fixture `live_service`).

A real `bentoml serve` on 127.0.0.1 polling, every POLL_SECONDS, the `@champion` alias of a
registered-model name of its own in the session's `mlflow server` (tests/support/mlflow_server.py).
It starts before any champion exists; the fixture records that it was not ready then, registers
a champion and waits for /readyz, so whichever module comes first, the facts are the same.

A pytest plugin (tests/conftest.py lists it). One service per session, shared by
test_service.py, test_service_classes.py, test_service_fuzz.py and the hardening tests
(test_batch_memory.py, test_body_deadline.py, test_feedback_ownership.py, test_decode_cost.py):
a test must only count what it sent itself, and may move the alias only to a version it compares
with the answers' own `model_version`; a module that serves a model with other classes
(test_service_classes.py) puts the previous champion back before it ends, and a test that takes
every in-flight place gives them back. Its limits are small (a few MB, a 5 s body deadline) so
that tests reach them quickly. `own_server` starts a second server on the same registry for a
test that stops it. `held_request` and `answer_on` speak raw HTTP for the tests of clients that
send part of a body and hold the rest.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.support.helpers import VENV_BIN, BentoServer, Registry, mint_token, mlflow_uris
from tests.support.mlflow_server import MlflowServer

SECRET = "test-secret-0123456789abcdef0123456789"
AUDIENCE = "imgclf"
POLL_SECONDS = 2
MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000
MAX_IMAGES = 8
MAX_BATCH_BYTES = 4_000_000  # two images at the limit: a batch's body limit is its own
MAX_DECODED_PIXELS = 10_000_000  # two images at the pixel limit, not three
MAX_IN_FLIGHT = 8  # over the concurrency any test sends, bar the test of the cap
BODY_TIMEOUT = 5  # seconds for a whole body: loopback uploads take milliseconds
MAX_TOKEN_LIFETIME = 3600  # tokens minted here live 600 s
STARTUP_TIMEOUT = 120


def held_request(
    url: str, path: str, headers: dict[str, str], body_start: bytes = b""
) -> socket.socket:
    """A connection that sent a POST's head and the first bytes of its body, holding the rest:
    a slow or stalled client, or one the server should stop reading."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=30)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body_start)
    return connection


def answer_on(connection: socket.socket, timeout: float) -> tuple[int, Message, dict]:
    """The status, headers (names in any case) and JSON body the server answers on
    `connection` within `timeout` seconds (socket.timeout if it does not)."""
    connection.settimeout(timeout)
    response = http.client.HTTPResponse(connection)
    response.begin()
    body = response.read()
    return response.status, response.headers, json.loads(body) if body else {}


def token(**claims: object) -> str:
    return mint_token(SECRET, AUDIENCE, **claims)


def auth() -> dict[str, str]:
    """A fresh valid bearer header: a token minted at import would expire in a long CI run."""
    return {"Authorization": f"Bearer {token()}"}


class Server(BentoServer):
    """The service under test: the registry's model name, these limits, a prediction DB and JWT
    secret of its own; returns once /livez answers (not /readyz: there may be no champion yet)."""

    def __init__(self, tmp: Path, registry: Registry) -> None:
        self.db_url = f"sqlite:///{tmp / 'predictions.db'}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_"))},
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": registry.uri,
            "BENTOML_HOME": str(tmp / "bentoml"),
            "IMGCLF_SERVE_MODEL_NAME": registry.model_name,
            "IMGCLF_SERVE_POLL_SECONDS": str(POLL_SECONDS),
            "IMGCLF_SERVE_MAX_BYTES": str(MAX_BYTES),
            "IMGCLF_SERVE_MAX_PIXELS": str(MAX_PIXELS),
            "IMGCLF_SERVE_MAX_IMAGES_PER_REQUEST": str(MAX_IMAGES),
            "IMGCLF_SERVE_MAX_BATCH_BYTES": str(MAX_BATCH_BYTES),
            "IMGCLF_SERVE_MAX_DECODED_PIXELS": str(MAX_DECODED_PIXELS),
            "IMGCLF_SERVE_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
            "IMGCLF_SERVE_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "IMGCLF_SERVE_MAX_TOKEN_LIFETIME_SECONDS": str(MAX_TOKEN_LIFETIME),
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


class ServiceRegistry(Registry):
    """A Registry whose promotions point this process's MLflow at it only while they run: a
    session-long setting would leak into every later module."""

    def promote(self, seed: int, **options: Any) -> str:
        with mlflow_uris(self.uri):
            return super().promote(seed, **options)


@dataclass(frozen=True)
class Startup:
    """What the shared server answered before its first champion, and how soon it was ready."""

    readyz_before: int
    readyz_body_before: str  # why not ready, as /readyz said
    predict_before: int
    first_version: str
    ready_after_s: float  # counted from the alias being set


@dataclass(frozen=True)
class LiveService:
    server: Server
    registry: ServiceRegistry
    startup: Startup

    @property
    def url(self) -> str:
        return self.server.url


def _first_champion(server: Server, registry: ServiceRegistry) -> Startup:
    """Wait (polling, with a deadline) until a poll has found no champion: the 503's detail turns
    from "no model loaded yet" (or the registry unreachable while it still boots) into the
    poller's "no model has the alias yet"; then promote one."""
    photo = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(photo, "JPEG")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        before = requests.post(
            server.url + "/predict",
            files={"image": ("gray.jpg", photo.getvalue())},
            headers=auth(),
            timeout=60,
        )
        if before.status_code != 503 or "alias" in before.json().get("detail", ""):
            break
        assert time.monotonic() < deadline, f"no alias poll within {STARTUP_TIMEOUT}s"
        time.sleep(0.2)
    readyz = requests.get(server.url + "/readyz", timeout=5)
    version = registry.promote(seed=0)
    ready_after_s = server.wait_for("/readyz", 60)
    return Startup(readyz.status_code, readyz.text, before.status_code, version, ready_after_s)


@pytest.fixture(scope="session")
def live_service(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server_process: MlflowServer
) -> Iterator[LiveService]:
    # The service boots beside the session's tracking server, if that is still booting: tens of
    # seconds of imports each on two busy cores. The first champion waits for a poll that reached
    # the registry.
    registry = ServiceRegistry(tmp_path_factory.mktemp("registry"), mlflow_server_process.url)
    server = Server(tmp_path_factory.mktemp("live_service"), registry)
    try:
        yield LiveService(server, registry, _first_champion(server, registry))
    finally:
        server.stop()


@pytest.fixture
def own_server(tmp_path: Path, live_service: LiveService) -> Iterator[Server]:
    """A server of the calling test's own, ready, on the shared registry: it may stop it."""
    server = Server(tmp_path, live_service.registry)
    try:
        server.wait_for("/readyz", STARTUP_TIMEOUT)
        yield server
    finally:
        server.stop()  # a no-op when the test stopped it
