"""tf.data input pipelines from the split manifests, built on THE preprocessing (Pillow, called
through `tf.numpy_function`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from imgclf.io import read_tsv
from imgclf.model.preprocess import preprocess_bytes


@dataclass(frozen=True)
class LabelledFiles:
    """Image files (absolute paths) with integer labels (index into the class list)."""

    files: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


def read_split(manifest: Path, classes: Sequence[str], root: Path) -> LabelledFiles:
    """A split manifest (path, label, ...) -> files under `root` with label indices."""
    index = {name: i for i, name in enumerate(classes)}
    rows = read_tsv(manifest)
    unknown = {row["label"] for row in rows} - index.keys()
    if unknown:
        raise ValueError(f"{manifest}: labels {sorted(unknown)} are not in classes {list(classes)}")
    files = [str(root / row["path"]) for row in rows]
    labels = np.array([index[row["label"]] for row in rows], dtype="int32")
    return LabelledFiles(files, labels)


def image_dataset(
    files: Sequence[str],
    image_size: int,
    batch_size: int,
    targets: np.ndarray | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Files (and training targets: a label per file, or a one-hot row) -> batches of model
    input, decoded in parallel and prefetched.

    Shuffling happens on file names before decoding, so it costs no memory per image. A dataset
    without targets is read once (inference, feature extraction): tf.data's autotuner is off for
    it, since a single pass otherwise ends waiting for the autotuner's next wake-up (whole
    1.28/2.56/5.12 s steps); fixed parallelism (the cores) gives the same throughput, steadily.
    """
    items = list(files) if targets is None else (list(files), targets.astype("float32"))
    dataset = tf.data.Dataset.from_tensor_slices(items)
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)

    def load(path: tf.Tensor, *target: tf.Tensor) -> tf.Tensor | tuple[tf.Tensor, ...]:
        image = tf.numpy_function(
            functools.partial(_preprocess_file, image_size=image_size),
            [path],
            tf.float32,
            stateful=False,
        )
        image.set_shape((image_size, image_size, 3))
        return (image, *target) if target else image

    batches = (
        dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    if targets is not None:
        return batches
    options = tf.data.Options()
    options.autotune.enabled = False
    return batches.with_options(options)


def _preprocess_file(path: bytes, image_size: int) -> np.ndarray:
    """THE preprocessing of one file, inside tf.data (Pillow releases the GIL while it decodes
    and resizes, so parallel calls overlap)."""
    return preprocess_bytes(Path(path.decode()).read_bytes(), image_size)
