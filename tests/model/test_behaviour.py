"""Model behaviour through batch prediction (`imgclf predict`'s run_predict), on real photos: the
probability must not depend on how a photo was stored, and the CLI must agree with evaluate.

Invariances, each against the photo's own JPEG:
- EXIF orientation: the pixels stored turned, with the tag that turns them back -> the same
  probability (to float noise: the model sees identical pixels);
- PNG vs JPEG: a PNG of exactly the pixels THE preprocessing decodes from the JPEG -> the same;
- a JPEG re-encode at quality 90 (and a phone JPEG stored turned): pixels move by a level or two,
  so the probability may move, but by far less than for a turned photo or another photo.

The service's side of the same checks is tests/integration/test_serving_invariance.py.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import EvaluateParams, ExportParams, Paths, load_params
from imgclf.data.ingest import build_dataset
from imgclf.evaluation.report import run_evaluate
from imgclf.io import read_tsv, write_tsv
from imgclf.model.batch_predict import run_predict, submission_id
from imgclf.model.export import run_export
from tests.support.helpers import tiny_model
from tests.support.photos import (
    PHONE_JPEG,
    QUALITY_90,
    SAME_PIXELS_PNG,
    TURNS,
    assert_nearly_invariant_to_a_re_encode,
    assert_same_as_original,
    assert_tells_photos_and_turns_apart,
    by_photo,
    encode,
    stored_with_tag,
    submission_probabilities,
    write_variants,
)

CLASSES = ["cat", "dog"]
PHOTOS = [f"cat/cat.{i}.jpg" for i in range(1, 5)] + [f"dog/dog.{i}.jpg" for i in range(1, 5)]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_model(size=64, seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def predicted(
    sample_data_dir: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, dict[int, float]]:
    """Photo index -> variant -> probability, from one `predict --proba` run over every file."""
    folder = tmp_path_factory.mktemp("variants")
    write_variants([sample_data_dir / name for name in PHOTOS], folder)
    out = folder.parent / "variants.csv"
    summary = run_predict(Paths(), load_params(), folder, out, model=str(model_file), proba=True)
    assert summary.rows == len(list(folder.iterdir())) and not summary.skipped
    return by_photo(submission_probabilities(out))


def test_the_model_tells_photos_and_orientations_apart(predicted) -> None:
    assert_tells_photos_and_turns_apart(predicted, min_spread=0.02)


@pytest.mark.parametrize("turn", TURNS)
def test_invariant_to_exif_orientation(predicted, turn: int) -> None:
    assert_same_as_original(predicted, turn)


def test_png_and_jpeg_of_the_same_pixels_get_the_same_probability(predicted) -> None:
    assert_same_as_original(predicted, SAME_PIXELS_PNG)


@pytest.mark.parametrize("variant", [QUALITY_90, PHONE_JPEG], ids=["quality_90", "phone_jpeg"])
def test_nearly_invariant_to_a_jpeg_re_encode(predicted, variant: int) -> None:
    assert_nearly_invariant_to_a_re_encode(predicted, variant)


def test_predict_equals_evaluate_on_the_download_stage_output(
    sample_data_dir: Path, model_file: Path, tmp_path: Path
) -> None:
    """Raw files (a phone JPEG stored turned, a PNG, plain JPEGs) -> download -> evaluate, and
    `predict` over the same downloaded files: the same probability per file."""
    source = tmp_path / "source"
    for index, name in enumerate(PHOTOS, start=1):
        label = name.split("/")[0]
        (source / label).mkdir(parents=True, exist_ok=True)
        data = (sample_data_dir / name).read_bytes()
        if index == 1:
            upright = Image.open(io.BytesIO(data)).convert("RGB")
            (source / label / f"{index}.jpg").write_bytes(stored_with_tag(upright, 6, "JPEG"))
        elif index == 2:
            (source / label / f"{index}.png").write_bytes(
                encode(Image.open(io.BytesIO(data)), "PNG")
            )
        else:
            (source / label / f"{index}.jpg").write_bytes(data)
    paths = Paths(tmp_path / "project")
    build_dataset(source, paths, classes=CLASSES, workers=1, progress=False)
    manifest = read_tsv(paths.download_manifest)
    assert {row["converted"] for row in manifest} == {"", "exif_rotated", "png"}
    paths.split_dir.mkdir(parents=True)
    for offset, split in enumerate(("train", "val", "test")):
        rows = [{**row, "group": row["path"]} for row in manifest[offset::3]]
        write_tsv(paths.split_manifest(split), rows, ("path", "label", "group", "sha256"))
    paths.train_dir.mkdir(parents=True)
    paths.model.write_bytes(model_file.read_bytes())

    run_export(paths, ExportParams(check_images=3), CLASSES)
    run_evaluate(paths, CLASSES, EvaluateParams(batch_size=3))
    evaluated = {Path(r["path"]).name: float(r["probability"]) for r in read_tsv(paths.predictions)}
    out = tmp_path / "submission.csv"
    run_predict(paths, load_params(), paths.images, out, model=str(paths.model), proba=True)
    predicted = submission_probabilities(out)

    assert len(evaluated) == len(predicted) == len(PHOTOS)
    for name, probability in evaluated.items():
        assert predicted[submission_id(name)] == pytest.approx(probability, abs=1e-5), name
    assert np.ptp(list(predicted.values())) > 0.02  # the files are told apart
