"""Builders shared by several test modules (and benchmarks/serving_latency.py): generated images,
a tiny Keras model (two classes or more), a free loopback port, a real `bentoml serve` process,
and a registry that promotes tiny models in a real MLflow server.

Plain functions and classes, not fixtures: each module wraps them in fixtures of its own scope.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
BINARY = ("cat", "dog")


def textured_image(seed: int, width: int = 320, height: int = 240) -> Image.Image:
    """A photo-like RGB image: 1/f² noise (energy at every scale, like natural images)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None] * height / max(width, height)
    fx = np.fft.rfftfreq(width)[None, :] * width / max(width, height)
    freq = np.hypot(fx, fy)
    freq[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=freq.shape) + 1j * rng.normal(size=freq.shape)) / freq**2
        spectrum[0, 0] = 0
        channels.append(np.fft.irfft2(spectrum, s=(height, width)))
    pixels = np.stack(channels, axis=-1)
    pixels = (pixels - pixels.mean()) / (4 * pixels.std()) + 0.5
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def tiny_model(size: int = 32, seed: int = 0, classes: int = 2):
    """Input(S, S, 3) -> Conv -> GAP -> Dense(1, sigmoid) for two classes, Dense(K, softmax) for
    more, with weights big enough to spread the probabilities. Seeded: the same (size, seed,
    classes) gives the same weights."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    units, activation = (1, "sigmoid") if classes == 2 else (classes, "softmax")
    outputs = keras.layers.Dense(units, activation=activation, kernel_initializer="he_normal")(x)
    return keras.Model(inputs, outputs)


def unavailable(message: str) -> NoReturn:
    """Skip on a laptop that lacks a prerequisite; fail in CI, where .ci/run installs it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def program(name: str, package: str) -> str:
    """Path of a program the tests drive (PATH, then /usr/sbin for nginx), else `unavailable`."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        unavailable(f"{name} is not installed (Debian package `{package}`)")
    return path


def imgclf_command() -> str:
    """Path of the installed `imgclf` command (make install), else `unavailable`."""
    path = VENV_BIN / "imgclf"
    if not path.is_file():
        unavailable(f"{path} missing: `make install` installs the imgclf command")
    return str(path)


def stop_process(
    process: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM, group: bool = False
) -> int:
    """Send `sig`, wait up to `timeout` s, then SIGKILL (its whole process group when `group`:
    servers that fork workers); return the exit status. A process already gone is left be."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()
    return process.returncode


def mint_token(secret: str, audience: str, **claims: object) -> str:
    """An HS256 JWT valid for 10 minutes; a claim given as None is left out."""
    import jwt

    payload = {"aud": audience, "exp": time.time() + 600, "sub": "tests", **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


def metric_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples called `name` on the /metrics of the service at `url`: (labels, value)."""
    text = requests.get(url + "/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class BentoServer:
    """`bentoml serve service:ImageClassifier` on 127.0.0.1 with `env`, output in `log_path`.

    Runs in its own process group; `stop()` sends SIGTERM and kills the group if it lingers.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115  (closed in stop)
        try:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "bentoml"),
                    "serve",
                    "service:ImageClassifier",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                env=dict(env),
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self.log.close()
            raise

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_for(self, path: str, timeout: float) -> float:
        """Poll `path` until it answers 200; return the seconds that took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_tail()}")
            try:
                if requests.get(self.url + path, timeout=2).status_code == 200:
                    return time.monotonic() - start
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{path} not 200 after {timeout}s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM, wait up to 60 s, then SIGKILL the process group; return the exit status."""
        status = stop_process(self.process, 60, group=True)
        self.log.close()
        return status


@contextlib.contextmanager
def mlflow_uris(uri: str) -> Iterator[None]:
    """Point this process's MLflow tracking and registry at `uri`, then put back exactly what was
    there: mlflow.set_tracking_uri/set_registry_uri also write MLFLOW_TRACKING_URI/
    MLFLOW_REGISTRY_URI into os.environ, which would leak into later test modules."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_tracking, saved_registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)  # None: unset, as before
        registry_utils._registry_uri = saved_registry
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Registry:
    """A registered-model name of its own in the real MLflow server at `uri`; `promote(seed)`
    logs, registers and moves @champion to a model."""

    def __init__(self, root: Path, uri: str, image_size: int = 48) -> None:
        from imgclf.config import MlflowParams

        self.root = root
        self.image_size = image_size
        self.uri = uri
        self.model_name = f"imgclf-test-{uuid.uuid4().hex[:12]}"
        self.params = MlflowParams(
            tracking_uri=self.uri, artifact_location="mlartifacts", experiment="service-test"
        )
        self.models: dict[str, object] = {}

    def promote(
        self,
        seed: int,
        tags: Mapping[str, str] | None = None,
        classes: Sequence[str] = BINARY,
        carries_classes: bool = True,
    ) -> str:
        """A tiny model for `classes` (carrying them and its exported LiteRT engine, as training
        and the register stage log them, unless `carries_classes` is False: logged as before
        models carried either), registered with `tags` and made champion; its version."""
        import mlflow
        from mlflow.tracking import MlflowClient

        from imgclf.tracking import log_classifier, open_run

        model = tiny_model(self.image_size, seed, len(classes))
        example = np.zeros((1, self.image_size, self.image_size, 3), "float32")
        with open_run(self.params, self.root) as run:
            if carries_classes:
                log_classifier(model, example, classes)
            else:
                _log_without_classes(model)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", self.model_name).version
        client = MlflowClient(self.uri, self.uri)
        answers = model
        if carries_classes:
            answers, engine_tags = self._exported(client, run.info.run_id, model, str(version))
            tags = {**engine_tags, **(tags or {})}
        for key, value in (tags or {}).items():
            client.set_model_version_tag(self.model_name, version, key, value)
        self.point_alias(str(version))
        self.models[str(version)] = answers
        return str(version)

    def _exported(self, client, run_id: str, model, version: str) -> tuple[object, dict]:
        """The model's LiteRT engine (what the service will run) and its registry tags."""
        from imgclf.model.engines import ENGINE_FILES, export_engine, load_engine
        from imgclf.registry.registration import engine_tags

        path = self.root / f"v{version}" / ENGINE_FILES["litert"]
        path.parent.mkdir(parents=True, exist_ok=True)
        export_engine(model, "litert", path)
        return load_engine(path), engine_tags(client, run_id, path, {"max_abs_diff": 0.0})

    def point_alias(self, version: str) -> None:
        """Move @champion to a version registered before (a rollback, as `imgclf rollback`)."""
        from mlflow.tracking import MlflowClient

        MlflowClient(self.uri, self.uri).set_registered_model_alias(
            self.model_name, "champion", version
        )

    def expected(self, version: str, files: list[Path]) -> np.ndarray:
        """(n, K) class probabilities of `files` by batch prediction's path and the engine the
        service runs for that version, in the model's order."""
        from imgclf.model.inference import predict_probabilities

        return predict_probabilities(self.models[version], files, batch_size=8, desc="")


def _log_without_classes(model: object) -> None:
    """The run's `model` artifact as models were logged before they carried their classes."""
    import mlflow

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        mlflow.keras.save_model(model, str(folder), pip_requirements=["tensorflow-cpu", "keras"])
        mlflow.log_artifacts(str(folder), "model")
