"""Feedback is bound to who asked for the prediction: the session's shared `bentoml serve`
(tests/support/service.py) logs each prediction with its token's subject (`sub`), and takes a
true label only from that subject, or from a token with the `feedback:any` scope (a labelling
team); anyone else gets 403 before anything about the prediction is told, so no client can
poison another's live accuracy. A real prediction log (the server's SQLite file) is read back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.support.service import LiveService, token

Bearer = Callable[[], dict[str, str]]  # a fresh header per call: a token minted at import could
# expire before a long run reaches this module


def bearer(**claims: object) -> Bearer:
    return lambda: {"Authorization": f"Bearer {token(**claims)}"}


ALICE = bearer(sub="alice")
BOB = bearer(sub="bob")
LABELLERS = bearer(sub="labelling-team", scope="read feedback:any")
NO_SUBJECT = bearer(sub=None)


@pytest.fixture(scope="module")
def photo(sample_data_dir: Path) -> Path:
    return sorted((sample_data_dir / "cat").glob("*.jpg"))[5]


def predict(service: LiveService, photo: Path, caller: Bearer, path: str = "/predict") -> dict:
    count, field = (1, "image") if path == "/predict" else (2, "images")
    files = [(field, (photo.name, photo.read_bytes(), "image/jpeg"))] * count
    response = requests.post(service.url + path, files=files, headers=caller(), timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def label(
    service: LiveService, caller: Bearer, request_id: str, index: int = 0, truth: str = "cat"
) -> requests.Response:
    body = {"request_id": request_id, "index": index, "label": truth}
    return requests.post(service.url + "/feedback", json=body, headers=caller(), timeout=30)


def refusal(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]


def test_only_the_subject_that_asked_may_label_its_prediction(
    live_service: LiveService, photo: Path
) -> None:
    answer = predict(live_service, photo, ALICE)
    assert refusal(label(live_service, BOB, answer["request_id"])) == (403, "forbidden")
    assert refusal(label(live_service, NO_SUBJECT, answer["request_id"])) == (403, "forbidden")
    # Bob's attempt took nothing: Alice's label is the first one stored.
    stored = label(live_service, ALICE, answer["request_id"])
    assert stored.status_code == 200 and stored.json()["recorded"] is True, stored.text
    # A different label from Bob is still a 403, never a 409 that would tell him Alice's.
    assert refusal(label(live_service, BOB, answer["request_id"], truth="dog")) == (
        403,
        "forbidden",
    )


def test_a_feedback_any_scope_labels_anyones_prediction(
    live_service: LiveService, photo: Path
) -> None:
    batch = predict(live_service, photo, ALICE, "/predict_batch")
    stored = label(live_service, LABELLERS, batch[1]["request_id"], index=1)
    assert stored.status_code == 200 and stored.json()["index"] == 1, stored.text
    assert refusal(label(live_service, BOB, batch[0]["request_id"])) == (403, "forbidden")


def test_the_prediction_log_keeps_the_subject(live_service: LiveService, photo: Path) -> None:
    from imgclf.monitoring.schema import predictions

    asked = {
        predict(live_service, photo, caller)["request_id"]: subject
        for caller, subject in ((ALICE, "alice"), (BOB, "bob"), (NO_SUBJECT, None))
    }
    # Feedback on a prediction not written yet flushes the log's queue first: once this is
    # answered, every prediction answered before it is in the database.
    assert label(live_service, BOB, list(asked)[-1]).status_code == 403
    engine = sa.create_engine(live_service.server.db_url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(predictions.c.request_id, predictions.c.subject).where(
                predictions.c.request_id.in_(list(asked))
            )
        ).all()
    engine.dispose()
    assert dict(rows) == asked
