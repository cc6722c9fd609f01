"""A registry outage is told, not silent, and ends within one poll: a `bentoml serve` of its own
(tests/support/service.py's Server) starts against a registry port where nothing listens;
/readyz and /predict say why they answer 503 (the registry unreachable since when, the last
error), the log says it once, not once per poll; then a dedicated `mlflow server` starts on that
port, a champion is registered, and the service serves it within a poll plus its load time.

Stopping never waits for a poll in progress: a registry that accepts connections and never
answers holds a poll, and the holder stops at once anyway.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.support.helpers import free_port
from tests.support.mlflow_server import MlflowServer
from tests.support.service import POLL_SECONDS, Server, ServiceRegistry, auth

OUTAGE_POLLS = 3  # polls that fail before the registry comes up
LOAD_MARGIN = 45  # seconds to load a champion on two busy cores (test_service.py's bound)


def not_ready(server: Server, timeout: float) -> dict:
    """The /readyz body once it names the registry's failure (polling, with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.get(server.url + "/readyz", timeout=10)
        assert answer.status_code == 503, answer.text
        body = answer.json()
        if "registry" in body["detail"]:
            return body
        assert time.monotonic() < deadline, f"/readyz never named the registry: {body}"
        time.sleep(0.2)


def log_records(server: Server) -> list[dict]:
    records = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # bentoml's banner and TensorFlow's C++ log are not JSON
    return records


def test_an_outage_is_reported_and_ends_within_a_poll(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here until the registry starts
    registry = ServiceRegistry(tmp_path / "registry", f"http://127.0.0.1:{port}")
    (tmp_path / "service").mkdir()
    server = Server(tmp_path / "service", registry)
    mlflow = MlflowServer(tmp_path / "mlflow", port=port)
    try:
        body = not_ready(server, timeout=120)
        assert body["error"] == "not_ready"
        detail = body["detail"]
        assert f"registry {registry.uri} unreachable since " in detail, detail
        assert "ConnectionError" in detail or "Connection refused" in detail, detail
        predict = requests.post(
            server.url + "/predict",
            files={"image": ("x.jpg", b"\xff\xd8")},
            headers=auth(),
            timeout=30,
        )
        assert predict.status_code == 503 and "unreachable since" in predict.json()["detail"]
        time.sleep(OUTAGE_POLLS * POLL_SECONDS)
        mlflow.start().wait()
        version = registry.promote(seed=0)
        recovered_s = server.wait_for("/readyz", POLL_SECONDS + LOAD_MARGIN)
        print(f"served {recovered_s:.1f} s after the alias was set (poll {POLL_SECONDS} s)")
        served = requests.post(
            server.url + "/predict",
            files={"image": ("x.png", _png())},
            headers=auth(),
            timeout=60,
        )
        assert served.status_code == 200 and served.json()["model_version"] == version
    finally:
        server.stop()
        mlflow.stop()
    ours = [r for r in log_records(server) if r.get("logger", "").startswith("imgclf.")]
    errors = [r["message"] for r in ours if r["level"] == "ERROR"]
    assert len(errors) == 1 and "unreachable since" in errors[0], errors  # not one per poll
    assert any("unreachable: over after" in r["message"] for r in ours), ours[-5:]
    retries = [r for r in log_records(server) if "Retrying" in r.get("message", "")]
    assert not retries  # MLflow's own retries (minutes of backoff) are off: the poll retries


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, "PNG")
    return buffer.getvalue()


def test_stopping_never_waits_for_a_poll_in_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from imgclf.serving.holder import ChampionHolder, RegistryChampion

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the poll ends once released
    with socket.socket() as registry:  # accepts connections and never answers
        registry.bind(("127.0.0.1", 0))
        registry.listen()
        registry.settimeout(120)  # the poller imports TensorFlow before its first poll
        uri = f"http://127.0.0.1:{registry.getsockname()[1]}"
        holder = ChampionHolder(RegistryChampion(uri, "m", "champion", None), poll_seconds=1)
        holder.start_polling()
        held, _ = registry.accept()  # a poll is now waiting for an answer
        with held:
            stopping = threading.Thread(target=holder.stop)
            stopping.start()
            stopping.join(timeout=2)
            assert not stopping.is_alive(), "stop() waited for the poll"
