"""The dedupe stage's hashing on a Ray cluster (`dedupe.engine: ray`): `hash_images_on_ray`
stands in for imgclf.data.dedupe's `hash_images` and gives the same hashes in the same order,
each computed by `hash_image` on a worker (imgclf.data.cluster runs the pipeline). The
near-duplicate search over them stays in the stage's process."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from imgclf.data.cluster import connected, in_input_order, read_bytes, run_pipeline
from imgclf.data.dedupe import hash_image


def hash_images_on_ray(
    paths: Sequence[Path | str],
    algorithm: str = "phash",
    hash_size: int = 8,
    *,
    decode_size: int = 128,
    address: str | None = None,
    progress: bool = True,
) -> list[str]:
    """`imgclf.data.dedupe.hash_images` on a Ray cluster: hex hashes of `paths`, in order, each
    computed by `hash_image` from the file's bytes."""
    rows = [{"index": i, "source": os.path.abspath(path)} for i, path in enumerate(paths)]
    options = {"algorithm": algorithm, "hash_size": hash_size, "decode_size": decode_size}
    bar = tqdm(total=len(rows), desc=f"{algorithm} hashing", unit="img", disable=not progress)
    with connected(address), bar:
        batches = run_pipeline(rows, read_bytes, _hash_batch, fn_kwargs=options)
        placed = in_input_order(batches, len(rows), bar)
    return [row["hash"] for row in placed]


def _hash_batch(batch: pa.Table, algorithm: str, hash_size: int, decode_size: int) -> pa.Table:
    """Work stage of dedupe: `hash_image` on each file's bytes (Pillow reads them as it reads
    the file)."""
    hashes = [
        hash_image(io.BytesIO(data), algorithm, hash_size, decode_size)
        for data in batch["data"].to_pylist()
    ]
    return pa.table({"index": batch["index"], "hash": pa.array(hashes, pa.string())})
