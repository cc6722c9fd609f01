"""Model behaviour through batch prediction (`python -m stages.predict`), on real photos: the
probability must not depend on how a photo was stored, and the CLI must agree with evaluate.

Invariances, each against the photo's own JPEG:
- EXIF orientation: the pixels stored turned, with the tag that turns them back -> the same
  probability (to float noise: the model sees identical pixels);
- PNG vs JPEG: a PNG of exactly the pixels THE preprocessing decodes from the JPEG -> the same;
- a JPEG re-encode at quality 90 (and a phone JPEG stored turned): pixels move by a level or two,
  so the probability may move, but by far less than the distance between two photos.

The service's side of the same checks is tests/integration/test_serving_invariance.py.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.config import EvaluateParams, Paths
from imgclf.data.ingest import build_dataset
from imgclf.evaluation.report import read_predictions, run_evaluate
from imgclf.io import read_tsv, write_tsv
from imgclf.model.batch_predict import submission_id
from stages.predict import main
from tests.support.helpers import tiny_model
from tests.support.photos import decoded_as_model_sees, encode, stored_with_tag

CLASSES = ["cat", "dog"]
PHOTOS = [f"cat/cat.{i}.jpg" for i in range(1, 5)] + [f"dog/dog.{i}.jpg" for i in range(1, 5)]
FLOAT_NOISE = 1e-6  # the same pixels in another batch position
# A re-encode moves the probability by a fraction of what a different photo does. Measured with
# tiny_model(64, 0) on these photos: at most 0.5% of its spread over them for quality 90, 2% for
# the phone JPEG (decoded by Pillow when turned, by TensorFlow's faster IDCT when not); 5% keeps
# a margin and still fails a re-encode that mixed photos up, lost colour or turned a photo.
REENCODE_SHARE_OF_SPREAD = 0.05
TURNS = (3, 6, 8)  # upside down, stored turned left, stored turned right

# Each photo's variants are named <photo><variant>.<ext>, so the submission id says which is which.
ORIGINAL, SAME_PIXELS_PNG, QUALITY_90, PHONE_JPEG, SIDEWAYS = 0, 1, 2, 4, 7


def variants(photo: bytes) -> dict[int, tuple[str, bytes]]:
    """Variant -> (extension, bytes) of one JPEG photo; variants 3, 6, 8 are EXIF turns."""
    seen = decoded_as_model_sees(photo)
    upright = Image.open(io.BytesIO(photo)).convert("RGB")
    files = {
        ORIGINAL: ("jpg", photo),
        SAME_PIXELS_PNG: ("png", encode(seen, "PNG")),
        QUALITY_90: ("jpg", encode(upright, "JPEG", quality=90)),
        PHONE_JPEG: ("jpg", stored_with_tag(upright, 6, "JPEG", quality=95)),
        SIDEWAYS: ("png", encode(seen.transpose(Image.Transpose.ROTATE_90), "PNG")),  # no tag
    }
    files.update({turn: ("png", stored_with_tag(seen, turn, "PNG")) for turn in TURNS})
    return files


def read_probabilities(csv_file: Path) -> dict[int, float]:
    with open(csv_file, newline="", encoding="utf-8") as fh:
        return {int(row["id"]): float(row["dog_probability"]) for row in csv.DictReader(fh)}


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
    for index, name in enumerate(PHOTOS, start=1):
        for variant, (ext, data) in variants((sample_data_dir / name).read_bytes()).items():
            (folder / f"{index}{variant}.{ext}").write_bytes(data)
    out = folder.parent / "variants.csv"
    assert main([str(folder), "--out", str(out), "--model", str(model_file), "--proba"]) == 0
    by_photo: dict[int, dict[int, float]] = {}
    for ident, probability in read_probabilities(out).items():
        by_photo.setdefault(ident // 10, {})[ident % 10] = probability
    return by_photo


def spread(predicted: dict[int, dict[int, float]]) -> float:
    originals = [variant[ORIGINAL] for variant in predicted.values()]
    return max(originals) - min(originals)


def test_the_model_tells_photos_and_orientations_apart(predicted) -> None:
    """Without this the invariance tests below could not fail."""
    assert spread(predicted) > 0.02
    for index, probability in predicted.items():
        assert abs(probability[SIDEWAYS] - probability[ORIGINAL]) > 100 * FLOAT_NOISE, index


@pytest.mark.parametrize("turn", TURNS)
def test_invariant_to_exif_orientation(predicted, turn: int) -> None:
    for index, probability in predicted.items():
        assert probability[turn] == pytest.approx(probability[ORIGINAL], abs=FLOAT_NOISE), index


def test_png_and_jpeg_of_the_same_pixels_get_the_same_probability(predicted) -> None:
    for index, probability in predicted.items():
        assert probability[SAME_PIXELS_PNG] == pytest.approx(
            probability[ORIGINAL], abs=FLOAT_NOISE
        ), index


@pytest.mark.parametrize("variant", [QUALITY_90, PHONE_JPEG], ids=["quality_90", "phone_jpeg"])
def test_nearly_invariant_to_a_jpeg_re_encode(predicted, variant: int) -> None:
    tolerance = REENCODE_SHARE_OF_SPREAD * spread(predicted)
    for index, probability in predicted.items():
        assert probability[variant] == pytest.approx(probability[ORIGINAL], abs=tolerance), index


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

    run_evaluate(paths, CLASSES, EvaluateParams(batch_size=3))
    evaluated = {
        Path(r["path"]).name: r["probability"] for r in read_predictions(paths.predictions)
    }
    out = tmp_path / "submission.csv"
    assert main([str(paths.images), "--out", str(out), "--model", str(paths.model), "--proba"]) == 0
    predicted = read_probabilities(out)

    assert len(evaluated) == len(predicted) == len(PHOTOS)
    for name, probability in evaluated.items():
        assert predicted[submission_id(name)] == pytest.approx(probability, abs=1e-5), name
    assert np.ptp(list(predicted.values())) > 0.02  # the files are told apart
