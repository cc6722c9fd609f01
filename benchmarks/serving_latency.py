"""Serving overhead: HTTP /predict latency vs the bare forward call, and throughput under load.

    python benchmarks/serving_latency.py [--photo FILE] [--requests 100] [--image-size 224]
        [--arch efficientnet_lite2 --image-size 260 --tta]   # the default model's shape

Registers an architecture (EfficientNet-Lite0 at 224 px unless told, random weights: same speed as
trained ones; `--arch` picks another of imgclf.config.Arch) with its exported engine (`--engine
litert|onnx`, as the register stage logs it; `keras`: none, the Keras model is served) as
@champion in a temp MLflow store, starts `bentoml serve` (auth disabled) on 127.0.0.1 and prints:
  * concurrency 1: p50/p95/p99 of /predict (one JPEG) vs the bare engine (batch 1, the service's
    own forward on an already-preprocessed image) and vs the service's validation, decoding,
    THE resize and forward called in one thread (no HTTP), and the target p50 <= 1.3 x bare + 3 ms;
  * concurrency 32: images/s through /predict (adaptive batching) vs the bare engine at its best
    batch size of 1, 8, 16, 32, and the target ratio >= 0.8.
Both through the Python `requests` client (threads, on the same 2 cores as the service) and, when
`ab` is installed (apt apache2-utils), through ApacheBench: a C client whose own cost is small,
so its numbers are closer to the service's own overhead.
Numbers on a shared 2-core machine are noisy: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.timing import best_rate  # noqa: E402
from tests.support.helpers import BentoServer  # noqa: E402

NAME = "imgclf-benchmark"
READY_TIMEOUT_S = 180


def build_model(arch: str, size: int, tta: bool):
    """The saved model's shape: the classifier, with the mirror averaged in when `tta`."""
    from imgclf.config import TrainParams
    from imgclf.model.architectures.factory import build_classifier, inference_model

    classifier = build_classifier(TrainParams(arch=arch, weights=None, image_size=size), 2)
    return inference_model(classifier, 1.0, tta)


def register(tmp: Path, arch: str, size: int, engine: str, tta: bool):
    import mlflow
    from mlflow.tracking import MlflowClient

    from imgclf.config import MlflowParams
    from imgclf.model.engines import ENGINE_FILES, export_engine, load_engine
    from imgclf.registry.registration import engine_tags
    from imgclf.tracking import log_classifier, open_run

    params = MlflowParams(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    model = build_model(arch, size, tta)
    with open_run(params, tmp) as run:
        log_classifier(model, np.zeros((1, size, size, 3), "float32"), ["cat", "dog"])
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", NAME).version
    client = MlflowClient(params.tracking_uri)
    if engine != "keras":
        path = export_engine(model, engine, tmp / ENGINE_FILES[engine])
        for key, value in engine_tags(client, run.info.run_id, path, {"max_abs_diff": 0}).items():
            client.set_model_version_tag(NAME, version, key, value)
        model = load_engine(path)
    client.set_registered_model_alias(NAME, "champion", version)
    return model, params.tracking_uri


def ab_measure(url: str, photo: bytes, requests_n: int, concurrency: int) -> tuple[float, float]:
    """p50 (ms) and images/s of /predict under ApacheBench (`ab`, apt apache2-utils): a C client
    on one thread, so the numbers are the service's, not a Python client's share of the 2 cores.
    ab has no multipart encoder: the form is built once here."""
    boundary = "imgclf-benchmark-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    with tempfile.TemporaryDirectory() as scratch:
        body, table = Path(scratch) / "body", Path(scratch) / "percentiles.csv"
        body.write_bytes(head.encode() + photo + f"\r\n--{boundary}--\r\n".encode())
        command = ["ab", "-q", "-k", "-n", str(requests_n), "-c", str(concurrency)]
        command += ["-p", str(body), "-T", f"multipart/form-data; boundary={boundary}"]
        command += ["-e", str(table), url + "/predict"]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        with table.open() as f:
            p50 = next(float(ms) for pct, ms in list(csv.reader(f))[1:] if pct == "50")
    failed = int(next(line.split()[-1] for line in out.splitlines() if "Failed requests" in line))
    non_2xx = [line for line in out.splitlines() if "Non-2xx" in line]
    if failed or non_2xx:
        raise RuntimeError(f"ab saw failures:\n{out}")
    rate = float(
        next(line.split()[3] for line in out.splitlines() if "Requests per second" in line)
    )
    return p50, rate


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
    parser.add_argument("--engine", choices=["litert", "onnx", "keras"], default="litert")
    parser.add_argument("--tta", action="store_true", help="flip TTA in the model (2 views)")
    args = parser.parse_args()
    from imgclf.serving.holder import build_loaded_model
    from imgclf.serving.validation import Upload, UploadLimits, model_inputs

    photo = args.photo.read_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        model, uri = register(tmp, args.arch, args.image_size, args.engine, args.tta)
        # Bare engine: the service's own forward on a preprocessed image.
        loaded = build_loaded_model(model, "bare", "memory", ("cat", "dog"))
        limits = UploadLimits(len(photo), 10**9, 10**9)

        def model_input() -> np.ndarray:
            """The service's own validation, decoding and THE resize of the photo."""
            _, inputs = model_inputs([Upload(photo, "image/jpeg")], limits, args.image_size)
            return inputs[0][None]

        x = model_input()
        bare, serial = [], []
        for _ in range(args.requests):
            t = time.perf_counter()
            loaded.forward(x)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            loaded.forward(model_input())
            serial.append(time.perf_counter() - t)
        batches = [np.repeat(x, size, axis=0) for size in (1, 8, 16, args.concurrency)]
        bare_throughput = max(
            best_rate(lambda b=b: loaded.forward(b), len(b), repeats=5) for b in batches
        )

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
            if shutil.which("ab"):
                ab_measure(url, photo, 20, 1)  # warm-up
                ab_p50, _ = ab_measure(url, photo, args.requests, 1)
                ab_measure(url, photo, args.concurrency, args.concurrency)
                _, ab_rate = ab_measure(url, photo, total, args.concurrency)
        finally:
            server.stop()

    h, b, s = percentiles(http), percentiles(bare), percentiles(serial)
    print(
        f"{args.arch} at {args.image_size}px{' + flip TTA' * args.tta}, engine {args.engine}; "
        f"photo {args.photo.name}; "
        f"{args.requests} requests"
    )
    print("concurrency 1 latency (ms)        p50      p95      p99")
    print(f"  HTTP /predict (Python client) {h['p50']:8.2f} {h['p95']:8.2f} {h['p99']:8.2f}")
    print(f"  bare forward (batch 1)        {b['p50']:8.2f} {b['p95']:8.2f} {b['p99']:8.2f}")
    print(f"  decode + resize + forward     {s['p50']:8.2f} {s['p95']:8.2f} {s['p99']:8.2f}")
    print(f"concurrency {args.concurrency} throughput (img/s)")
    print(f"  HTTP /predict (Python client) {http_throughput:8.1f}")
    print(f"  bare forward (best batch)     {bare_throughput:8.1f}")
    target = 1.3 * b["p50"] + 3
    rows = [("Python requests", h["p50"], http_throughput)]
    if shutil.which("ab"):
        rows.append(("ab (C)", ab_p50, ab_rate))
        print(
            f"  ab: p50 {ab_p50:.2f} ms at concurrency 1, {ab_rate:.1f} img/s at {args.concurrency}"
        )
    print(f"targets: p50 <= 1.3 x bare + 3 ms = {target:.1f} ms; throughput ratio >= 0.8")
    print("| client | p50 ms | p50 target met | img/s | ratio to bare | ratio target met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for client, p50, rate in rows:
        ratio = rate / bare_throughput
        met = (p50 <= target, ratio >= 0.8)
        print(f"| {client} | {p50:.1f} | {met[0]} | {rate:.1f} | {ratio:.2f} | {met[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
