"""`imgclf predict`, the installed command, on real photos: the same submission as
`python -m stages.predict`, with paths relative to the caller's folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.predict import main as stage_predict
from tests.support.helpers import tiny_model, unavailable

IMGCLF = Path(sys.executable).parent / "imgclf"


@pytest.fixture
def photos(sample_data_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for label in ("cat", "dog"):
        for path in sorted((sample_data_dir / label).glob("*.jpg"))[:3]:
            shutil.copy(path, folder / path.name)
    return folder


def test_the_command_writes_what_the_stage_writes(photos: Path, tmp_path: Path) -> None:
    if not IMGCLF.is_file():
        unavailable(f"{IMGCLF} missing: `make install` installs the imgclf command")
    tiny_model().save(tmp_path / "model.keras")
    options = ["--model", str(tmp_path / "model.keras"), "--proba"]
    assert stage_predict([str(photos), "--out", str(tmp_path / "stage.csv"), *options]) == 0

    command = [str(IMGCLF), "predict", "photos", "--out", "cli.csv", *options]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "predict: 6 images" in result.stdout
    assert (tmp_path / "cli.csv").read_text() == (tmp_path / "stage.csv").read_text()
