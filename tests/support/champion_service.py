"""A production-shaped service for the operations tests (fixture `champion_service`).

The whole chain is real, on loopback: a moto S3 API (tests/support/s3_server.py) -> an
`mlflow server` whose artifact store is an S3 bucket in it (`--artifacts-destination s3://...`) -> a
tiny champion registered there with a test accuracy tag -> `bentoml serve` polling `@champion` and
loading the model through the tracking server (the service holds no S3 credentials: the server
proxies). The service starts with the tracking server, before the champion exists, and loads it
at a poll.

A pytest plugin (tests/conftest.py lists it). One service per session, shared by the nginx,
Prometheus, feedback and S3 tests: other modules' requests land in the same prediction log, so a
test must only count what it sent itself (its own request ids).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.helpers import VENV_BIN, BentoServer, Registry, mint_token, mlflow_uris
from tests.support.mlflow_server import MlflowServer
from tests.support.s3_server import MotoServer

SECRET = "ops-secret-0123456789abcdef0123456789"
AUDIENCE = "imgclf"
TEST_ACCURACY = 0.95  # registered with the champion: the live-accuracy alarm's bar
FEEDBACK_WINDOW = 20
IMAGE_SIZE = 48
STARTUP_TIMEOUT = 180


def bearer(secret: str = SECRET, audience: str = AUDIENCE, **claims: object) -> dict[str, str]:
    """A fresh valid `Authorization` header (minted per call: a long CI run outlives a token)."""
    claims = {"sub": "ops-tests", **claims}
    return {"Authorization": f"Bearer {mint_token(secret, audience, **claims)}"}


@dataclass
class ChampionService:
    server: BentoServer
    registry: Registry
    mlflow: MlflowServer
    s3: MotoServer
    bucket: str  # the MLflow artifact bucket
    version: str  # the champion's registry version
    db_url: str  # the prediction log

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def headers(self) -> dict[str, str]:
        return bearer()


def _start_service(tmp: Path, tracking_uri: str, model_name: str) -> tuple[BentoServer, str]:
    db_url = f"sqlite:///{tmp / 'predictions.db'}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_", "AWS_"))},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "IMGCLF_SERVE_MODEL_NAME": model_name,
        "IMGCLF_SERVE_POLL_SECONDS": "2",
        "IMGCLF_SERVE_FEEDBACK_WINDOW": str(FEEDBACK_WINDOW),
        "IMGCLF_PREDICTION_DB_URL": db_url,
        "IMGCLF_JWT_SECRET": SECRET,
        "IMGCLF_JWT_AUDIENCE": AUDIENCE,
    }  # fmt: skip
    return BentoServer(env, tmp / "service.log"), db_url


@pytest.fixture(scope="session")
def champion_service(
    tmp_path_factory: pytest.TempPathFactory, s3_server: MotoServer
) -> Iterator[ChampionService]:
    tmp = tmp_path_factory.mktemp("champion_service")
    bucket = s3_server.bucket("mlflow-artifacts")
    mlflow = MlflowServer(
        tmp / "mlflow", artifacts_destination=f"s3://{bucket}/mlflow", env=s3_server.env()
    ).start()
    server = None
    try:
        # The two servers boot side by side (tens of seconds of imports each on two busy cores),
        # and the champion is made while the service still boots: it finds it at a poll.
        registry = Registry(tmp / "registry", mlflow.url, image_size=IMAGE_SIZE)
        server, db_url = _start_service(tmp, mlflow.url, registry.model_name)
        with mlflow_uris(mlflow.wait()):
            version = registry.promote(seed=1, tags={"test_accuracy": repr(TEST_ACCURACY)})
        server.wait_for("/readyz", STARTUP_TIMEOUT)
        yield ChampionService(server, registry, mlflow, s3_server, bucket, version, db_url)
    finally:
        if server is not None:
            server.stop()
        mlflow.stop()
