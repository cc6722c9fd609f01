"""Perceptual hashing, near-duplicate search and grouping (imgclf.data.dedupe) on real images."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgclf.config import DedupeParams
from imgclf.data.dedupe import (
    brute_force_pairs,
    choose_kept,
    dedupe_rows,
    hamming,
    hash_image,
    hash_images,
    hex_to_words,
    near_pairs,
)
from imgclf.io import read_tsv
from tests.support.helpers import textured_image

DEFAULTS = DedupeParams()


def save_jpeg(image: Image.Image, path: Path, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)
    return path


def crop_fraction(image: Image.Image, fraction: float) -> Image.Image:
    w, h = image.size
    dx, dy = int(w * fraction), int(h * fraction)
    return image.crop((dx, dy, w - dx, h - dy))


VARIANTS = {
    "resized": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "upscaled": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2)),
    "quality40": lambda im: im,  # same pixels, saved at JPEG quality 40
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.05),
    "cropped": lambda im: crop_fraction(im, 0.02),  # 2% off every side
}


def row(path: Path | str, label: str, sha: str, width: int = 100, height: int = 100) -> dict:
    return {"path": str(path), "label": label, "sha256": sha, "width": width, "height": height}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two originals with their edited copies, plus distinct images."""
    root = tmp_path_factory.mktemp("crafted")
    files = {}
    for seed in (1, 2):
        original = textured_image(seed)
        files[f"orig{seed}"] = save_jpeg(original, root / f"orig{seed}.jpg")
        for name, edit in VARIANTS.items():
            quality = 40 if name == "quality40" else 92
            files[f"orig{seed}-{name}"] = save_jpeg(
                edit(original), root / f"orig{seed}-{name}.jpg", quality
            )
    for seed in range(10, 16):
        files[f"distinct{seed}"] = save_jpeg(textured_image(seed), root / f"distinct{seed}.jpg")
    return files


def _distance(a: Path, b: Path, **kwargs) -> int:
    words = hex_to_words([hash_image(a, **kwargs), hash_image(b, **kwargs)], 64)
    return int(hamming(words[0], words[1]))


@pytest.mark.parametrize("variant", ["resized", "upscaled", "quality40", "brighter"])
def test_edits_stay_within_the_default_threshold(crafted, variant):
    for seed in (1, 2):
        distance = _distance(crafted[f"orig{seed}"], crafted[f"orig{seed}-{variant}"])
        assert distance <= DEFAULTS.threshold, (seed, variant, distance)


def test_crafted_near_duplicates_are_grouped_and_distinct_images_are_not(crafted):
    # A 2% crop moves a 64-bit pHash by 2-6 bits (measured on 40 such images: 78% <= 4, 98% <= 6),
    # so grouping crops needs threshold 6. Distinct images are 20+ bits apart.
    names = sorted(crafted)
    hashes = hash_images([crafted[n] for n in names], workers=2, progress=False)
    rows = [row(crafted[n], "cat", f"sha-{n}") for n in names]
    result = dedupe_rows(rows, hashes, nbits=64, threshold=6)
    group_of = {Path(r["path"]).stem: r["group"] for r in result.rows}
    for seed in (1, 2):
        members = {n for n in names if n.startswith(f"orig{seed}")}
        assert len({group_of[n] for n in members}) == 1, {n: group_of[n] for n in members}
    assert group_of["orig1"] != group_of["orig2"]
    distinct = [n for n in names if n.startswith("distinct")]
    assert len({group_of[n] for n in distinct}) == len(distinct)
    assert all(group_of[n] not in (group_of["orig1"], group_of["orig2"]) for n in distinct)
    assert result.counts["near_groups"] == 2
    assert result.counts["exact_groups"] == 0
    assert result.counts["images_in_groups"] == 2 * (1 + len(VARIANTS))
    assert result.counts["removed"] == 2 * len(VARIANTS)
    words = hex_to_words(hashes, 64)
    distinct_idx = [names.index(n) for n in distinct]
    assert min(hamming(words[i], words[j]) for i, j in combinations(distinct_idx, 2)) > 12


def test_reduced_decode_gives_nearly_the_same_hash(crafted):
    big = save_jpeg(textured_image(3, 1200, 900), crafted["orig1"].parent / "big.jpg")
    assert _distance(big, big, decode_size=0) == 0
    words = hex_to_words([hash_image(big, decode_size=128), hash_image(big, decode_size=0)], 64)
    assert hamming(words[0], words[1]) <= 2


def test_parallel_hashing_matches_sequential(crafted):
    paths = [crafted[n] for n in sorted(crafted)]
    assert hash_images(paths, workers=2, progress=False) == hash_images(
        paths, workers=1, progress=False
    )
    for algorithm in ("dhash", "ahash", "whash"):
        digest = hash_image(paths[0], algorithm)
        assert len(digest) == 16
    assert len(hash_image(paths[0], hash_size=16)) == 64
    with pytest.raises(ValueError, match="unknown hash algorithm"):
        hash_image(paths[0], "md5")


def test_exact_duplicates_are_grouped_and_the_keep_rule_applies():
    rows = [
        row("b/small.jpg", "dog", "s1", 100, 100),
        row("a/large.jpg", "dog", "s1", 200, 100),
        row("c/tie-z.jpg", "dog", "s2", 50, 50),
        row("c/tie-a.jpg", "dog", "s2", 50, 50),
        row("d/alone.jpg", "dog", "s3", 50, 50),
    ]
    hashes = ["0" * 16, "0" * 16, "f" * 16, "f" * 16, "0f" * 8]
    result = dedupe_rows(rows, hashes, nbits=64, threshold=0)
    by_path = {r["path"]: r for r in result.rows}
    assert [r["path"] for r in result.rows] == sorted(by_path)
    assert by_path["a/large.jpg"]["kept"] == 1 and by_path["b/small.jpg"]["kept"] == 0
    assert by_path["c/tie-a.jpg"]["kept"] == 1 and by_path["c/tie-z.jpg"]["kept"] == 0
    assert by_path["d/alone.jpg"]["kept"] == 1
    # groups are numbered by their smallest path
    assert [by_path[p]["group"] for p in sorted(by_path)] == [0, 0, 1, 1, 2]
    assert result.counts["exact_groups"] == 2 and result.counts["near_groups"] == 0
    assert result.counts["removed"] == 2 and result.counts["kept"] == 3
    assert result.conflicts == []


def test_keep_rule_is_order_independent():
    members = [row("z.jpg", "cat", "1", 300, 200), row("a.jpg", "cat", "2", 200, 300)]
    assert members[choose_kept(members)]["path"] == "a.jpg"
    assert members[::-1][choose_kept(members[::-1])]["path"] == "a.jpg"
    members.append(row("m.jpg", "cat", "3", 301, 200))
    assert members[choose_kept(members)]["path"] == "m.jpg"


def test_label_conflict_group_is_quarantined():
    rows = [
        row("cat/1.jpg", "cat", "same"),
        row("dog/1.jpg", "dog", "same"),
        row("dog/2.jpg", "dog", "near", 640, 480),
        row("cat/2.jpg", "cat", "other"),
    ]
    hashes = ["0" * 16, "0" * 16, "0000000000000f00", "f" * 16]  # dog/2: 4 bits from the first
    result = dedupe_rows(rows, hashes, nbits=64, threshold=4)
    kept = {r["path"]: r["kept"] for r in result.rows}
    assert kept == {"cat/1.jpg": 0, "cat/2.jpg": 1, "dog/1.jpg": 0, "dog/2.jpg": 0}
    assert [c["path"] for c in result.conflicts] == ["cat/1.jpg", "dog/1.jpg", "dog/2.jpg"]
    assert {c["reason"] for c in result.conflicts} == {"label_conflict"}
    assert result.counts["conflicts"] == 3 and result.counts["conflict_groups"] == 1
    assert result.counts["removed"] == 0


def _random_hashes(rng: np.random.Generator, n: int, nbits: int, planted: int, flips: int):
    nwords = -(-nbits // 64)
    words = rng.integers(0, 2**63, size=(n, nwords), dtype=np.uint64) * np.uint64(2)
    words |= rng.integers(0, 2, size=(n, nwords), dtype=np.uint64)
    if nbits % 64:
        words[:, 0] &= np.uint64((1 << (nbits % 64)) - 1)
    for k in range(planted):  # near copies of earlier rows, 0..flips bits apart
        source, target = rng.integers(0, n // 2), n // 2 + k
        words[target] = words[source]
        for bit in rng.choice(nbits, size=rng.integers(0, flips + 1), replace=False):
            word = nwords - 1 - bit // 64
            words[target, word] ^= np.uint64(1) << np.uint64(bit % 64)
    return words


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nbits", [64, 25, 256])
def test_multi_index_search_equals_brute_force(seed, nbits):
    rng = np.random.default_rng(seed)
    n = 600
    words = _random_hashes(rng, n, nbits, planted=80, flips=12)
    words[n - 5 :] = words[0]  # a bucket of identical hashes
    for threshold in (0, 1, 3, 4, 6, 10, 15):
        expected = brute_force_pairs(words, threshold)
        found = near_pairs(words, threshold, nbits)
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected, err_msg=f"t={threshold}")
        assert len(found) >= 10  # the planted copies and the identical bucket
    tiny = words[:3]
    np.testing.assert_array_equal(near_pairs(tiny, nbits, nbits), [[0, 1], [0, 2], [1, 2]])
    assert near_pairs(words[:1], 4, nbits).shape == (0, 2)


def test_hex_round_trip():
    hexes = ["8000000000000001", "ffffffffffffffff", "0000000000000000"]
    words = hex_to_words(hexes, 64)
    assert words.dtype == np.uint64 and words.shape == (3, 1)
    assert [f"{int(w):016x}" for w in words[:, 0]] == hexes
    assert hamming(words[0], words[1]).item() == 62
    assert hex_to_words(["1" * 64], 256).shape == (1, 4)


def test_known_near_duplicate_pairs_in_the_real_photos(sample_data_dir):
    """The two pairs of DUPLICATES.tsv are found with the default params, draft decode or not."""
    with open(sample_data_dir / "DUPLICATES.tsv", encoding="utf-8") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    known = {
        tuple(sorted((r["path_a"], r["path_b"])))
        for r in read_tsv_lines(lines)
        if r["kind"] == "near"
    }
    assert len(known) == 2
    manifest = read_tsv(sample_data_dir / "MANIFEST.tsv")
    in_pairs = {p for pair in known for p in pair}
    sample = [r for r in manifest if r["path"] in in_pairs]
    sample += [r for r in manifest if r["path"] not in in_pairs][::25]  # 200 other photos
    rows = [row(r["path"], r["class"], r["sha256"], r["width"], r["height"]) for r in sample]
    files = [sample_data_dir / r["path"] for r in rows]
    for decode_size in (DEFAULTS.decode_size, 0):
        hashes = hash_images(
            files,
            DEFAULTS.algorithm,
            DEFAULTS.hash_size,
            workers=0,
            decode_size=decode_size,
            progress=False,
        )
        result = dedupe_rows(
            rows, hashes, nbits=DEFAULTS.hash_size**2, threshold=DEFAULTS.threshold
        )
        found = {tuple(sorted(r["path"] for r in group)) for group in result.groups}
        assert found == known, decode_size


def read_tsv_lines(lines: list[str]) -> list[dict[str, str]]:
    header, *body = (line.rstrip("\n").split("\t") for line in lines if line.strip())
    return [dict(zip(header, values, strict=True)) for values in body]


def test_default_search_uses_the_index_not_all_pairs(monkeypatch):
    import imgclf.data.dedupe

    def refuse(*args, **kwargs):
        raise AssertionError("compared all pairs")

    words = _random_hashes(np.random.default_rng(0), 2000, 64, planted=20, flips=4)
    expected = brute_force_pairs(words, 4)
    monkeypatch.setattr(imgclf.data.dedupe, "brute_force_pairs", refuse)
    np.testing.assert_array_equal(near_pairs(words, 4, 64), expected)
