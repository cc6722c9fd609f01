"""The service with more than two classes: the session's shared `bentoml serve`
(tests/support/service.py) hot-swaps from its two-class champion to a three-class softmax model
registered as training and registration do it (classes in the MLflow model's metadata and the
version tag), answers in that model's classes, and gets its two-class champion back when this
module ends. Also: where the registry side finds a version's classes, against the real registry.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from imgclf.serving.holder import RegistryChampion
from tests.support.helpers import Registry, metric_samples, mlflow_uris
from tests.support.service import POLL_SECONDS, LiveService, auth

CLASSES = ("owl", "cat", "fox")  # not sorted: answers must keep the model's own order
SWAP_TIMEOUT = POLL_SECONDS + 60


def predict(
    service: LiveService, photo: Path, path: str = "/predict", **params: str | int
) -> requests.Response:
    field = "image" if path == "/predict" else "images"
    return requests.post(
        service.url + path,
        params=params,
        files=[(field, (photo.name, photo.read_bytes(), "image/jpeg"))],
        headers=auth(),
        timeout=60,
    )


def serving(service: LiveService, photo: Path, version: str) -> None:
    """Wait (polling, with a deadline) until `version` answers."""
    deadline = time.monotonic() + SWAP_TIMEOUT
    while predict(service, photo).json().get("model_version") != version:
        assert time.monotonic() < deadline, f"version {version} not served in {SWAP_TIMEOUT}s"
        time.sleep(0.2)


def samples(service: LiveService, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """/metrics' samples called `name`, by their sorted label pairs."""
    return {
        tuple(sorted(labels.items())): value for labels, value in metric_samples(service.url, name)
    }


@pytest.fixture(scope="module")
def photos(sample_data_dir: Path) -> list[Path]:
    return [sorted((sample_data_dir / kind).glob("*.jpg"))[3] for kind in ("cat", "dog")]


@pytest.fixture(scope="module")
def three_classes(live_service: LiveService, photos: list[Path]) -> Iterator[str]:
    """The shared server serving a three-class champion (its version is yielded); the version
    served before comes back afterwards, so the other modules find the server as they left it."""
    registry = live_service.registry
    before = predict(live_service, photos[0]).json()["model_version"]
    version = registry.promote(seed=5, classes=CLASSES, tags={"classes": json.dumps(CLASSES)})
    try:
        serving(live_service, photos[0], version)
        yield version
    finally:
        registry.point_alias(before)
        serving(live_service, photos[0], before)


def test_predict_answers_every_class_in_the_models_order(
    live_service: LiveService, three_classes: str, photos: list[Path]
) -> None:
    expected = live_service.registry.expected(three_classes, photos)
    for photo, row in zip(photos, expected, strict=True):
        response = predict(live_service, photo)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "confidence", "probabilities", "model_version", "request_id"}
        assert body["model_version"] == three_classes
        assert list(body["probabilities"]) == list(CLASSES)
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert list(body["probabilities"].values()) == pytest.approx(row.tolist(), abs=1e-5)
        assert body["label"] == CLASSES[int(np.argmax(row))]
        assert body["confidence"] == pytest.approx(float(row.max()), abs=1e-5)


def test_top_k_answers_the_most_probable_first(
    live_service: LiveService, three_classes: str, photos: list[Path]
) -> None:
    every = predict(live_service, photos[0]).json()["probabilities"]
    ranked = sorted(every.items(), key=lambda item: item[1], reverse=True)
    top_two = predict(live_service, photos[0], top_k=2).json()["probabilities"]
    assert list(top_two) == [label for label, _ in ranked[:2]]
    assert list(top_two.values()) == pytest.approx([p for _, p in ranked[:2]], abs=1e-6)
    batch = predict(live_service, photos[0], "/predict_batch", top_k=1).json()
    assert [list(row["probabilities"]) for row in batch] == [[ranked[0][0]]]
    for bad in ("0", "4", "two"):
        for path in ("/predict", "/predict_batch"):
            refused = predict(live_service, photos[0], path, top_k=bad)
            assert (refused.status_code, refused.json()["error"]) == (422, "invalid_top_k"), bad
    assert "owl, cat, fox" in predict(live_service, photos[0], top_k=4).json()["detail"]


def test_feedback_takes_the_served_models_classes(
    live_service: LiveService, three_classes: str, photos: list[Path]
) -> None:
    def feedback(request_id: str, label: str) -> requests.Response:
        body = {"request_id": request_id, "label": label}
        return requests.post(live_service.url + "/feedback", json=body, headers=auth(), timeout=30)

    before = samples(live_service, "imgclf_feedback_total")
    answer = predict(live_service, photos[1]).json()
    stored = feedback(answer["request_id"], "fox")
    assert stored.status_code == 200, stored.text
    assert stored.json()["correct"] == (answer["label"] == "fox")
    # dog is a class of the two-class champion, not of the one serving now
    refused = feedback(answer["request_id"], "dog")
    assert (refused.status_code, refused.json()["error"]) == (422, "unknown_label")
    assert "owl, cat, fox" in refused.json()["detail"]

    series = (("correct", str(answer["label"] == "fox").lower()), ("label", "fox"))
    assert samples(live_service, "imgclf_feedback_total")[series] == before.get(series, 0) + 1
    recall = samples(live_service, "imgclf_live_recall")
    # the one labelled prediction of this version decides fox's recall; others have none yet
    assert recall[(("label", "fox"),)] == (1.0 if answer["label"] == "fox" else 0.0)
    assert all(math.isnan(recall[(("label", label),)]) for label in ("owl", "cat"))
    # the two-class champion's dog is no class now: its series reads NaN
    assert math.isnan(recall.get((("label", "dog"),), math.nan))


def test_metrics_count_the_served_models_classes(
    live_service: LiveService, three_classes: str, photos: list[Path]
) -> None:
    labels = [predict(live_service, photo).json()["label"] for photo in photos]
    counted = {
        dict(key)["label"]: value
        for key, value in samples(live_service, "imgclf_predictions_total").items()
        if dict(key)["model_version"] == three_classes
    }
    assert set(counted) <= set(CLASSES)  # a series per class the model answered, no other
    assert all(counted[label] >= labels.count(label) for label in labels)
    # confidence is at least 1/3 here, not 1/2: the histogram resolves it below 0.5 too
    buckets = samples(live_service, "imgclf_prediction_confidence_bucket")
    assert {"0.3", "0.4", "0.5"} <= {dict(key)["le"] for key in buckets}


def test_openapi_document_lists_the_served_models_classes(
    live_service: LiveService, three_classes: str
) -> None:
    spec = requests.get(live_service.url + "/openapi.json", timeout=5).json()
    assert "`owl`, `cat`, `fox`" in spec["info"]["description"]
    feedback = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    assert feedback["schema"]["properties"]["label"]["enum"] == list(CLASSES)
    prediction = spec["components"]["schemas"]["Prediction"]["properties"]
    assert prediction["probabilities"]["propertyNames"]["enum"] == list(CLASSES)
    (top_k,) = spec["paths"]["/predict"]["post"]["parameters"]
    assert top_k["schema"]["maximum"] == len(CLASSES)


def test_a_versions_classes_come_from_its_metadata_its_tag_or_the_fallback(
    mlflow_server: str, tmp_path: Path
) -> None:
    with mlflow_uris(mlflow_server):
        registry = Registry(tmp_path, mlflow_server)
        carried = registry.promote(seed=0, classes=CLASSES, tags={"classes": '["x", "y", "z"]'})
        tagged = registry.promote(seed=0, carries_classes=False, tags={"classes": '["a", "b"]'})
        bare = registry.promote(seed=0, carries_classes=False)  # registered before classes
        champion = RegistryChampion(mlflow_server, registry.model_name, "champion", ("p", "q"))
        assert champion.classes(carried) == CLASSES  # the metadata first
        assert champion.classes(tagged) == ("a", "b")
        assert champion.classes(bare) == ("p", "q")
        without = RegistryChampion(mlflow_server, registry.model_name, "champion", None)
        with pytest.raises(ValueError, match="carries no class list"):
            without.classes(bare)
