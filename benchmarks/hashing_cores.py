"""Perceptual-hashing throughput on the real photos: 1 process vs all cores.

Hashes the first --count photos of $IMGCLF_SAMPLE_DATA (default ../shared/data/dogs-vs-cats) with
`imgclf.data.dedupe.hash_images`, pool start-up included, and prints img/s and the ratio. The
reduced JPEG decode (decode_size, PIL draft) is the default; --decode-size 0 measures full decodes.

    .venv/bin/python benchmarks/hashing_cores.py [--count 1000] [--algorithm phash]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from imgclf.config import DedupeParams, resolve_workers  # noqa: E402
from imgclf.data.dedupe import hash_images  # noqa: E402
from imgclf.io import read_tsv  # noqa: E402


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers): immune to contention."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    defaults = DedupeParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--algorithm", default=defaults.algorithm)
    parser.add_argument("--hash-size", type=int, default=defaults.hash_size)
    parser.add_argument("--decode-size", type=int, default=defaults.decode_size)
    args = parser.parse_args()

    data = Path(os.environ.get("IMGCLF_SAMPLE_DATA", ROOT.parent / "shared/data/dogs-vs-cats"))
    rows = read_tsv(data / "MANIFEST.tsv")
    files = [data / row["path"] for row in rows[:: max(1, len(rows) // args.count)]][: args.count]
    cores = resolve_workers(0)
    hash_images(files[:20], args.algorithm, args.hash_size, workers=1, progress=False)  # warm-up

    print(
        f"{len(files)} photos from {data}, {args.algorithm} {args.hash_size}x{args.hash_size}, "
        f"decode_size {args.decode_size}"
    )
    rates = {}
    for workers in sorted({1, cores}):
        cpu_before, start = _cpu_seconds(), time.perf_counter()
        hashes = hash_images(
            files,
            args.algorithm,
            args.hash_size,
            workers=workers,
            decode_size=args.decode_size,
            progress=False,
        )
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_before
        rates[workers] = len(hashes) / seconds
        print(
            f"{workers:>3} process(es): {seconds:6.2f} s  {rates[workers]:7.0f} img/s  "
            f"(CPU {cpu:.2f} s = {len(hashes) / cpu:.0f} img per CPU-second)"
        )
    print(f"all {cores} cores / 1 process: {rates[cores] / rates[1]:.2f}x")
    print(
        f"load average now: {os.getloadavg()[0]:.2f} (other work on the machine skews wall times)"
    )


if __name__ == "__main__":
    main()
