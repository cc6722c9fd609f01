"""Caps on what an archive may expand to (download.max_archive_bytes, max_members, max_ratio,
max_depth): checked from the headers before anything is written, and held while writing, across
the archives nested in one source. Small bombs (tens of MB) prove it; the 1 GB one is measured by
hand (see the report of issue 12)."""

from __future__ import annotations

import dataclasses
import io
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from imgclf.data.sources import Extractor
from imgclf.data.sources.archive import DEFAULT_LIMITS, ArchiveLimits, copy_within
from imgclf.data.sources.errors import SourceError, UnsafeArchiveError
from imgclf.io import read_tsv
from tests.data.test_download_stage import download_params, run_stage
from tests.data.test_sources import add_tar_member, assert_one_line, jpeg

MB = 1 << 20


def caps(**overrides: float) -> ArchiveLimits:
    return dataclasses.replace(DEFAULT_LIMITS, **overrides)


def zeros_zip(path: Path, sizes: dict[str, int], method: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip whose members hold that many zero bytes, written in chunks (no big buffer)."""
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, size in sizes.items():
            with zf.open(name, "w") as out:
                for start in range(0, size, MB):
                    out.write(bytes(min(MB, size - start)))
    return path


def declare_sizes(path: Path, *, packed: int | None = None, size: int | None = None) -> Path:
    """Hand-edit the sizes a one-member zip declares, in its local header and its central
    directory alike: a lying header."""
    data = bytearray(path.read_bytes())
    for at in (data.index(b"PK\x03\x04") + 18, data.rindex(b"PK\x01\x02") + 20):
        for value, offset in ((packed, 0), (size, 4)):
            if value is not None:
                struct.pack_into("<I", data, at + offset, value)
    path.write_bytes(bytes(data))
    return path


def bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def refused(archive: Path, limits: ArchiveLimits, dest: Path, *words: str) -> None:
    """Refused in one line naming `words`, with nothing written."""
    with pytest.raises(UnsafeArchiveError) as error:
        Extractor(limits).extract(archive, dest)
    assert_one_line(error, archive.name, *words)
    assert bytes_under(dest) == 0


def test_a_zip_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    bomb = zeros_zip(tmp_path / "bomb.zip", {"cat/1.jpg": 30 * MB})
    assert bomb.stat().st_size < 100_000  # 30 MB of zeros deflate ~1000-fold
    refused(bomb, DEFAULT_LIMITS, tmp_path / "out", "'cat/1.jpg'", "download.max_ratio")


def test_many_small_members_are_refused_by_the_overall_ratio(tmp_path: Path) -> None:
    """Each member is too small for its own ratio to count; together they are a bomb."""
    sizes = {f"cat/{i}.jpg": MB - 1 for i in range(40)}
    bomb = zeros_zip(tmp_path / "many.zip", sizes)
    refused(bomb, DEFAULT_LIMITS, tmp_path / "out", "overall", "download.max_ratio")


def test_a_tar_gz_bomb_is_refused_by_the_overall_ratio(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tf:
        add_tar_member(tf, "cat/1.jpg", bytes(30 * MB))
    refused(bomb, DEFAULT_LIMITS, tmp_path / "out", "download.max_ratio")


def test_total_bytes_cap_holds_when_the_header_lies_about_the_packed_size(
    tmp_path: Path,
) -> None:
    """The header claims the member is stored as big as it is (ratio 1): the cap on total bytes
    still refuses it."""
    bomb = declare_sizes(zeros_zip(tmp_path / "liar.zip", {"cat/1.jpg": 30 * MB}), packed=30 * MB)
    limits = caps(max_archive_bytes=10 * MB)
    refused(bomb, limits, tmp_path / "out", "download.max_archive_bytes")


def test_a_header_understating_its_size_writes_no_more_than_it_claims(tmp_path: Path) -> None:
    """Declared 1,000 bytes, inflates to 30 MB: what lands is counted against the declaration
    (the reader's own stop at the declared size is not relied on), and the extraction fails."""
    liar = declare_sizes(zeros_zip(tmp_path / "liar.zip", {"cat/1.jpg": 30 * MB}), size=1000)
    limits = caps(max_archive_bytes=5 * MB)
    with pytest.raises(SourceError) as error:
        Extractor(limits).extract(liar, tmp_path / "out")
    assert_one_line(error, "liar.zip", "'cat/1.jpg'")
    assert bytes_under(tmp_path / "out") <= 1000


def test_writing_stops_before_the_first_byte_past_the_declared_size(tmp_path: Path) -> None:
    out = io.BytesIO()
    with pytest.raises(UnsafeArchiveError) as error:
        copy_within(io.BytesIO(bytes(5000)), out, 1000, "x.zip: member 'a.jpg'")
    assert_one_line(error, "x.zip: member 'a.jpg'", "more than the 1000 bytes")
    assert len(out.getvalue()) <= 1000
    assert copy_within(io.BytesIO(bytes(1000)), io.BytesIO(), 1000, "x.zip") == 1000


def test_too_many_members_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "crowd.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(50):
            add_tar_member(tf, f"cat/{i}.jpg", jpeg())
    refused(archive, caps(max_members=10), tmp_path / "out", "download.max_members")
    Extractor(caps(max_members=50)).extract(archive, tmp_path / "ok")
    assert len(list((tmp_path / "ok" / "cat").iterdir())) == 50


def test_too_deep_a_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "deep.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cat/1.jpg", jpeg())
        zf.writestr("a/" * 40 + "2.jpg", jpeg())
    refused(archive, DEFAULT_LIMITS, tmp_path / "out", "41", "download.max_depth")


def test_nested_archives_share_one_budget(tmp_path: Path) -> None:
    """A zip of zips cannot multiply the cap: each inner archive fits alone, not all three."""
    inner = {}
    for i in range(3):
        inner[f"part{i}.zip"] = zeros_zip(tmp_path / f"part{i}.zip", {f"cat/{i}.jpg": 4 * MB})
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        for name, path in inner.items():
            zf.write(path, name)
    limits = caps(max_archive_bytes=10 * MB, max_ratio=1e6)
    extractor = Extractor(limits)
    extractor.extract(outer, tmp_path / "out")
    with pytest.raises(UnsafeArchiveError) as error:
        extractor.expand_nested(tmp_path / "out")
    assert_one_line(error, "part2.zip", "download.max_archive_bytes")
    assert bytes_under(tmp_path / "out") <= 10 * MB


def test_download_stage_refuses_a_bomb_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = zeros_zip(tmp_path / "pets.zip", {"cat/1.jpg": 30 * MB, "dog/1.jpg": 1000})
    params = download_params(source=str(bomb), workers=1)
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "project")
    assert code == 1 and out == ""
    assert err.startswith("download: ") and err.count("\n") == 1, err
    assert "pets.zip" in err and "max_ratio" in err and "Traceback" not in err
    assert not (tmp_path / "project" / "artifacts").exists()


def test_the_caps_are_params_and_a_big_member_is_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trusting the archive (max_ratio raised) extracts it; the 30 MB member is then over
    download.max_image_bytes and is quarantined unread."""
    bomb = zeros_zip(tmp_path / "pets.zip", {"cat/1.jpg": 30 * MB, "dog/1.jpg": 1000})
    params = download_params(
        source=str(bomb), workers=1, max_ratio=1e6, max_image_bytes=MB, classes=["cat", "dog"]
    )
    code, _, err = run_stage(monkeypatch, capsys, params, tmp_path / "project")
    assert code == 0, err
    quarantine = read_tsv(tmp_path / "project" / "artifacts" / "download" / "quarantine.tsv")
    assert {(row["source"], row["reason"]) for row in quarantine} == {
        ("cat/1.jpg", "too_large"),
        ("dog/1.jpg", "not_an_image"),
    }
