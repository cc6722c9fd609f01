"""Duplicate detection: content hashes, perceptual hashes, near-duplicate search, groups.

Pipeline (`dedupe_rows`, wrapped for the stage by `run_dedupe`):

1. Exact duplicates share the manifest's `sha256`; each distinct content is decoded and hashed once.
2. Perceptual hashes (`imagehash`: phash/dhash/ahash/whash, `hash_size`² bits) are computed in
   parallel (`hash_images`); JPEGs are decoded at reduced size with PIL's `Image.draft`.
3. Near duplicates = pairs within Hamming distance `threshold`, found by multi-index hashing
   (`near_pairs`), never by comparing all pairs.
4. Union-find over exact and near pairs gives connected components. Every image gets a `group` id:
   components are numbered 0, 1, … in the order of their lexicographically smallest path, so ids
   are deterministic. A *duplicate group* is a component with two or more images.
5. A duplicate group whose members carry different labels is a conflict: all its members are
   quarantined (kept=0, listed in conflicts.tsv with reason `label_conflict`). Otherwise exactly one
   member is kept (`choose_kept`: largest width×height, then smallest path).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image
from tqdm import tqdm

from imgclf.config import DedupeParams, Paths, resolve_workers
from imgclf.io import atomic_dir, read_tsv, write_json, write_tsv

ALGORITHMS: dict[str, Callable[..., imagehash.ImageHash]] = {
    "phash": imagehash.phash,
    "dhash": imagehash.dhash,
    "ahash": imagehash.average_hash,
    "whash": imagehash.whash,
}
MANIFEST_COLUMNS = ("path", "label", "sha256", "width", "height", "hash", "group", "kept")
CONFLICT_COLUMNS = ("path", "label", "sha256", "width", "height", "group", "reason")


# --------------------------------------------------------------------------- perceptual hashing


def hash_image(
    path: Path | str, algorithm: str = "phash", hash_size: int = 8, decode_size: int = 128
) -> str:
    """Perceptual hash of one image as imagehash's hex string (`hash_size`² bits).

    `decode_size` > 0 lets the JPEG decoder produce a grayscale image scaled down by 1/2, 1/4 or
    1/8 while both sides stay >= `decode_size` (`Image.draft`); every hash here works on 32×32 px
    or less, so this barely changes the hash but decodes several times faster. 0 = full decode.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown hash algorithm {algorithm!r}; use one of {sorted(ALGORITHMS)}")
    if algorithm == "whash" and hash_size & (hash_size - 1):
        raise ValueError(f"whash needs a power-of-two hash_size, got {hash_size}")
    with Image.open(path) as image:
        if decode_size > 0:
            image.draft("L", (decode_size, decode_size))  # no-op for non-JPEG formats
        image = image.convert("L")
        return str(ALGORITHMS[algorithm](image, hash_size=hash_size))


def _preload(algorithm: str) -> None:
    """Import what imagehash imports lazily (about 1 s), once in the parent: forked workers inherit
    it instead of each paying for it."""
    if algorithm == "phash":
        import scipy.fftpack  # noqa: F401
    elif algorithm == "whash":
        import pywt  # noqa: F401


def _hash_job(job: tuple[str, str, int, int]) -> str:
    return hash_image(*job)


def hash_images(
    paths: Sequence[Path | str],
    algorithm: str = "phash",
    hash_size: int = 8,
    *,
    workers: int = 0,
    decode_size: int = 128,
    progress: bool = True,
) -> list[str]:
    """Hex hashes of `paths`, in order, over `workers` processes (0 = all cores; 1 = in-process)."""
    jobs = [(str(path), algorithm, hash_size, decode_size) for path in paths]
    _preload(algorithm)
    workers = min(resolve_workers(workers), max(len(jobs), 1))
    bar = tqdm(total=len(jobs), desc=f"{algorithm} hashing", unit="img", disable=not progress)
    with bar:
        if workers == 1:
            results = []
            for job in jobs:
                results.append(_hash_job(job))
                bar.update()
            return results
        chunksize = max(1, min(64, len(jobs) // (workers * 8)))
        with multiprocessing.Pool(workers) as pool:
            results = []
            for digest in pool.imap(_hash_job, jobs, chunksize=chunksize):
                results.append(digest)
                bar.update()
            return results


def hex_to_words(hexes: Sequence[str], nbits: int) -> np.ndarray:
    """Hex hashes -> (n, ceil(nbits/64)) uint64 array; the value sits in the low `nbits` bits."""
    nwords = max(1, -(-nbits // 64))
    raw = b"".join(int(h, 16).to_bytes(nwords * 8, "big") for h in hexes)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(hexes), nwords)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between hash word rows (broadcasting over leading axes)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


# --------------------------------------------------------------------------- near-pair search


def _bits(words: np.ndarray, nbits: int) -> np.ndarray:
    """(n, nwords) uint64 -> (n, nbits) uint8 0/1 array of the meaningful bits, MSB first."""
    as_bytes = words.astype(">u8").view(np.uint8).reshape(len(words), -1)
    return np.unpackbits(as_bytes, axis=1)[:, as_bytes.shape[1] * 8 - nbits :]


def _chunk_keys(chunk_bits: np.ndarray) -> np.ndarray:
    """One integer key per row, equal exactly when the rows' chunk bits are equal."""
    width = chunk_bits.shape[1]
    if width <= 62:
        weights = np.left_shift(np.int64(1), np.arange(width - 1, -1, -1, dtype=np.int64))
        return chunk_bits.astype(np.int64) @ weights
    packed = np.packbits(chunk_bits, axis=1)
    return np.unique(packed, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def _same_key_pairs(keys: np.ndarray) -> np.ndarray:
    """Codes i*n+j (i<j) of every pair of rows with equal keys, without looking at other pairs."""
    n = len(keys)
    order = np.argsort(keys, kind="stable")  # stable: indices ascend inside a run of equal keys
    sorted_keys = keys[order]
    run_id = np.concatenate(([0], np.cumsum(sorted_keys[1:] != sorted_keys[:-1])))
    codes = []
    starts = np.arange(n - 1)
    offset = 1
    while starts.size:
        # runs are contiguous: if i and i+d share a run, so do i and i+d-1, so `starts` only shrinks
        ends = starts + offset
        starts = starts[ends < n]
        ends = starts + offset
        same = run_id[starts] == run_id[ends]
        starts, ends = starts[same], ends[same]
        codes.append(order[starts].astype(np.int64) * n + order[ends])
        offset += 1
    return np.concatenate(codes) if codes else np.empty(0, dtype=np.int64)


def near_pairs(words: np.ndarray, threshold: int, nbits: int | None = None) -> np.ndarray:
    """All pairs (i, j), i < j, with Hamming distance <= threshold; shape (k, 2), sorted.

    Multi-index hashing: the `nbits`-bit hash is cut into threshold+1 contiguous chunks. Two hashes
    differing in at most `threshold` bits cannot differ in every chunk (pigeonhole), so they are
    identical in at least one chunk. Rows are bucketed by each chunk's value (sorting), only pairs
    sharing a bucket become candidates, and candidates are verified with popcount. Exact: the
    same pairs as comparing all pairs (`brute_force_pairs`). Cost grows with the number of
    candidates, about n²/2^(nbits/(threshold+1)) per chunk for uniform hashes, instead of n².
    """
    words = np.ascontiguousarray(words, dtype=np.uint64)
    n = len(words)
    nbits = words.shape[1] * 64 if nbits is None else nbits
    if threshold < 0 or n < 2:
        return np.empty((0, 2), dtype=np.int64)
    if nbits < 4 * (threshold + 1):  # chunks under 4 bits bucket almost everything together:
        return brute_force_pairs(words, threshold)  # comparing all pairs is cheaper then
    bits = _bits(words, nbits)
    candidates = [
        _same_key_pairs(_chunk_keys(bits[:, chunk]))
        for chunk in np.array_split(np.arange(nbits), threshold + 1)
    ]
    codes = np.sort(np.concatenate(candidates))  # sort + diff: faster than np.unique's hashing
    codes = codes[np.concatenate(([True], codes[1:] != codes[:-1]))] if codes.size else codes
    left, right = codes // n, codes % n
    close = hamming(words[left], words[right]) <= threshold
    return np.stack([left[close], right[close]], axis=1)


def brute_force_pairs(words: np.ndarray, threshold: int, block: int = 256) -> np.ndarray:
    """All pairs within `threshold`, comparing every pair (numpy, blockwise): the reference."""
    words = np.ascontiguousarray(words, dtype=np.uint64)
    n = len(words)
    found = []
    for start in range(0, n, block):
        rows = words[start : start + block]
        dist = hamming(rows[:, None, :], words[None, start:, :])  # (b, n - start)
        i, j = np.nonzero(dist <= threshold)
        j = j + start
        i = i + start
        upper = j > i
        found.append(np.stack([i[upper], j[upper]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# --------------------------------------------------------------------------- groups


def connected_components(n: int, pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Union-find: a root index per element (roots are arbitrary; see `number_groups`)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def number_groups(roots: Sequence[int], paths: Sequence[str]) -> list[int]:
    """Renumber components 0, 1, … in the order of each component's smallest path."""
    smallest: dict[int, str] = {}
    for root, path in zip(roots, paths, strict=True):
        if root not in smallest or path < smallest[root]:
            smallest[root] = path
    ids = {root: i for i, root in enumerate(sorted(smallest, key=smallest.__getitem__))}
    return [ids[root] for root in roots]


def choose_kept(members: Sequence[Mapping[str, Any]]) -> int:
    """Index of the member to keep (the keep rule).

    The largest resolution (width×height) wins; among equal resolutions, the lexicographically
    smallest path. Deterministic and independent of the members' order.
    """
    return min(
        range(len(members)),
        key=lambda i: (
            -int(members[i]["width"]) * int(members[i]["height"]),
            str(members[i]["path"]),
        ),
    )


@dataclass
class DedupeResult:
    """What `dedupe_rows` found.

    counts: images; kept; exact_groups (duplicate groups of one content) and near_groups (several
    contents); images_in_groups; removed (duplicates dropped by the keep rule); conflict_groups and
    conflicts (images quarantined); exact_pairs (same sha256) and near_pairs (within the threshold,
    different sha256).
    """

    rows: list[dict[str, Any]]  # MANIFEST_COLUMNS, sorted by path
    conflicts: list[dict[str, Any]]  # CONFLICT_COLUMNS, sorted by path
    groups: list[list[dict[str, Any]]]  # duplicate groups (>= 2 members), by group id
    counts: dict[str, int] = field(default_factory=dict)


def dedupe_rows(
    rows: Sequence[Mapping[str, Any]],
    hashes: Sequence[str],
    *,
    nbits: int,
    threshold: int,
) -> DedupeResult:
    """Group `rows` (path, label, sha256, width, height) given their hex perceptual `hashes`."""
    order = sorted(range(len(rows)), key=lambda i: str(rows[i]["path"]))
    rows = [dict(rows[i]) for i in order]
    hashes = [hashes[i] for i in order]
    paths = [str(row["path"]) for row in rows]
    if len(set(paths)) != len(paths):
        raise ValueError("manifest lists a path twice")
    n = len(rows)

    first_with_sha: dict[str, int] = {}
    exact = []
    for i, row in enumerate(rows):
        j = first_with_sha.setdefault(str(row["sha256"]), i)
        if j != i:
            exact.append((j, i))
    near = near_pairs(hex_to_words(hashes, nbits), threshold, nbits) if n else np.empty((0, 2))
    group_of = number_groups(connected_components(n, [*exact, *near.tolist()]), paths)

    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    conflicts = []
    for i, row in enumerate(rows):
        row["hash"] = hashes[i]
        row["group"] = group_of[i]
        row["kept"] = 1
    counts = dict.fromkeys(
        ("exact_groups", "near_groups", "images_in_groups", "removed", "conflict_groups"), 0
    )
    groups = []
    for g in sorted(members):
        idx = members[g]
        if len(idx) < 2:
            continue
        group = [rows[i] for i in idx]
        groups.append(group)
        counts["images_in_groups"] += len(idx)
        distinct_contents = len({str(row["sha256"]) for row in group})
        counts["exact_groups" if distinct_contents == 1 else "near_groups"] += 1
        if len({str(row["label"]) for row in group}) > 1:
            counts["conflict_groups"] += 1
            for row in group:
                row["kept"] = 0
                conflicts.append({**row, "reason": "label_conflict"})
            continue
        keep = choose_kept(group)
        for k, row in enumerate(group):
            row["kept"] = int(k == keep)
        counts["removed"] += len(group) - 1
    counts["conflicts"] = len(conflicts)
    counts["images"] = n
    counts["kept"] = sum(row["kept"] for row in rows)
    counts["exact_pairs"] = len(exact)
    counts["near_pairs"] = sum(rows[a]["sha256"] != rows[b]["sha256"] for a, b in near.tolist())
    conflicts.sort(key=lambda row: row["path"])
    return DedupeResult(rows=rows, conflicts=conflicts, groups=groups, counts=counts)


# --------------------------------------------------------------------------- the stage


def run_dedupe(paths: Paths, params: DedupeParams, *, progress: bool = True) -> dict[str, Any]:
    """Read the download manifest, find duplicates, write artifacts/dedupe and reports/dedupe.json.

    Outputs: manifest.tsv (MANIFEST_COLUMNS, every input image, sorted by path; hash in hex, kept
    0/1), conflicts.tsv (CONFLICT_COLUMNS), contact_sheet.png. Returns the report written.
    """
    from imgclf.data.contact_sheet import draw_contact_sheet

    started = time.perf_counter()
    rows = read_tsv(paths.download_manifest)
    by_sha: dict[str, str] = {}
    for row in rows:  # identical bytes, identical hash: decode each content once
        by_sha.setdefault(row["sha256"], row["path"])
    unique = sorted(by_sha.items())
    files = [paths.resolve(path) for _, path in unique]
    options = {"decode_size": params.decode_size, "progress": progress}
    if params.engine == "ray":  # the same hashes, computed on a Ray cluster
        from imgclf.data.cluster_dedupe import hash_images_on_ray

        digests = hash_images_on_ray(
            files, params.algorithm, params.hash_size, address=params.ray_address, **options
        )
    else:
        digests = hash_images(
            files, params.algorithm, params.hash_size, workers=params.workers, **options
        )
    hash_of = {sha: digest for (sha, _), digest in zip(unique, digests, strict=True)}
    result = dedupe_rows(
        rows,
        [hash_of[row["sha256"]] for row in rows],
        nbits=params.hash_size**2,
        threshold=params.threshold,
    )
    with atomic_dir(paths.dedupe_dir) as out:
        write_tsv(out / paths.dedupe_manifest.name, result.rows, MANIFEST_COLUMNS)
        write_tsv(out / paths.dedupe_conflicts.name, result.conflicts, CONFLICT_COLUMNS)
        largest = sorted(result.groups, key=lambda g: (-len(g), g[0]["group"]))
        draw_contact_sheet(
            largest[: params.contact_sheet_groups],
            out / paths.contact_sheet.name,
            resolve=paths.resolve,
        )
    report = {
        **result.counts,
        "distinct_contents": len(unique),
        "algorithm": params.algorithm,
        "hash_size": params.hash_size,
        "threshold": params.threshold,
        "decode_size": params.decode_size,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(paths.dedupe_report, report)
    return report
