"""A real S3 API on loopback for tests: moto's `moto_server` as a subprocess (fixture `s3_server`).

A pytest plugin (tests/conftest.py lists it in pytest_plugins). One server per session; each
test makes buckets of its own (`s3.bucket("prefix")` gives a fresh name), so tests never see each
other's objects. A subprocess rather than moto's in-process ThreadedMotoServer: the test process
spends long stretches in TensorFlow, and S3 calls from DVC or MLflow subprocesses must not wait
for its GIL.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.helpers import free_port, stop_process

START_TIMEOUT_S = 60.0
REGION = "us-east-1"


class MotoServer:
    """`moto_server` on 127.0.0.1; `env()` gives the variables a client (boto3, DVC, MLflow)
    needs to reach it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1"]
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [*command, "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT
            )

    def wait(self) -> MotoServer:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                requests.get(self.url, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not start:\n{self.log_path.read_text()[-2000:]}")

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.url,  # boto3 >= 1.28 and DVC's s3fs honour it
            "MLFLOW_S3_ENDPOINT_URL": self.url,
        }

    def client(self):
        import boto3

        env = self.env()
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, prefix: str) -> str:
        """Create a bucket with a fresh name starting with `prefix`; return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        stop_process(self.process, 10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").wait()
    try:
        yield server
    finally:
        server.stop()
