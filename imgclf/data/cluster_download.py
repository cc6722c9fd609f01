"""The download stage's decoding on a Ray cluster (`download.engine: ray`): `RayDecoder` stands
in for imgclf.data.ingest's `_Decoder` and gives the same results in the same order, each file
standardised by `ingest_file`'s own steps: read here (`read_bounded`), standardised on a worker
(`ingest_bytes`); imgclf.data.cluster runs the pipeline. The kept images are written here, into
the stage's output: re-encoded ones from the bytes that come back, the others (most JPEGs, kept
byte for byte) copied from their source."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from imgclf.data.cluster import connected, in_input_order, run_pipeline
from imgclf.data.ingest import ImageResult, ingest_bytes, ingest_file, read_bounded


class RayDecoder:
    """The download stage's decoder on a Ray cluster: `run(tasks)` standardises each (source,
    destination) pair with `ingest_file`, writes the kept images here, and returns the results
    in task order, as `imgclf.data.ingest._Decoder.run` does."""

    def __init__(self, address: str | None, progress: bool, **options: Any) -> None:
        self.address = address
        self.progress = progress
        self.options = options  # ingest_file's keywords: limits, jpeg_quality, max_bytes

    def __enter__(self) -> RayDecoder:
        self.connection = connected(self.address)
        self.connection.__enter__()
        self.bar = tqdm(total=0, desc="decode", unit="img", disable=not self.progress, leave=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        self.connection.__exit__(*exc)

    def run(self, tasks: list[tuple[str, str]]) -> list[ImageResult]:
        self.bar.total += len(tasks)
        self.bar.refresh()
        rows = [
            {"index": i, "source": os.path.abspath(src), "dest": os.path.abspath(dest)}
            for i, (src, dest) in enumerate(tasks)
        ]
        batches = run_pipeline(
            rows,
            _read_or_report,
            _ingest_batch,
            read_kwargs={"options": self.options},
            fn_kwargs={"options": self.options},
        )
        results = []
        for row, (src, dest) in zip(
            in_input_order(batches, len(tasks), self.bar), tasks, strict=True
        ):
            result = _decoded(row["result"])
            if result.kept and result.converted:
                Path(dest).write_bytes(row["data"])
            elif result.kept:  # kept byte for byte: the source is the clean image
                shutil.copyfile(src, dest)
            results.append(result)
        return results


def _read_or_report(batch: pa.Table, options: dict[str, Any]) -> pa.Table:
    """Read stage of the download: each source's bytes (as many as `ingest_file` reads), or, for
    a file that cannot be read, `ingest_file`'s own report of it (it fails the same way here and
    writes nothing)."""
    data, reports = [], []
    for source, dest in zip(batch["source"].to_pylist(), batch["dest"].to_pylist(), strict=True):
        try:
            data.append(read_bounded(Path(source), options["max_bytes"]))
            reports.append("")
        except OSError:
            data.append(b"")
            reports.append(_encoded(ingest_file(Path(source), Path(dest), **options)))
    return pa.table(
        {
            "index": batch["index"],
            "data": pa.array(data, pa.large_binary()),
            "result": pa.array(reports, pa.string()),
        }
    )


def _ingest_batch(batch: pa.Table, options: dict[str, Any]) -> pa.Table:
    """Work stage of the download: `ingest_bytes` (`ingest_file` after its read) on each file's
    bytes; the clean image travels back as `data`."""
    results, clean = [], []
    reported = batch["result"].to_pylist()
    for data, report in zip(batch["data"].to_pylist(), reported, strict=True):
        if report:  # already reported by the read stage
            results.append(report)
            clean.append(b"")
            continue
        result, image = ingest_bytes(data, **options)
        results.append(_encoded(result))
        # Unconverted, the clean image is the source's bytes (standardise's contract), which
        # the driver has: only re-encoded images travel back.
        clean.append(image if result.converted else b"")
    return pa.table(
        {
            "index": batch["index"],
            "data": pa.array(clean, pa.large_binary()),
            "result": pa.array(results, pa.string()),
        }
    )


def _encoded(result: ImageResult) -> str:
    return json.dumps(asdict(result))


def _decoded(text: str) -> ImageResult:
    fields = json.loads(text)
    return ImageResult(**{**fields, "converted": tuple(fields["converted"])})
