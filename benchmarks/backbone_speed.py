"""EfficientNet-Lite0 feature extraction speed: plain `tf.function` (with a TensorSpec) vs
`model.predict`, at several input sizes.

    python -m benchmarks.backbone_speed [--sizes 160 192 224] [--batch-size 32] [--batches 4]
        [--weights artifacts/pretrained/efficientnet_lite0.weights.h5]

Weights do not change the speed; without --weights the backbone has random weights. Both paths
see the same in-memory float32 batches (decoding is not timed). CPU timings are noisy (up to 2x
run to run on 2 cores): compare ratios within one run.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.timing import best_rate


def bench(size: int, batch_size: int, batches: int, repeats: int, weights: str | None) -> dict:
    import tensorflow as tf

    from imgclf.model.architectures.efficientnet_lite import (
        efficientnet_lite0,
        load_pretrained_backbone,
    )

    if weights:
        model = load_pretrained_backbone(weights, size)
    else:
        model = efficientnet_lite0(False, (size, size, 3))
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1, (batch_size * batches, size, size, 3)).astype("float32")
    chunks = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]

    features = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)],
    )

    def run_tf_function():
        for chunk in chunks:
            features(chunk).numpy()

    def run_predict():
        model.predict(data, batch_size=batch_size, verbose=0)

    run_tf_function()  # trace + warm up
    model.predict(data[:batch_size], batch_size=batch_size, verbose=0)
    rate_fn = best_rate(run_tf_function, len(data), repeats)
    rate_predict = best_rate(run_predict, len(data), repeats)
    return {"size": size, "tf_function": rate_fn, "predict": rate_predict}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[160, 192, 224])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=4, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best one counts")
    parser.add_argument("--weights", default=None, help="a .weights.h5 from stages.pretrained")
    args = parser.parse_args(argv)

    import os

    print(
        f"cpu cores usable: {len(os.sched_getaffinity(0))}, batch {args.batch_size}, "
        f"{args.batches * args.batch_size} images per timed run, best of {args.repeats}"
    )
    print(f"{'size':>5} {'tf.function img/s':>18} {'predict img/s':>14} {'fn/predict':>11}")
    for size in args.sizes:
        r = bench(size, args.batch_size, args.batches, args.repeats, args.weights)
        print(
            f"{size:>5} {r['tf_function']:>18.1f} {r['predict']:>14.1f} "
            f"{r['tf_function'] / r['predict']:>10.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
