"""Forward-pass engines for a trained model: Keras call, tf.function, LiteRT, ONNX Runtime and
(when installed: benchmarks/requirements.txt) OpenVINO forced to float32.

    python -m benchmarks.engines [--model artifacts/train/model.keras] [--photos 64]
        [--latency-calls 100] [--repeats 5]

Per engine: batch-1 latency (median), batch-32 images/s (best of --repeats), max |Δp| against Keras
on real photos through THE preprocessing, and the share of this machine's limit: the model's FLOPs
per image against float32 matmul GFLOP/s measured in the same run (the engines spend most of their
time in 1x1 convolutions, which are matmuls). Read ratios, not absolutes: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.timing import best_rate

Forward = Callable[[np.ndarray], np.ndarray]


def sample_photos(count: int, size: int) -> np.ndarray:
    """`count` real photos (half of each class folder) through THE preprocessing."""
    from imgclf.model.preprocess import load_images

    root = Path(os.environ.get("IMGCLF_SAMPLE_DATA", "../shared/data/dogs-vs-cats"))
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    files = [f for d in folders for f in sorted(d.glob("*.jpg"))[: count // len(folders)]]
    return np.asarray(load_images([str(f) for f in files], size), dtype="float32")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 matmul throughput of this machine through TensorFlow (all cores)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()
    return best_rate(lambda: product(a).numpy(), 2 * n**3, repeats) / 1e9


def model_gflop(model) -> float:
    """Floating-point operations of one image's forward pass (TensorFlow's profiler count)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    frozen = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    )
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=frozen.graph, options=options)
    return profile.total_float_ops / 1e9


def openvino_forward(model_path: Path) -> Forward | None:
    """OpenVINO on the CPU with float32 inference (its default here is bf16), or None."""
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(model_path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    return lambda batch: compiled(batch)[0]


def engines(model, scratch: Path) -> dict[str, Forward]:
    from imgclf.model.engines import ENGINE_FILES, KerasEngine, export_engine, load_engine

    found: dict[str, Forward] = {
        "keras call": lambda batch: np.asarray(model(batch, training=False)),
        "tf.function": KerasEngine(model),
    }
    for kind in ("litert", "onnx"):
        path = export_engine(model, kind, scratch / ENGINE_FILES[kind])
        found[{"litert": "LiteRT", "onnx": "ONNX Runtime"}[kind]] = load_engine(path)
    openvino = openvino_forward(scratch / ENGINE_FILES["onnx"])
    if openvino is not None:
        found["OpenVINO f32"] = openvino
    return found


def latency_ms(forward: Forward, image: np.ndarray, calls: int) -> float:
    forward(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        forward(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="artifacts/train/model.keras")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--latency-calls", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from imgclf.model.decision import class_probabilities
    from imgclf.model.inference import load_model, model_image_size

    model = load_model(args.model)
    photos = sample_photos(args.photos, model_image_size(model))
    batch = photos[:32]
    gflop = model_gflop(model)
    limit = matmul_gflops() / gflop
    print(f"model {gflop:.2f} GFLOP/image; machine limit ~{limit:.0f} img/s from matmul\n")
    with tempfile.TemporaryDirectory() as scratch:
        found = engines(model, Path(scratch))
        reference = class_probabilities(found["tf.function"](photos))
        print("| engine | batch 1 ms | batch 32 img/s | max abs diff p | share of limit |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, forward in found.items():
            forward(batch)
            rate = best_rate(lambda f=forward: f(batch), len(batch), args.repeats)
            diff = np.abs(class_probabilities(np.asarray(forward(photos))) - reference).max()
            ms = latency_ms(forward, photos[:1], args.latency_calls)
            print(f"| {name} | {ms:.2f} | {rate:.0f} | {diff:.1e} | {rate / limit:.0%} |")


if __name__ == "__main__":
    main()
