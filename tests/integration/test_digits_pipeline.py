"""Ten classes end to end, on a real image set that ships with a pinned package: scikit-learn's
handwritten digits as PNG class folders -> `dvc repro` (classes: auto) -> the registry ->
`bentoml serve` -> /predict -> /feedback -> /metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imgclf.io import read_json, read_tsv
from tests.conftest import copy_project
from tests.support.digits import write_digits
from tests.support.helpers import VENV_BIN, BentoServer, metric_samples, mint_token

DIGITS = [str(d) for d in range(10)]
SECRET = "digits-secret-0123456789abcdef01234567"
AUDIENCE = "imgclf"
PARAMS = {
    "download.classes": "auto",
    "train.arch": "efficientnet_lite0",  # the cheapest pretrained backbone: ten classes are tested
    "train.image_size": 96,  # 64 px digits: 224 px would only cost time
    "train.tta": "none",  # a mirrored digit is not the same digit
    "evaluate.misclassified_grid": 9,
    "register.model_name": "digits",
    # LiteRT's float32 softmax over ten classes lands ~1e-5 from Keras's (XNNPACK's summation
    # order); flipped labels are still refused, and the service answers with this engine.
    "export.tolerance": 5e-5,
}


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory, set_params, run_dvc, ran) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "digits")
    repo = copy_project(root / "repo")
    set_params(repo, {"download.source": str(root / "digits"), **PARAMS})
    result = run_dvc(repo, "repro")
    assert {"download", "split", "train", "export", "evaluate", "register"} <= ran(result.stdout)
    return repo


def test_ten_classes_are_resolved_learned_and_registered(digits_repo: Path) -> None:
    assert read_json(digits_repo / "artifacts" / "split" / "classes.json") == DIGITS
    test = read_json(digits_repo / "reports" / "metrics.json")["test"]
    assert test["accuracy"] > 0.9 and test["macro_f1"] > 0.9, test
    assert test["top_3_accuracy"] >= test["accuracy"]
    assert sorted(test["per_class"]) == DIGITS
    register = read_json(digits_repo / "reports" / "register.json")
    assert (register["version"], register["decision"], register["classes"]) == (
        1,
        "promoted",
        DIGITS,
    )
    assert (digits_repo / "artifacts" / "evaluate" / "confusion_matrix.png").is_file()


@pytest.fixture(scope="module")
def digits_service(
    digits_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BentoServer]:
    tmp = tmp_path_factory.mktemp("digits_service")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_"))},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{digits_repo / 'mlflow.db'}",
        "BENTOML_HOME": str(tmp / "bentoml"),
        "IMGCLF_SERVE_MODEL_NAME": "digits",
        "IMGCLF_PREDICTION_DB_URL": f"sqlite:///{tmp / 'predictions.db'}",
        "IMGCLF_JWT_SECRET": SECRET,
        "IMGCLF_JWT_AUDIENCE": AUDIENCE,
    }
    server = BentoServer(env, tmp / "server.log")
    try:
        server.wait_for("/readyz", 180)
        yield server
    finally:
        server.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(SECRET, AUDIENCE, sub='digits-test')}"}


def feedback_count(server: BentoServer, label: str) -> float:
    samples = metric_samples(server.url, "imgclf_feedback_total")
    return sum(value for labels, value in samples if labels.get("label") == label)


def test_a_digit_is_answered_among_ten_and_its_feedback_counted(
    digits_repo: Path, digits_service: BentoServer
) -> None:
    rows = read_tsv(digits_repo / "artifacts" / "evaluate" / "predictions.tsv")
    seven = next(r for r in rows if r["split"] == "test" and r["label"] == r["predicted"] == "7")
    image = digits_repo / seven["path"]
    answer = requests.post(
        digits_service.url + "/predict",
        files=[("image", (image.name, image.read_bytes(), "image/png"))],
        headers=auth(),
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["label"], body["model_version"]) == ("7", "1")
    assert list(body["probabilities"]) == DIGITS
    assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert body["confidence"] == pytest.approx(float(seven["confidence"]), abs=1e-4)
    assert "probability" not in body  # the binary answer's field

    before = feedback_count(digits_service, "7")
    label = {"request_id": body["request_id"], "label": "7"}
    recorded = requests.post(digits_service.url + "/feedback", json=label, headers=auth())
    assert recorded.status_code == 200, recorded.text
    assert recorded.json()["correct"] is True
    assert feedback_count(digits_service, "7") == before + 1

    unknown = {"request_id": body["request_id"], "label": "seven"}
    refused = requests.post(digits_service.url + "/feedback", json=unknown, headers=auth())
    assert refused.status_code == 422 and "9" in refused.text
