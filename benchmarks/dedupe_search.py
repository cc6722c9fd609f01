"""Near-duplicate search: multi-index hashing (imgclf.data.dedupe.near_pairs) vs all pairs (numpy).

Random 64-bit hashes plus planted near copies (0..threshold bits apart); both methods must return
the same pairs. Prints seconds per size, the speed-up, and each method's growth exponent (slope of
log time over log n: ~2 for all pairs, lower for the index).

    .venv/bin/python benchmarks/dedupe_search.py [--sizes 1000 5000 25000] [--threshold 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imgclf.data.dedupe import brute_force_pairs, near_pairs


def make_hashes(n: int, threshold: int, planted_fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(n, 1), dtype=np.uint64, endpoint=False)
    planted = int(n * planted_fraction)
    sources = rng.integers(0, n - planted, size=planted)
    for k, source in enumerate(sources):
        flips = rng.choice(64, size=rng.integers(0, threshold + 1), replace=False)
        mask = np.bitwise_or.reduce(np.left_shift(np.uint64(1), flips.astype(np.uint64)))
        words[n - planted + k, 0] = words[source, 0] ^ (mask if flips.size else np.uint64(0))
    return words


def best_of(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 25000])
    parser.add_argument("--threshold", type=int, default=4)
    parser.add_argument("--planted", type=float, default=0.01, help="fraction of near copies")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    print(f"threshold {args.threshold}, 64-bit hashes, {args.planted:.0%} planted near copies")
    print(f"{'n':>7} {'pairs':>6} {'index s':>9} {'all-pairs s':>12} {'speed-up':>9}")
    for n in args.sizes:
        words = make_hashes(n, args.threshold, args.planted, seed=n)
        t_index, found = best_of(lambda w=words: near_pairs(w, args.threshold, 64), args.repeats)
        t_brute, expected = best_of(
            lambda w=words: brute_force_pairs(w, args.threshold), 1 if n > 10_000 else args.repeats
        )
        assert np.array_equal(found, expected), f"index and all-pairs disagree at n={n}"
        rows.append((n, t_index, t_brute))
        print(f"{n:>7} {len(found):>6} {t_index:>9.4f} {t_brute:>12.4f} {t_brute / t_index:>8.1f}x")

    if len(rows) >= 2:
        logn = np.log([r[0] for r in rows])
        for name, col in (("index", 1), ("all-pairs", 2)):
            logt = np.log([r[col] for r in rows])
            slopes = np.diff(logt) / np.diff(logn)
            steps = ", ".join(
                f"{rows[i][0]}->{rows[i + 1][0]}: {slope:.2f}" for i, slope in enumerate(slopes)
            )
            print(f"growth exponent {name:>9}: {np.polyfit(logn, logt, 1)[0]:.2f} ({steps})")


if __name__ == "__main__":
    main()
