"""Property-based API test: Schemathesis drives a REAL `bentoml serve` (loopback, JWT auth on, a
temp MLflow registry with a champion) from the service's own OpenAPI document (/openapi.json,
which FastAPI generates from imgclf/serving/app.py) and checks every answer: no 5xx, a documented
status, the documented content type, headers and body schema.

Positive cases (schemathesis sends real PNG/JPEG/... samples for image media types, so they reach
the model) and, for the POST routes, negative ones (schema-violating bodies and fields).
Bounded to stay cheap on 2 cores: at most MAX_EXAMPLES generated requests per operation, no
shrinking, no coverage phase, and a wall-time budget per operation after which its remaining
cases are skipped; every operation must have sent at least one request.
The server is the session's `live_service` (tests/support/service.py), shared with
test_service.py.
"""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from imgclf.serving.app import build_app
from imgclf.serving.settings import load_settings
from tests.support.service import LiveService, auth

MAX_EXAMPLES = 30
BUDGET_S = 20.0  # per operation: its generated requests stop after this long
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(live_service: LiveService):
    response = requests.get(live_service.url + "/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    schema = schemathesis.openapi.from_dict(response.json())
    schema.config.update(base_url=live_service.url)
    return schema


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every operation the app documents (params.yaml's settings)."""
    spec = build_app(load_settings(), runtime=lambda: None).openapi()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


OPERATIONS = _operations()  # one test each


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_openapi_document(api_schema, method: str, path: str) -> None:
    # schemathesis.pytest.from_fixture (the lazy-schema route) breaks on pytest 9's subtests
    # (`'Function' object has no attribute '_nodeid'`), so the operation's Hypothesis strategy
    # is driven directly.
    operation = api_schema[path][method]
    started = time.monotonic()
    calls: list[int] = []

    strategy = operation.as_strategy()
    if method == "POST":  # also schema-violating requests: a missing/odd field, other bodies
        strategy = strategy | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if time.monotonic() - started > BUDGET_S:
            return  # this operation's budget is spent: stop sending
        response = case.call_and_validate(headers=auth(), checks=CHECKS, timeout=30)
        calls.append(response.status_code)

    run()
    print(f"{method} {path}: {len(calls)} requests, statuses {sorted(set(calls))}")
    assert calls, "no request was sent: nothing was tested"
