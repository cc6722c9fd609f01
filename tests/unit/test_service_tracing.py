"""serve.tracing reaches BentoML: off (the default), every path is excluded from its
OpenTelemetry middleware; on, BentoML's own tracing config applies."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.helpers import REPO_ROOT, VENV_BIN

SHOW_TRACING = "import json, service; print(json.dumps(service.ImageClassifier.config['tracing']))"


@pytest.mark.parametrize(("setting", "expected"), [(None, {"excluded_urls": ".*"}), ("true", {})])
def test_serve_tracing_sets_the_bentoml_tracing_config(setting: str | None, expected: dict) -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMGCLF_SERVE_TRACING"}
    if setting is not None:
        env["IMGCLF_SERVE_TRACING"] = setting
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", SHOW_TRACING],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout.splitlines()[-1]) == expected
