"""Batch prediction, `imgclf predict`: ids, standardisation and bad files, archives,
the installed command, equality with evaluate, and the class list a model carries (two classes:
Kaggle's submission; more: `path,label,confidence`)."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from imgclf.cli import cli
from imgclf.config import PARAMS_FILE, EvaluateParams, ExportParams, Paths
from imgclf.data.standardise import ImageRejected, Limits, standardise
from imgclf.evaluation.report import run_evaluate
from imgclf.io import read_tsv, write_json, write_tsv
from imgclf.model.batch_predict import standardised_inputs, submission_id
from imgclf.model.export import run_export
from imgclf.model.inference import load_model, predict_probabilities
from tests.support.helpers import Registry, imgclf_command, mlflow_uris, tiny_model
from tests.support.photos import brighter_half_on_top, encode, stored_with_tag, upright_detector

CLASSES = ["cat", "dog"]
THREE = ["bird", "cat", "dog"]


def predict(*args: str | Path, params: Path = PARAMS_FILE) -> Result:
    """`imgclf --params PARAMS predict ARGS` in-process; an exception is raised, not read as
    exit status 1."""
    args = ["--params", str(params), "predict", *map(str, args)]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def write_image(path: Path, seed: int, fmt: str = "JPEG") -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_model().save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Good images at three depths, a truncated JPEG, a text file named .jpg, a stray .txt."""
    root = tmp_path / "in"
    write_image(root / "10.jpg", 1)
    write_image(root / "sub" / "cat.2.jpg", 2)
    write_image(root / "sub" / "deeper" / "dog.1.png", 3, "PNG")
    write_image(root / "sub" / "photo.jpg", 4)
    good = (root / "10.jpg").read_bytes()
    (root / "sub" / "broken.jpg").write_bytes(good[: len(good) // 2])
    (root / "notes.jpg").write_text("not a picture\n")
    (root / "readme.txt").write_text("ignored\n")
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("123.jpg", 123),
        ("cat.123.jpg", 123),
        ("dogs/dog.7.jpeg", 7),
        ("img_0042.png", 42),
        ("007.jpg", 7),
        ("photo.jpg", "photo"),
        ("photo123.jpg", "photo123"),
        ("1.5x.jpg", "1.5x"),
    ],
)
def test_submission_id(name: str, expected: int | str) -> None:
    assert submission_id(name) == expected


def test_every_file_is_standardised_or_explained(folder: Path, tmp_path: Path) -> None:
    tiff, cmyk, link = tmp_path / "x.tif", tmp_path / "cmyk.jpg", tmp_path / "gone.jpg"
    write_image(tiff, 5, "TIFF")  # no format of THE preprocessing's: standardised to PNG
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(cmyk, "JPEG")
    link.symlink_to(tmp_path / "missing.jpg")
    files = [folder / "10.jpg", folder / "sub" / "deeper" / "dog.1.png", tiff, cmyk]
    bad = [folder / "notes.jpg", folder / "sub" / "broken.jpg", link]
    with standardised_inputs([*files, *bad], Limits(max_pixels=10_000)) as (good, rejected):
        assert [image.source for image in good] == files
        assert good[0].file == files[0]  # a clean JPEG is read as it is
        for image in good[1:]:
            assert image.file != image.source and image.file.read_bytes().startswith(b"\x89PNG")
            assert Image.open(image.file).mode == "RGB"
        copies = [image.file for image in good[1:]]
    assert not any(copy.exists() for copy in copies)  # the copies vanish with the block
    reasons = {path.name: reason.split(":")[0] for path, reason in rejected}
    assert reasons == {
        "notes.jpg": "not_an_image",
        "broken.jpg": "truncated",
        "gone.jpg": "unreadable",
    }


def test_predict_skips_bad_files_and_writes_a_sorted_submission(
    folder: Path, model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "submission.csv"
    result = predict(folder, "--out", out, "--model", model_file, "--batch-size", "2", "--proba")
    assert result.exit_code == 0
    assert "skipped notes.jpg: not_an_image" in result.stderr
    assert "skipped sub/broken.jpg: truncated" in result.stderr
    assert "skipped 2 unreadable" in result.stdout and "ignored 1 non-image" in result.stdout
    assert "4 images" in result.stdout

    columns, rows = read_csv(out)
    assert columns == ["id", "label", "dog_probability"]
    assert [r["id"] for r in rows] == ["1", "2", "10", "photo"]  # numeric order, then names
    for row in rows:
        assert row["label"] == str(int(float(row["dog_probability"]) >= 0.5))
        assert 0 <= float(row["dog_probability"]) <= 1

    plain = tmp_path / "plain.csv"
    assert predict(folder, "--out", plain, "--model", model_file).exit_code == 0
    columns, plain_rows = read_csv(plain)
    assert columns == ["id", "label"]
    assert [(r["id"], r["label"]) for r in plain_rows] == [(r["id"], r["label"]) for r in rows]


def damaged_jpeg() -> bytes:
    """A JPEG with a run of 0xFF bytes in its entropy-coded data: Pillow, THE preprocessing's
    decoder, decodes it (with a warning it swallows) into damaged pixels; the strict decode in
    `standardise` refuses it first, so the model never sees it."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (96, 128, 3), np.uint8))
    data = bytearray(encode(noise, "JPEG", quality=90))
    middle = (data.index(b"\xff\xda") + len(data)) // 2  # halfway through the scan
    data[middle : middle + 50] = b"\xff" * 50
    return bytes(data)


def test_a_damaged_jpeg_is_skipped_not_fatal(
    folder: Path, model_file: Path, tmp_path: Path
) -> None:
    damaged = damaged_jpeg()
    with Image.open(io.BytesIO(damaged)) as image:
        image.load()  # Pillow alone would pass it on
    with pytest.raises(ImageRejected):
        standardise(damaged, Limits(max_pixels=1_000_000))
    (folder / "3.jpg").write_bytes(damaged)
    out = tmp_path / "submission.csv"
    result = predict(folder, "--out", out, "--model", model_file, "--batch-size", "2")
    assert result.exit_code == 0
    assert "skipped 3.jpg: corrupt: " in result.stderr
    assert "4 images" in result.stdout and "skipped 3 unreadable" in result.stdout
    assert [row["id"] for row in read_csv(out)[1]] == ["1", "2", "10", "photo"]


def test_a_shared_id_is_written_and_warned_about(model_file: Path, tmp_path: Path) -> None:
    for name, seed in (("a/1.jpg", 1), ("b/cat.1.jpg", 2), ("2.jpg", 3)):
        write_image(tmp_path / "in" / name, seed)
    out = tmp_path / "shared.csv"
    result = predict(tmp_path / "in", "--out", out, "--model", model_file)
    assert result.exit_code == 0
    assert "warning: 1 ids occur more than once (e.g. 1)" in result.stderr
    assert [row["id"] for row in read_csv(out)[1]] == ["1", "1", "2"]


def test_exif_rotated_photos_reach_the_model_upright(tmp_path: Path) -> None:
    """A phone photo stored on its side with the EXIF tag that turns it back is predicted upright,
    as the service and the download stage see it (this once reached the model sideways)."""
    model = tmp_path / "upright.keras"
    upright_detector().save(model)
    photo = brighter_half_on_top()
    folder = tmp_path / "phone"
    folder.mkdir()
    (folder / "1.jpg").write_bytes(encode(photo, "JPEG"))
    for orientation in (3, 6, 8):
        (folder / f"{orientation}.jpg").write_bytes(stored_with_tag(photo, orientation, "JPEG"))
    out = tmp_path / "upright.csv"
    assert predict(folder, "--out", out, "--model", model, "--proba").exit_code == 0
    _, rows = read_csv(out)
    probabilities = {r["id"]: float(r["dog_probability"]) for r in rows}
    assert probabilities.keys() == {"1", "3", "6", "8"}
    assert all(p > 0.99 for p in probabilities.values()), probabilities


def test_predict_reads_an_archive(folder: Path, model_file: Path, tmp_path: Path) -> None:
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    out_zip, out_dir = tmp_path / "zip.csv", tmp_path / "dir.csv"
    from_zip = predict(archive, "--out", out_zip, "--model", model_file, "--proba")
    from_dir = predict(folder, "--out", out_dir, "--model", model_file, "--proba")
    assert from_zip.exit_code == from_dir.exit_code == 0
    assert out_zip.read_text() == out_dir.read_text()
    assert from_zip.stderr.count("skipped") == from_dir.stderr.count("skipped") == 2


def test_predict_fails_in_one_line(folder: Path, tmp_path: Path, model_file: Path) -> None:
    """No usable image, no input, no model: exit status 1, one line, nothing written."""
    (tmp_path / "empty").mkdir()
    out = tmp_path / "s.csv"
    result = predict(tmp_path / "empty", "--out", out, "--model", model_file)
    assert result.exit_code == 1
    assert result.stderr == f"Error: no usable images in {tmp_path / 'empty'}\n"
    result = predict(tmp_path / "missing", "--out", out, "--model", model_file)
    assert result.exit_code == 1 and "neither a folder nor" in result.stderr
    result = predict(folder, "--out", out, "--model", tmp_path / "none.keras")
    assert (result.exit_code, result.stderr) == (1, f"Error: no model at {tmp_path}/none.keras\n")
    assert not out.exists()


def test_the_installed_command_reads_paths_from_the_callers_folder(
    folder: Path, model_file: Path, tmp_path: Path
) -> None:
    command = [imgclf_command(), "predict", folder.name, "--out", "cli.csv"]
    command += ["--model", str(model_file), "--proba"]
    result = subprocess.run(command, cwd=folder.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "skipped notes.jpg" in result.stderr
    assert result.stdout.startswith("predict: 4 images -> cli.csv (")
    columns, rows = read_csv(tmp_path / "cli.csv")
    assert columns == ["id", "label", "dog_probability"] and len(rows) == 4


def test_evaluate_and_predict_give_the_same_probabilities(
    sample_data_dir: Path, tmp_path: Path
) -> None:
    """THE equality test: predictions.tsv and `predict --proba` agree on real photos (evaluate
    runs the export stage's engine, batch prediction the Keras model: within the tolerance the
    export stage checks)."""
    root = tmp_path / "project"
    paths = Paths(root)
    paths.split_dir.mkdir(parents=True)
    picks = {
        "train": ["cat/cat.1.jpg", "dog/dog.2.jpg"],
        "val": ["cat/cat.3.jpg", "dog/dog.4.jpg"],
        "test": [
            "cat/cat.5.jpg",
            "cat/cat.6.jpg",
            "dog/dog.7.jpg",
            "dog/dog.8.jpg",
            "dog/dog.9.jpg",
        ],
    }
    for split, names in picks.items():
        rows = []
        for name in names:
            rel = f"artifacts/download/images/{name}"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sample_data_dir / name, root / rel)
            rows.append({"path": rel, "label": name.split("/")[0], "group": name, "sha256": "-"})
        write_tsv(paths.split_manifest(split), rows, ("path", "label", "group", "sha256"))
    paths.train_dir.mkdir(parents=True)
    tiny_model(size=96, seed=3).save(paths.model)
    export = ExportParams(check_images=2)
    assert run_export(paths, export, CLASSES)["passed"]

    run_evaluate(paths, CLASSES, EvaluateParams(batch_size=4))
    evaluated = {Path(r["path"]).name: float(r["probability"]) for r in read_tsv(paths.predictions)}

    out = tmp_path / "submission.csv"
    images = root / "artifacts/download/images"
    result = predict(images, "--out", out, "--proba", "--model", paths.model, "--batch-size", "3")
    assert result.exit_code == 0
    _, rows = read_csv(out)
    predicted = {int(r["id"]): float(r["dog_probability"]) for r in rows}

    assert len(predicted) == len(evaluated) == 9
    assert len(set(predicted.values())) > 1  # the model does tell the photos apart
    for name, probability in evaluated.items():
        expected = pytest.approx(probability, abs=export.tolerance)
        assert predicted[submission_id(name)] == expected, name


def test_two_classes_keep_todays_submission_byte_for_byte(
    folder: Path, model_file: Path, tmp_path: Path
) -> None:
    """Kaggle's format exactly: `id,label[,dog_probability]`, the class index as label, the
    probability printed to 9 significant digits, Unix newlines, rows by id."""
    files = {
        "1": "sub/deeper/dog.1.png",
        "2": "sub/cat.2.jpg",
        "10": "10.jpg",
        "photo": "sub/photo.jpg",
    }
    model = load_model(model_file)
    dog = predict_probabilities(model, [folder / f for f in files.values()], 4)[:, 1]
    lines = [f"{ident},{int(p >= 0.5)},{float(p):.9g}" for ident, p in zip(files, dog, strict=True)]
    out = tmp_path / "submission.csv"
    assert predict(folder, "--out", out, "--model", model_file, "--proba").exit_code == 0
    assert out.read_bytes() == "\n".join(["id,label,dog_probability", *lines, ""]).encode()
    assert predict(folder, "--out", out, "--model", model_file).exit_code == 0
    plain = [line.rsplit(",", 1)[0] for line in lines]
    assert out.read_bytes() == "\n".join(["id,label", *plain, ""]).encode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real MLflow registry in a SQLite file, this module's MLflow while it runs."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with mlflow_uris(uri):
        yield Registry(root, uri, image_size=32)


def read_class_csv(out: Path, folder: Path, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """The K-class CSV's columns and its probability matrix, after checking each row's label
    and confidence against its probabilities (argmax) and that rows come sorted by path."""
    columns, rows = read_csv(out)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert all((folder / r["path"]).is_file() for r in rows)
    matrix = np.array([[float(r[c]) for c in classes] for r in rows])
    np.testing.assert_allclose(matrix.sum(axis=1), 1, atol=1e-6)
    assert [r["label"] for r in rows] == [classes[i] for i in matrix.argmax(axis=1)]
    np.testing.assert_allclose([float(r["confidence"]) for r in rows], matrix.max(axis=1))
    return columns, matrix


def test_a_three_class_model_writes_path_label_confidence(
    registry: Registry, folder: Path, tmp_path: Path
) -> None:
    """The model's own classes (its MLflow metadata), whatever params.yaml lists."""
    version = registry.promote(seed=1, classes=THREE)
    uri = f"models:/{registry.model_name}@champion"
    out = tmp_path / "three.csv"
    result = predict(folder, "--out", out, "--model", uri, "--proba", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    columns, matrix = read_class_csv(out, folder, THREE)
    assert columns == ["path", "label", "confidence", *THREE]
    paths = [r["path"] for r in read_csv(out)[1]]
    assert paths == ["10.jpg", "sub/cat.2.jpg", "sub/deeper/dog.1.png", "sub/photo.jpg"]
    expected = registry.expected(version, [folder / p for p in paths])
    np.testing.assert_allclose(matrix, expected, atol=1e-6)
    counts = np.bincount(matrix.argmax(axis=1), minlength=3)
    assert (
        f"4 images -> {out} ({counts[0]} bird, {counts[1]} cat, {counts[2]} dog)" in result.stdout
    )

    plain = tmp_path / "plain.csv"
    assert predict(folder, "--out", plain, "--model", uri).exit_code == 0
    columns, rows = read_csv(plain)
    assert columns == ["path", "label", "confidence"]
    assert [list(r.values()) for r in rows] == [
        [r["path"], r["label"], r["confidence"]] for r in read_csv(out)[1]
    ]


def test_an_older_model_is_named_by_its_version_tag(
    registry: Registry, folder: Path, tmp_path: Path
) -> None:
    """A model logged before models carried their classes: the registry version's tag names
    them (here in an order of its own, to tell it from any other list)."""
    classes = ["zebra", "ant", "moth"]
    registry.promote(
        seed=2, classes=classes, carries_classes=False, tags={"classes": json.dumps(classes)}
    )
    out = tmp_path / "tagged.csv"
    uri = f"models:/{registry.model_name}@champion"
    assert predict(folder, "--out", out, "--model", uri, "--proba").exit_code == 0
    columns, _ = read_class_csv(out, folder, classes)
    assert columns == ["path", "label", "confidence", *classes]


def test_a_model_without_classes_gets_the_projects(folder: Path, tmp_path: Path) -> None:
    """A .keras file carries no classes: params.yaml's list names them, or the split stage's
    resolved one once it exists; a list that does not fit the outputs, or `auto` with no split
    yet, is one line and exit status 1."""
    model = tmp_path / "three.keras"
    tiny_model(size=32, seed=3, classes=3).save(model)
    project = tmp_path / "project"
    project.mkdir()
    params = project / "params.yaml"
    shutil.copy(PARAMS_FILE, params)
    out = tmp_path / "out.csv"
    result = predict(folder, "--out", out, "--model", model, params=params)
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr == (
        f"Error: {model} gives 3 class probabilities but the class list has 2: cat, dog\n"
    )
    params.write_text(PARAMS_FILE.read_text().replace("classes: [cat, dog]", "classes: auto"))
    result = predict(folder, "--out", out, "--model", model, params=params)
    assert result.exit_code == 1 and not out.exists()
    assert "the model carries no class list and download.classes is auto" in result.stderr
    write_json(Paths(project).split_classes, THREE)
    assert predict(folder, "--out", out, "--model", model, "--proba", params=params).exit_code == 0
    read_class_csv(out, folder, THREE)
