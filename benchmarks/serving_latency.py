"""Serving overhead: HTTP /predict latency vs the bare forward call, and throughput under load.

    python benchmarks/serving_latency.py [--photo FILE] [--requests 100] [--image-size 224]

Registers the default architecture (EfficientNet-Lite0 at 224 px, random weights: same speed as
trained ones; `--arch` picks another of imgclf.config.Arch) as @champion in a temp MLflow store,
starts `bentoml serve` (auth disabled) on 127.0.0.1 and prints:
  * concurrency 1: p50/p95/p99 of /predict (one JPEG) vs the bare forward call (batch 1, the
    service's own traced function on an already-preprocessed image), and their ratio;
  * concurrency 32: images/s through /predict (adaptive batching) vs a bare forward at batch 32.
Numbers on a shared 2-core machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.helpers import BentoServer  # noqa: E402

NAME = "imgclf-benchmark"
READY_TIMEOUT_S = 180


def build_model(arch: str, size: int):
    from imgclf.config import TrainParams
    from imgclf.model.architectures.factory import build_classifier

    return build_classifier(TrainParams(arch=arch, weights=None, image_size=size), 2).model


def register(tmp: Path, arch: str, size: int):
    import mlflow
    from mlflow.tracking import MlflowClient

    from imgclf.config import MlflowParams
    from imgclf.tracking import log_classifier, open_run

    params = MlflowParams(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    model = build_model(arch, size)
    with open_run(params, tmp) as run:
        log_classifier(model, np.zeros((1, size, size, 3), "float32"), ["cat", "dog"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", NAME).version
    MlflowClient(params.tracking_uri).set_registered_model_alias(NAME, "champion", version)
    return model, params.tracking_uri


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def main() -> int:
    parser = argparse.ArgumentParser()
    default_photo = ROOT.parent / "shared/data/dogs-vs-cats/cat/cat.1.jpg"
    parser.add_argument("--photo", type=Path, default=default_photo)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    import tensorflow as tf

    from imgclf.model.preprocess import preprocess_bytes
    from imgclf.serving.holder import build_loaded_model

    photo = args.photo.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        model, uri = register(tmp, args.arch, args.image_size)
        # Bare model: the service's traced forward on a preprocessed image.
        loaded = build_loaded_model(model, "bare", "memory")
        x = preprocess_bytes(tf.constant(photo), args.image_size).numpy()[None]
        bare = []
        for _ in range(args.requests):
            t = time.perf_counter()
            loaded.forward(x)
            bare.append(time.perf_counter() - t)
        batch = np.repeat(x, args.concurrency, axis=0)
        loaded.forward(batch)
        t, rounds = time.perf_counter(), 10
        for _ in range(rounds):
            loaded.forward(batch)
        bare_throughput = rounds * args.concurrency / (time.perf_counter() - t)

        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": uri,
            "IMGCLF_SERVE_MODEL_NAME": NAME,
            "IMGCLF_AUTH": "disabled",
            "IMGCLF_PREDICTION_DB_URL": f"sqlite:///{tmp / 'predictions.db'}",
            "BENTOML_HOME": str(tmp / "bentoml"),
        }
        server = BentoServer(env, tmp / "server.log")
        url = server.url
        try:
            server.wait_for("/readyz", READY_TIMEOUT_S)
            session = requests.Session()

            def call(sess=session) -> float:
                t = time.perf_counter()
                r = sess.post(url + "/predict", files={"image": ("x.jpg", photo, "image/jpeg")})
                r.raise_for_status()
                return time.perf_counter() - t

            for _ in range(10):
                call()
            http = [call() for _ in range(args.requests)]
            total = args.requests * 2
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda _: call(requests.Session()), range(args.concurrency)))
                t = time.perf_counter()
                list(pool.map(lambda _: call(requests.Session()), range(total)))
                http_throughput = total / (time.perf_counter() - t)
        finally:
            server.stop()

    h, b = percentiles(http), percentiles(bare)
    print(f"{args.arch} at {args.image_size}px; photo {args.photo.name}; {args.requests} requests")
    print("concurrency 1 latency (ms)   p50      p95      p99")
    print(f"  HTTP /predict          {h['p50']:8.2f} {h['p95']:8.2f} {h['p99']:8.2f}")
    print(f"  bare forward (batch 1) {b['p50']:8.2f} {b['p95']:8.2f} {b['p99']:8.2f}")
    print(
        f"  ratio HTTP/bare        {h['p50'] / b['p50']:8.1f} {h['p95'] / b['p95']:8.1f} "
        f"{h['p99'] / b['p99']:8.1f}"
    )
    print(f"concurrency {args.concurrency} throughput (img/s)")
    print(f"  HTTP /predict          {http_throughput:8.1f}")
    print(f"  bare forward (batch {args.concurrency}) {bare_throughput:8.1f}")
    print(f"  ratio HTTP/bare        {http_throughput / bare_throughput:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
