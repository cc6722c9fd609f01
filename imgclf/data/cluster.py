"""The ray engine's pipeline (`engine: ray`): Ray Data stands in for a stage's local executor
and gives the same results in the same order. The phases plug their per-item work in:
decoding (imgclf.data.cluster_download), hashing (imgclf.data.cluster_dedupe) and batch
prediction (imgclf.model.cluster_predict).

Equal output by construction: every file goes through the per-item function the local engine
calls; each row carries its input's index and the results are put back in input order.

The pipeline, with this process as the cluster's driver:

    files listed here -> read on this machine's node (the files are here; no CPU reserved)
      -> the per-item function in batches, in CPU tasks on any node
      -> results streamed back here (the download's images are written here, into its output)

Only the read stage touches this machine's files (on this node, by absolute path: a Ray worker
does not run in the driver's current folder); the work stage gets each file as bytes through
Ray's object store, and writes one to its own scratch folder where the per-item function wants
a file. A worker that dies mid-batch is replaced and its batch rerun by Ray (tasks are retried
on system failures); results are keyed by index, so a rerun can neither lose nor repeat a file.
A file the read stage cannot read is handed to the per-item function where it lies, which
reports it as it does locally (a quarantine row `unreadable`).

Ray is imported only inside these functions: the local engine never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

# Most files per task: enough that a task's scheduling and transfer (~50-100 ms on two busy
# cores) stay small beside its work (decoding 256 photos: ~1 s on one core). Fewer files make
# as many batches as the cluster has CPUs, so a small input still spreads over every node.
BATCH_SIZE = 256
# Readers on the driver's node: reading is I/O, so they hold no CPU (the head of a big cluster
# usually offers none), and this bound keeps them from flooding the object store.
READERS = 2

Rows = list[dict[str, Any]]
BatchFunction = Callable[[pa.Table], pa.Table]


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """This process as a driver of the Ray cluster at `address` ("host:port" of its head; None:
    $RAY_ADDRESS, else a Ray started on this machine) until the block ends. Inside a Ray job
    (`ray job submit`), the job's connection is used as it is."""
    import ray
    import ray.data

    if ray.is_initialized():
        yield
        return
    if address and address.startswith("ray://"):
        # Ray Client runs the driver's side on the head, away from the files listed here.
        raise ConnectionError(
            f"{address}: Ray Client is not supported; run the command on the cluster's head "
            "(`ray job submit`, `ray attach`) with its host:port, or none"
        )
    # Workers' own output stays in the cluster's logs; their errors come back as exceptions.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    # The stage's own tqdm bar counts the images; Ray Data's bars and plans would only add noise.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def run_pipeline(
    rows: Rows,
    read: BatchFunction,
    work: BatchFunction | type,
    *,
    read_kwargs: dict[str, Any] | None = None,
    read_anywhere: bool = False,
    **work_options: Any,
) -> Iterator[pa.Table]:
    """Result batches of rows -> `read` -> `work`, as they complete (in any order: each row keeps
    its `index`). `read(batch, **read_kwargs)` runs on this node unless `read_anywhere` (files any
    node can reach, such as S3 objects); `work` is a function run in CPU tasks, or a callable
    class run in actors, with `work_options` for Ray Data's `map_batches` (`fn_kwargs`,
    `compute`, `fn_constructor_kwargs`, ...)."""
    if not rows:  # nothing to read: no Ray Data job at all
        return
    import ray
    import ray.data

    batch_size = files_per_task(len(rows))
    blocks = max(1, math.ceil(len(rows) / batch_size))
    # Ray's own way to keep work on the driver's node (as for its `local://` reads).
    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    dataset = (
        ray.data.from_items(rows, override_num_blocks=blocks)
        .map_batches(
            _Reader,
            fn_constructor_kwargs={"read": read, "options": read_kwargs or {}},
            batch_format="pyarrow",
            batch_size=batch_size,
            num_cpus=0,
            compute=ray.data.ActorPoolStrategy(size=min(READERS, blocks)),
            label_selector=None if read_anywhere else here,
        )
        .map_batches(
            work, batch_format="pyarrow", batch_size=batch_size, num_cpus=1, **work_options
        )
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


class _Reader:
    """The read stage's workers: actors, alive for the whole pipeline. Tasks on a node that
    offers no CPU (the head) would each wait for a new worker process: Ray keeps no idle ones
    there."""

    def __init__(self, read: BatchFunction, options: dict[str, Any]) -> None:
        self.read, self.options = read, options

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.read(batch, **self.options)


def files_per_task(files: int) -> int:
    """`BATCH_SIZE`, or fewer: at least one task per CPU of the cluster."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return max(1, min(BATCH_SIZE, math.ceil(files / cpus)))


def in_input_order(batches: Iterator[pa.Table], total: int, bar: tqdm) -> list[dict[str, Any]]:
    """Rows of the result `batches` placed by their `index`: exactly one per input, or an error
    (a retried batch delivered twice, or one lost, would show here rather than in the output)."""
    placed: list[dict[str, Any] | None] = [None] * total
    for batch in batches:
        for row in batch.to_pylist():
            if placed[row["index"]] is not None:
                raise RuntimeError(f"the cluster returned input {row['index']} twice")
            placed[row["index"]] = row
        bar.update(batch.num_rows)
    missing = [index for index, row in enumerate(placed) if row is None]
    if missing:
        raise RuntimeError(f"the cluster returned no result for {len(missing)} inputs")
    return placed  # type: ignore[return-value]  (no None left)


def read_bytes(batch: pa.Table) -> pa.Table:
    """Read stage: each row's `source` file as `data`. An unreadable file stops the pipeline,
    as it stops the local engine's loop."""
    data = [Path(source).read_bytes() for source in batch["source"].to_pylist()]
    return batch.append_column("data", pa.array(data, pa.large_binary()))
