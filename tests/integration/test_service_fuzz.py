"""Property-based API test: Schemathesis drives a REAL `bentoml serve` (loopback, JWT auth on, a
temp MLflow registry with a champion) from the service's own OpenAPI document (/openapi.json,
imgclf/serving/openapi.py) and checks every answer: no 5xx, a documented status, the documented
content type, headers and body schema.

Positive cases (schemathesis sends real PNG/JPEG/... samples for image media types, so they reach
the model) and, for the POST routes, negative ones (schema-violating bodies and fields).
Bounded to stay cheap on 2 cores: at most MAX_EXAMPLES generated requests per operation, no
shrinking, no coverage phase, and a wall-time budget after which the remaining cases are skipped.
The server and registry fixtures are test_service.py's (imported, not copied).
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

from imgclf.serving.openapi import SPEC_PATH, build_spec
from tests.integration.test_service import Registry, Server, auth, registry, server  # noqa: F401  (fixtures)

MAX_EXAMPLES = 30
BUDGET_S = 60.0  # generated requests stop after this long (start-up not counted)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
_STARTED: list[float] = []


@pytest.fixture(scope="module")
def live(server: Server, registry: Registry) -> Server:  # noqa: F811
    """test_service.py's server, ready: a champion registered, /readyz polled to 200."""
    registry.promote(seed=0)
    server.wait_for("/readyz", 90)
    return server


@pytest.fixture(scope="module")
def api_schema(live: Server):
    response = requests.get(live.url + SPEC_PATH, headers=auth(), timeout=30)
    assert response.status_code == 200, response.text
    schema = schemathesis.openapi.from_dict(response.json())
    schema.config.update(base_url=live.url)
    return schema


# One test per documented operation, named from the same document (default limits).
OPERATIONS = [
    (method.upper(), path)
    for path, item in build_spec(max_bytes=1, max_pixels=1, max_images_per_request=1)[
        "paths"
    ].items()
    for method in item
]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms_to_its_openapi_document(api_schema, method: str, path: str) -> None:
    # schemathesis.pytest.from_fixture (the lazy-schema route) breaks on pytest 9's subtests
    # (`'Function' object has no attribute '_nodeid'`), so the operation's Hypothesis strategy
    # is driven directly.
    operation = api_schema[path][method]
    if not _STARTED:
        _STARTED.append(time.monotonic())
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
        if time.monotonic() - _STARTED[0] > BUDGET_S:
            return  # the module's fuzzing budget is spent: stop sending
        response = case.call_and_validate(headers=auth(), checks=CHECKS, timeout=30)
        calls.append(response.status_code)

    run()
    print(f"{method} {path}: {len(calls)} requests, statuses {sorted(set(calls))}")
    if time.monotonic() - _STARTED[0] <= BUDGET_S:
        assert calls, "no request was sent"
