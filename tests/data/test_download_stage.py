"""The `download` stage end to end: real photos in, manifest + quarantine + report out."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import DownloadParams, Paths, load_params
from imgclf.data.ingest import run_download
from imgclf.io import read_json, read_tsv
from stages import download


def download_params(**overrides: object) -> DownloadParams:
    """The repo's download params with some overridden."""
    return DownloadParams.model_validate({**load_params().download.model_dump(), **overrides})


def jpeg(size: tuple[int, int], color: str) -> bytes:
    if color == "noise":
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), np.uint8))
    else:
        image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def run_stage(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    params: DownloadParams,
    root: Path,
) -> tuple[int, str, str]:
    """The stage's entry point with these params and project root: (exit code, stdout,
    stderr)."""
    everything = load_params().model_copy(update={"download": params})
    monkeypatch.setattr(download, "load_params", lambda: everything)
    monkeypatch.setattr(download, "Paths", lambda: Paths(root))
    code = download.main()
    out, err = capsys.readouterr()
    return code, out, err


def test_stage_on_real_photos_is_reproducible(
    tmp_path: Path,
    sample_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = download_params(source=str(sample_data_dir), max_per_class=10, seed=7, workers=2)
    # First run through the stage's entry point (worker processes, summary line) ...
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "a")
    assert code == 0, err
    summary = out.strip()
    assert summary.startswith("download: ") and "kept cat 10, dog 10" in summary
    assert "\n" not in summary
    # ... then the library call in another root, in one process: byte-identical manifests.
    report = run_download(Paths(tmp_path / "b"), params.model_copy(update={"workers": 1}))
    a, b = Paths(tmp_path / "a"), Paths(tmp_path / "b")
    assert a.download_manifest.read_bytes() == b.download_manifest.read_bytes()
    assert a.quarantine.read_bytes() == b.quarantine.read_bytes()

    files = [p for p in sample_data_dir.rglob("*") if p.is_file()]
    assert report == {**read_json(b.download_report), "seconds": report["seconds"]}
    assert report["source"] == str(sample_data_dir)
    assert report["read"] == len(files)
    assert report["kept"] == {"cat": 10, "dog": 10} and report["kept_total"] == 20
    # Every file is accounted for exactly once.
    assert report["kept_total"] + report["quarantined_total"] + report["not_sampled"] == len(files)
    assert set(report["quarantined"]) >= {"empty", "corrupt", "truncated", "unlabelled"}
    assert report["seconds"] > 0

    manifest = read_tsv(b.download_manifest)
    assert len(manifest) == 20
    for row in manifest:
        assert (b.root / row["path"]).is_file()
        assert (sample_data_dir / row["source"]).is_file()
        label = row["label"]
        assert row["source"].startswith(f"{label}/{label}.")
    assert len(list(b.images.rglob("*.jpg"))) == 20  # slack decoded for the sample is gone
    reference = sample_data_dir / "MANIFEST.tsv"  # the shared folder's own checksums
    if reference.is_file():
        original = {row["path"]: row for row in read_tsv(reference)}
        for row in manifest:  # baseline RGB JPEGs: copied byte-for-byte
            expected = original[row["source"]]
            assert (row["sha256"], row["width"], row["height"]) == (
                expected["sha256"],
                expected["width"],
                expected["height"],
            )
            assert row["converted"] == ""


def test_stage_on_petimages_style_zip(tmp_path: Path) -> None:
    """The Microsoft archive's layout and its known bad files: Thumbs.db, empty and cut JPEGs."""
    archive = tmp_path / "kagglecatsanddogs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"PetImages/Cat/{i}.jpg", jpeg((60 + i, 50), "orange"))
            zf.writestr(f"PetImages/Dog/{i}.jpg", jpeg((50, 60 + i), "brown"))
        zf.writestr("PetImages/Cat/Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
        zf.writestr("PetImages/Dog/Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))
        zf.writestr("PetImages/Cat/666.jpg", b"")
        noisy = jpeg((300, 300), "noise")
        zf.writestr("PetImages/Dog/11702.jpg", noisy[: len(noisy) // 2])
        zf.writestr("MSR-LA - 3467.docx", b"PK\x03\x04 not really")
        zf.writestr("readme[1].txt", "Microsoft Research dataset")
    params = download_params(source=str(archive), workers=1)
    report = run_download(Paths(tmp_path / "root"), params, progress=False)
    assert report["kept"] == {"cat": 3, "dog": 3}
    assert {k: v for k, v in report["quarantined"].items() if v} == {
        "not_an_image": 2,
        "empty": 1,
        "truncated": 1,
        "unlabelled": 2,
    }
    quarantine = read_tsv(Paths(tmp_path / "root").quarantine)
    assert [row["source"] for row in quarantine] == sorted(row["source"] for row in quarantine)
    assert {row["source"] for row in quarantine if row["reason"] == "truncated"} == {
        "PetImages/Dog/11702.jpg"
    }


def test_stage_offline_url_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    params = download_params(source="http://127.0.0.1:1/kagglecatsanddogs_5340.zip")
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "root")
    assert (code, out) == (1, "")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("download: ")
    assert "download.source=../shared/data/dogs-vs-cats" in lines[0]
    assert not (tmp_path / "root" / "artifacts" / "download").exists()


def test_stage_with_auto_classes_records_the_class_folders(
    tmp_path: Path,
    sample_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    params = download_params(source=str(sample_data_dir), classes="auto", max_per_class=3)
    code, out, err = run_stage(
        monkeypatch, capsys, params.model_copy(update={"workers": 1}), tmp_path
    )
    assert code == 0, err
    assert "kept cat 3, dog 3" in out
    assert read_json(Paths(tmp_path).download_report)["classes"] == ["cat", "dog"]


def test_stage_with_auto_classes_and_one_folder_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source" / "photos"
    source.mkdir(parents=True)
    (source / "cat.1.jpg").write_bytes(jpeg((40, 40), "orange"))
    params = download_params(source=str(source.parent), classes="auto")
    code, out, err = run_stage(monkeypatch, capsys, params, tmp_path / "root")
    assert (code, out) == (1, "")
    assert err == (
        "download: download.classes is auto but the source has 1 class folder(s) (photos); put "
        "each class's images in a folder of its own, or list the classes\n"
    )
    assert not (tmp_path / "root" / "artifacts" / "download").exists()
