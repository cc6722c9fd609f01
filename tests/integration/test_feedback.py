"""Ground-truth feedback and the operational metrics, over HTTP against the real service of
tests/support/champion_service.py (bentoml serve, champion loaded from an S3-backed MLflow server).

This module is the only one that sends feedback to that service, so the live-accuracy window
holds exactly what these tests labelled; predictions from other modules are never labelled.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.support.champion_service import FEEDBACK_WINDOW, TEST_ACCURACY, ChampionService


def photos(sample_data_dir: Path, per_class: int) -> list[Path]:
    return [
        path
        for label in ("cat", "dog")
        for path in sorted((sample_data_dir / label).glob("*.jpg"))[:per_class]
    ]


def predict(service: ChampionService, path: Path) -> dict:
    response = requests.post(
        service.url + "/predict",
        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
        headers=service.headers(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def feedback(service: ChampionService, headers: dict | None = None, **body) -> requests.Response:
    return requests.post(
        service.url + "/feedback",
        json=body,
        headers=service.headers() if headers is None else headers,
        timeout=30,
    )


def other(label: str) -> str:
    return "dog" if label == "cat" else "cat"


def scrape(service: ChampionService) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value} for the imgclf_* samples."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("imgclf_"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.fixture(scope="module")
def labelled(champion_service: ChampionService, sample_data_dir: Path) -> list[dict]:
    """Eight predictions, each labelled at once (no pause: the row may still be queued): the
    first half confirmed, the second half contradicted, so live accuracy must be exactly 0.5
    whatever the tiny model predicts."""
    answers = [predict(champion_service, path) for path in photos(sample_data_dir, 4)]
    replies = []
    for n, answer in enumerate(answers):
        truth = answer["label"] if n < len(answers) // 2 else other(answer["label"])
        response = feedback(champion_service, request_id=answer["request_id"], label=truth)
        assert response.status_code == 200, response.text
        replies.append(response.json())
    return replies


def test_champion_artifacts_live_in_s3(champion_service: ChampionService) -> None:
    keys = champion_service.s3.keys(champion_service.bucket, "mlflow/")
    assert any(key.endswith("/MLmodel") for key in keys), keys
    assert any(key.endswith(".keras") for key in keys), keys


def test_feedback_answers_with_the_prediction(labelled: list[dict]) -> None:
    assert [reply["correct"] for reply in labelled] == [True] * 4 + [False] * 4
    assert all(reply["recorded"] and reply["index"] == 0 for reply in labelled)
    assert {reply["predicted"] for reply in labelled} <= {"cat", "dog"}


def test_live_accuracy_metric_follows_feedback(
    champion_service: ChampionService, labelled: list[dict]
) -> None:
    metrics = scrape(champion_service)
    assert metrics["imgclf_live_accuracy"] == pytest.approx(0.5)
    assert metrics["imgclf_live_accuracy_samples"] == len(labelled) <= FEEDBACK_WINDOW
    assert metrics["imgclf_champion_test_accuracy"] == pytest.approx(TEST_ACCURACY)
    # per true class: what was received, and the share of it the model had predicted
    received = Counter((str(reply["correct"]).lower(), reply["label"]) for reply in labelled)
    for (correct, label), count in received.items():
        assert metrics[f'imgclf_feedback_total{{correct="{correct}",label="{label}"}}'] == count
    assert sum(count for (correct, _), count in received.items() if correct == "true") == 4
    for label in ("cat", "dog"):
        truths = [reply["correct"] for reply in labelled if reply["label"] == label]
        recall = metrics[f'imgclf_live_recall{{label="{label}"}}']
        assert recall == pytest.approx(sum(truths) / len(truths)) if truths else math.isnan(recall)


def test_feedback_is_stored_beside_the_prediction(
    champion_service: ChampionService, labelled: list[dict]
) -> None:
    from imgclf.monitoring.schema import predictions

    engine = sa.create_engine(champion_service.db_url)
    ids = [reply["request_id"] for reply in labelled]
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(predictions.c.request_id, predictions.c.label, predictions.c.true_label)
            .where(predictions.c.request_id.in_(ids))
            .where(predictions.c.feedback_at.is_not(None))
        ).all()
    engine.dispose()
    stored = {row.request_id: (row.label, row.true_label) for row in rows}
    assert stored == {r["request_id"]: (r["predicted"], r["label"]) for r in labelled}


def test_repeated_feedback_is_idempotent_and_a_different_label_conflicts(
    champion_service: ChampionService, labelled: list[dict]
) -> None:
    first = labelled[0]
    again = feedback(champion_service, request_id=first["request_id"], label=first["label"])
    assert again.status_code == 200 and again.json()["recorded"] is False
    clash = feedback(champion_service, request_id=first["request_id"], label=other(first["label"]))
    assert clash.status_code == 409 and clash.json()["error"] == "conflicting_label"
    assert scrape(champion_service)["imgclf_live_accuracy_samples"] == len(labelled)


def test_feedback_for_a_batch_item(
    champion_service: ChampionService, sample_data_dir: Path, labelled: list[dict]
) -> None:
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in photos(sample_data_dir, 1)]
    response = requests.post(
        champion_service.url + "/predict_batch",
        files=files,
        headers=champion_service.headers(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    second = response.json()[1]
    reply = feedback(
        champion_service, request_id=second["request_id"], index=1, label=second["label"]
    )
    assert reply.status_code == 200 and reply.json()["index"] == 1
    nowhere = feedback(champion_service, request_id=second["request_id"], index=2, label="cat")
    assert nowhere.status_code == 404
    metrics = scrape(champion_service)
    assert metrics["imgclf_live_accuracy_samples"] == len(labelled) + 1
    assert metrics["imgclf_live_accuracy"] == pytest.approx(5 / 9)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"request_id": "0" * 32, "label": "cat"}, 404, "unknown_prediction"),
        ({"request_id": "0" * 32, "label": "horse"}, 422, "unknown_label"),
        ({"request_id": "not-an-id", "label": "cat"}, 422, "invalid_feedback"),
        ({"label": "cat"}, 422, "invalid_feedback"),
        ({"request_id": "0" * 32, "label": "cat", "extra": 1}, 422, "invalid_feedback"),
    ],
)
def test_bad_feedback_is_refused(
    champion_service: ChampionService, body: dict, status: int, error: str
) -> None:
    response = feedback(champion_service, **body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error


def test_feedback_needs_json_and_a_token(champion_service: ChampionService) -> None:
    as_form = requests.post(
        champion_service.url + "/feedback",
        data={"request_id": "0" * 32, "label": "cat"},
        headers=champion_service.headers(),
        timeout=10,
    )
    assert as_form.status_code == 415
    anonymous = feedback(champion_service, headers={}, request_id="0" * 32, label="cat")
    assert anonymous.status_code == 401


def test_process_metrics_are_exported(champion_service: ChampionService) -> None:
    metrics = scrape(champion_service)
    assert metrics["imgclf_process_resident_memory_bytes"] > 50e6  # TensorFlow alone is more
    assert metrics["imgclf_process_cpu_seconds_total"] > 0


def test_service_logs_are_json(champion_service: ChampionService) -> None:
    lines = champion_service.server.log_path.read_text(errors="replace").splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # bentoml's CLI banner and the TensorFlow C++ log are not ours to format
    swaps = [r for r in records if r.get("logger") == "imgclf.serving.holder"]
    assert any(f"version {champion_service.version}" in r["message"] for r in swaps), lines[-20:]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
