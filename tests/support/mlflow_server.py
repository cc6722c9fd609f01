"""A real `mlflow server` on loopback for tests: fixture `mlflow_server` gives its URL.

A pytest plugin: enable it suite-wide in tests/conftest.py with
    pytest_plugins = ["tests.support.mlflow_server"]
or in one test module with the same line there (pytest registers a plugin once, so both together
still start one server). Don't import the fixtures by name as well: that defines a second one.

One server per test session: sqlite backend, artifacts proxied into a temp folder, one uvicorn
worker, MLflow's background job runner off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: it starts
seven huey processes and made start-up 55 s instead of 24 s on two busy cores). Request
`mlflow_server_process` first to overlap slow set-up with the boot. The server runs in its own
process group and is stopped with it (SIGTERM, then SIGKILL for stragglers).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class MlflowServer:
    """`mlflow server` storing into `folder`: `start()` returns at once, `wait()` until ready."""

    def __init__(
        self,
        folder: Path,
        port: int | None = None,
        artifacts_destination: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`artifacts_destination`: where the server stores artifacts (default: a local folder;
        s3://bucket/prefix with `env` holding the S3 endpoint and credentials)."""
        self.folder = folder
        self.artifacts_destination = artifacts_destination or str(folder / "artifacts")
        self.extra_env = dict(env or {})
        self.url = f"http://127.0.0.1:{port or free_port()}"
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.startup_s: float | None = None

    def start(self) -> MlflowServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--host", "127.0.0.1",
            "--port", self.url.rsplit(":", 1)[1],
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", self.artifacts_destination,
            "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, **self.extra_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.started = time.monotonic()
        with open(self.folder / "server.log", "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() ends the workers too
            )
        return self

    def wait(self, timeout: float = START_TIMEOUT_S) -> str:
        """Block until /health answers; return the URL."""
        assert self.process is not None, "start() first"
        if self.startup_s is not None:
            return self.url
        deadline = self.started + timeout
        while not _healthy(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.folder / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not start at {self.url}:\n{tail}")
            time.sleep(0.25)
        self.startup_s = time.monotonic() - self.started
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group (uvicorn worker included), SIGKILL if it lingers."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            process.wait()
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's server, started but maybe not ready yet: request it first to do slow
    set-up (importing TensorFlow, building models) while the server boots, then `mlflow_server`.
    """
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_process: MlflowServer) -> str:
    """URL (http://127.0.0.1:PORT) of a real MLflow tracking + registry server for the session."""
    url = mlflow_server_process.wait()
    print(f"mlflow server ready at {url} {mlflow_server_process.startup_s:.1f} s after its start")
    return url
