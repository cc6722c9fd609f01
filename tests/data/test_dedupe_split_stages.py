"""The dedupe and split stages end to end on a generated download manifest in a temp root."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pytest
from PIL import Image

import stages.dedupe
import stages.split
from imgclf.config import Paths, load_params
from imgclf.data.contact_sheet import draw_contact_sheet
from imgclf.data.dedupe import CONFLICT_COLUMNS, MANIFEST_COLUMNS
from imgclf.data.labels import read_classes
from imgclf.data.split import SPLIT_COLUMNS, SPLITS
from imgclf.io import read_tsv, write_json, write_tsv
from tests.support.helpers import textured_image

PHOTO_SIZE = (200, 150)  # width, height of the generated photos
DOWNLOAD_COLUMNS = ("path", "label", "sha256", "width", "height", "bytes", "source", "converted")


def add_image(root: Path, rows: list[dict], rel: str, label: str, image: Image.Image) -> None:
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="JPEG", quality=92)
    add_file(root, rows, rel, label)


def add_file(root: Path, rows: list[dict], rel: str, label: str) -> None:
    data = (root / rel).read_bytes()
    with Image.open(root / rel) as image:
        width, height = image.size
    rows.append(
        {
            "path": rel,
            "label": label,
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": width,
            "height": height,
            "bytes": len(data),
            "source": f"gen/{rel}",
            "converted": 0,
        }
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root holding 40 distinct images, a resized copy, an exact copy and a label conflict."""
    root = tmp_path / "project"
    images = "artifacts/download/images"
    rows: list[dict] = []
    for i in range(40):
        label = "cat" if i < 24 else "dog"
        photo = textured_image(i, *PHOTO_SIZE)
        add_image(root, rows, f"{images}/{label}/{label}.{i}.jpg", label, photo)
    # near duplicate: cat.0 at a larger size (so the copy is the one kept)
    bigger = textured_image(0, *PHOTO_SIZE).resize((300, 225))
    add_image(root, rows, f"{images}/cat/big.jpg", "cat", bigger)
    # exact duplicate with the same label
    shutil.copy(root / f"{images}/dog/dog.30.jpg", root / f"{images}/dog/copy.jpg")
    add_file(root, rows, f"{images}/dog/copy.jpg", "dog")
    # exact duplicate with another label: a conflict
    shutil.copy(root / f"{images}/cat/cat.5.jpg", root / f"{images}/dog/mislabelled.jpg")
    add_file(root, rows, f"{images}/dog/mislabelled.jpg", "dog")
    random.Random(0).shuffle(rows)
    paths = Paths(root)
    paths.download_dir.mkdir(parents=True, exist_ok=True)
    write_tsv(paths.download_manifest, rows, DOWNLOAD_COLUMNS)
    write_json(paths.download_report, {"classes": ["dog", "cat"]})  # the resolved class list

    params = load_params()  # the repo's params.yaml, so its dedupe/split sections are checked too
    params = params.model_copy(update={"dedupe": params.dedupe.model_copy(update={"workers": 2})})
    for module in (stages.dedupe, stages.split):
        monkeypatch.setattr(module, "Paths", lambda: Paths(root))
        monkeypatch.setattr(module, "load_params", lambda: params)
    return root


def outputs(paths: Paths) -> dict[str, bytes]:
    files = [paths.dedupe_manifest, paths.dedupe_conflicts, paths.contact_sheet]
    files += [paths.split_manifest(name) for name in SPLITS] + [paths.split_classes]
    return {f.name: f.read_bytes() for f in files}


def test_dedupe_and_split_stages(project: Path, capsys: pytest.CaptureFixture[str]):
    paths = Paths(project)
    stages.dedupe.main()
    line = capsys.readouterr().out.strip()
    assert line.startswith("dedupe: 43 images") and "\n" not in line

    rows = read_tsv(paths.dedupe_manifest)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["big.jpg"]["group"] == by_name["cat.0.jpg"]["group"]
    assert (by_name["big.jpg"]["kept"], by_name["cat.0.jpg"]["kept"]) == ("1", "0")
    assert by_name["copy.jpg"]["group"] == by_name["dog.30.jpg"]["group"]
    assert (by_name["copy.jpg"]["kept"], by_name["dog.30.jpg"]["kept"]) == ("1", "0")  # path rule
    assert by_name["mislabelled.jpg"]["kept"] == by_name["cat.5.jpg"]["kept"] == "0"
    assert all(len(r["hash"]) == 16 for r in rows)
    assert sorted({r["group"] for r in rows}, key=int) == [str(g) for g in range(40)]

    conflicts = read_tsv(paths.dedupe_conflicts)
    assert list(conflicts[0]) == list(CONFLICT_COLUMNS)
    assert {Path(r["path"]).name for r in conflicts} == {"cat.5.jpg", "mislabelled.jpg"}
    assert {r["reason"] for r in conflicts} == {"label_conflict"}

    report = json.loads(paths.dedupe_report.read_text())
    expected = {
        "images": 43,
        "exact_groups": 2,
        "near_groups": 1,
        "images_in_groups": 6,
        "removed": 2,
        "conflicts": 2,
        "conflict_groups": 1,
        "kept": 39,
        "algorithm": "phash",
    }
    assert {k: report[k] for k in expected} == expected
    assert report["threshold"] == load_params().dedupe.threshold and report["seconds"] >= 0

    with Image.open(paths.contact_sheet) as sheet:
        assert sheet.format == "PNG"
        assert sheet.height >= 3 * 128  # one row per group

    assert stages.split.main() == 0
    assert capsys.readouterr().out.startswith("split (seed 42): 39 images")
    assert read_classes(paths.split_classes) == ["dog", "cat"]  # the download's order: label index
    kept = {r["path"]: r for r in rows if r["kept"] == "1"}
    seen = []
    for name in SPLITS:
        split_rows = read_tsv(paths.split_manifest(name))
        assert split_rows, name
        assert list(split_rows[0]) == list(SPLIT_COLUMNS)
        assert [r["path"] for r in split_rows] == sorted(r["path"] for r in split_rows)
        for r in split_rows:
            assert (r["label"], r["group"], r["sha256"]) == (
                kept[r["path"]]["label"],
                kept[r["path"]]["group"],
                kept[r["path"]]["sha256"],
            )
        seen += [r["path"] for r in split_rows]
    assert sorted(seen) == sorted(kept)
    split_report = json.loads(paths.split_report.read_text())
    assert split_report["total"] == 39
    assert split_report["classes"] == {"cat": 23, "dog": 16}
    assert sum(s["total"] for s in split_report["splits"].values()) == 39

    # rerun: byte-identical outputs, also from a manifest listed in another order
    first = outputs(paths)
    manifest = read_tsv(paths.download_manifest)
    write_tsv(paths.download_manifest, manifest[::-1], DOWNLOAD_COLUMNS)
    stages.dedupe.main()
    stages.split.main()
    assert outputs(paths) == first


def test_failed_dedupe_keeps_previous_output(project: Path):
    paths = Paths(project)
    stages.dedupe.main()
    before = paths.dedupe_manifest.read_bytes()
    rows = read_tsv(paths.download_manifest)
    (project / rows[0]["path"]).write_bytes(b"not an image")
    rows[0]["sha256"] = "0" * 64
    write_tsv(paths.download_manifest, rows, DOWNLOAD_COLUMNS)
    with pytest.raises(OSError):
        stages.dedupe.main()
    assert paths.dedupe_manifest.read_bytes() == before
    assert sorted(p.name for p in paths.artifacts.iterdir()) == ["dedupe", "download"]


def test_contact_sheet_without_groups_is_a_readable_png(tmp_path: Path):
    out = tmp_path / "sheet.png"
    draw_contact_sheet([], out)
    with Image.open(out) as sheet:
        sheet.load()
        assert sheet.format == "PNG" and sheet.width > 0


def test_a_class_too_small_to_split_stops_the_split_stage(
    project: Path, capsys: pytest.CaptureFixture[str]
):
    """A listed class with no image, and one with too few for train/val/test: one line, exit 1,
    no split written (so nothing can train on it)."""
    paths = Paths(project)
    write_json(paths.download_report, {"classes": ["cat", "dog", "bird"]})
    stages.dedupe.main()
    capsys.readouterr()
    assert stages.split.main() == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("split: class 'bird' has 0 images after dedupe") and "at least 5" in err
    assert not paths.split_dir.exists()

    rows = read_tsv(paths.dedupe_manifest)
    dogs = [row for row in rows if row["label"] == "dog" and row["kept"] == "1"]
    for row in dogs[4:]:  # 4 dogs kept: one short of the 5 that 0.70/0.15/0.15 needs
        row["kept"] = "0"
    write_tsv(paths.dedupe_manifest, rows, MANIFEST_COLUMNS)
    write_json(paths.download_report, {"classes": ["cat", "dog"]})
    assert stages.split.main() == 1
    assert capsys.readouterr().err.startswith("split: class 'dog' has 4 images after dedupe")
