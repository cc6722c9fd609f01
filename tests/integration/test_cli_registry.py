"""The `imgclf` registry verbs (promote, history, rollback, and bento's champion lookup) against the
session's real `mlflow server`, through the installed-style entry point (click's runner on
imgclf.cli). A bento actually built: tests/integration/test_bento_build.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from imgclf.cli import cli
from imgclf.config import PARAMS_FILE


@pytest.fixture
def project(tmp_path: Path, mlflow_server: str) -> tuple[Path, str]:
    """A params.yaml of its own (a fresh registered model with two versions) and the model name."""
    from mlflow.tracking import MlflowClient

    name = f"cli-{uuid.uuid4().hex[:12]}"
    client = MlflowClient(mlflow_server, mlflow_server)
    experiment = client.create_experiment(name)
    client.create_registered_model(name)
    for _ in range(2):  # versions need a run, not a model: the verbs move aliases only
        run_id = client.create_run(experiment).info.run_id
        client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id)
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params["register"]["model_name"] = name
    params["mlflow"]["tracking_uri"] = mlflow_server
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path, name


def imgclf(params: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["--params", str(params), *args], env={"MLFLOW_TRACKING_URI": None}
    )
    return result.exit_code, result.output


def test_promote_history_rollback(project: tuple[Path, str]) -> None:
    params, _ = project
    assert imgclf(params, "history") == (0, "")
    assert imgclf(params, "promote", "--version", "1") == (0, "champion none -> v1\n")
    assert imgclf(params, "promote", "--version", "2", "--reason", "better") == (
        0,
        "champion v1 -> v2\n",
    )
    code, output = imgclf(params, "history")
    events = [json.loads(line) for line in output.splitlines()]
    assert code == 0
    assert [(e["version"], e["previous"], e["reason"]) for e in events] == [
        ("1", None, "manual"),
        ("2", "1", "better"),
    ]
    assert imgclf(params, "rollback") == (0, "champion v2 -> v1\n")
    assert json.loads(imgclf(params, "history")[1].splitlines()[-1])["action"] == "rollback"


def test_a_registry_problem_is_one_line_and_status_1(project: tuple[Path, str]) -> None:
    params, name = project
    code, output = imgclf(params, "rollback")
    assert code == 1 and output.startswith("Error: ") and name in output
    assert len(output.strip().splitlines()) == 1
    code, output = imgclf(params, "promote", "--version", "9")
    assert code == 1 and len(output.strip().splitlines()) == 1


def test_bento_without_a_champion_is_one_line(project: tuple[Path, str]) -> None:
    """The registry and the model come from --params, as for the other verbs."""
    params, name = project
    code, output = imgclf(params, "bento", "--no-build")
    assert code == 1 and output.startswith(f"Error: no {name}@champion in http")
    assert len(output.strip().splitlines()) == 1
