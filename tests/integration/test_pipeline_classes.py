"""Any number of classes through the data half of the DAG: `download.classes: auto` on three
class folders made from the shared photos in the copy's `data/` (the README's "your own images"),
real `dvc repro split` in a throwaway copy of the repo, and a class too small to split stopping
the pipeline at split."""

from __future__ import annotations

import shutil
from pathlib import Path

from imgclf.io import read_json, read_tsv

SPLITS = ("train", "val", "test")
PER_CLASS = 8


def copy_photos(sample: Path, names: list[str], folder: Path) -> None:
    """Copy photos into a class folder under plain numbered names: a Kaggle name (`cat.9.jpg`)
    would label the photo by its name, not by the folder."""
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copyfile(sample / name, folder / f"{i:03d}.jpg")


def three_classes(sample: Path, source: Path) -> Path:
    """cat/ and dog/, and a third class, other/, of further cat and dog photos."""
    photos = {
        "cat": [f"cat/cat.{i}.jpg" for i in range(1, PER_CLASS + 1)],
        "dog": [f"dog/dog.{i}.jpg" for i in range(1, PER_CLASS + 1)],
        "other": [
            f"{c}/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(20, 20 + PER_CLASS // 2)
        ],
    }
    for name, files in photos.items():
        copy_photos(sample, files, source / name)
    return source


def test_auto_classes_through_download_dedupe_split(
    repo_copy: Path, sample_data_dir: Path, set_params, run_dvc, ran
) -> None:
    source = three_classes(sample_data_dir, repo_copy / "data")
    set_params(repo_copy, {"download.source": "data", "download.classes": "auto"})
    result = run_dvc(repo_copy, "repro", "split")
    assert ran(result.stdout) == {"download", "dedupe", "split"}, result.stdout

    classes = ["cat", "dog", "other"]  # the folders, sorted: label index = position
    assert read_json(repo_copy / "reports" / "download.json")["classes"] == classes
    assert read_json(repo_copy / "artifacts" / "split" / "classes.json") == classes
    report = read_json(repo_copy / "reports" / "split.json")
    assert report["classes"] == dict.fromkeys(classes, PER_CLASS)
    for name in SPLITS:  # stratified: every class in every split
        rows = read_tsv(repo_copy / "artifacts" / "split" / f"{name}.tsv")
        assert {row["label"] for row in rows} == set(classes), name
    assert ran(run_dvc(repo_copy, "repro", "split").stdout) == set()

    # A fourth class of two photos: too few for train/val/test, so split stops the pipeline.
    copy_photos(sample_data_dir, ["cat/cat.40.jpg", "cat/cat.41.jpg"], source / "fox")
    failed = run_dvc(repo_copy, "repro", "split", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "split: class 'fox' has 2 images after dedupe: too few" in output, output
    assert read_json(repo_copy / "reports" / "download.json")["classes"] == sorted(
        [*classes, "fox"]
    )
