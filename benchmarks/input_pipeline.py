"""Does the tf.data input pipeline keep the model busy? Images/s of the same model fed from
files (decode + resize in tf.data) vs from memory (pre-decoded tensors), in one run.

    python -m benchmarks.input_pipeline [--images 256] [--size 224] [--arch efficientnet_lite0]

The model is the default classifier's backbone (random weights: same speed) in inference mode,
which is what feature caching and evaluation run. The goal is a ratio >= 0.90. CPU timings are
noisy on 2 cores: compare the ratio, measured within one run, not absolute numbers.
"""

from __future__ import annotations

import argparse
import glob
import os

from benchmarks.timing import best_rate
from imgclf.config import PROJECT_ROOT, TrainParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import tensorflow as tf

    from imgclf.model.architectures.factory import build_classifier
    from imgclf.model.dataset import image_dataset
    from imgclf.model.inference import predict_batches
    from imgclf.model.preprocess import load_images

    photos = os.environ.get(
        "IMGCLF_SAMPLE_DATA", str(PROJECT_ROOT.parent / "shared/data/dogs-vs-cats")
    )
    files = sorted(glob.glob(f"{photos}/*/*.jpg"))[: args.images]
    params = TrainParams(arch=args.arch, image_size=args.size, weights=None)
    classifier = build_classifier(params, 2)
    model = classifier.backbone or classifier.model

    from_files = image_dataset(files, args.size, args.batch_size)
    in_memory = (
        tf.data.Dataset.from_tensor_slices(load_images(files, args.size))
        .batch(args.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    n = len(files)
    decode_only = best_rate(lambda: [None for _ in from_files], n, args.repeats)
    memory_rate = files_rate = 0.0
    for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits both sides
        memory_rate = max(memory_rate, best_rate(lambda: predict_batches(model, in_memory), n, 1))
        files_rate = max(files_rate, best_rate(lambda: predict_batches(model, from_files), n, 1))

    print(f"{len(files)} photos at {args.size} px, batch {args.batch_size}, {args.arch}")
    print(f"  tf.data decode + resize only : {decode_only:8.1f} img/s")
    print(f"  model fed from memory        : {memory_rate:8.1f} img/s  (baseline)")
    print(f"  model fed from files         : {files_rate:8.1f} img/s")
    print(f"  ratio files / memory         : {files_rate / memory_rate:8.3f}  (goal >= 0.90)")


if __name__ == "__main__":
    main()
