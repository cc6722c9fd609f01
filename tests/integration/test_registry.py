"""Model registry and promotion gate against a real `mlflow server` on loopback (no mocks).
The gate's rule and the model card alone: tests/unit/test_gate.py, tests/unit/test_model_card.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from imgclf.cli import cli
from imgclf.config import Paths, RegisterParams, load_params
from imgclf.registry.client import RegistryError, champion_version, connect
from imgclf.registry.history import champion_history
from imgclf.registry.registration import register_run
from stages import register as register_stage

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_models, mlflow_server_process):
    """The server (booted while tiny_models imported TensorFlow) as this process's tracking URI:
    what `tracking_uri()` and MLflow read."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    url = mlflow_server_process.wait()
    with _use_tracking_uri(url):
        yield url


@pytest.fixture(scope="module")
def client(server: str):
    return connect(server)


EXAMPLE = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)


def _tiny_model(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


SPECS = {  # label: (test accuracy, test log_loss, data_version)
    "base": (0.90, 0.30, "dv1"),
    "worse": (0.85, 0.35, "dv1"),
    "better": (0.95, 0.20, "dv1"),
    "other_data": (0.99, 0.05, "dv2"),
}


@pytest.fixture(scope="module")
def tiny_models(mlflow_server_process) -> dict:
    """One tiny Keras model per run, built (TensorFlow imported) while the server boots."""
    return {label: _tiny_model(seed) for seed, label in enumerate(SPECS)}


@pytest.fixture(scope="module")
def runs(tiny_models, server: str, client) -> dict[str, tuple[str, np.ndarray]]:
    """Train-like runs: a tiny Keras model logged by log_classifier, test metrics, tags.

    label -> (run_id, the logged model's outputs on EXAMPLE)."""
    import mlflow

    from imgclf.tracking import log_classifier

    experiment = client.create_experiment("registry-tests")
    out = {}
    for label, (accuracy, log_loss, data_version) in SPECS.items():
        model = tiny_models[label]
        with mlflow.start_run(experiment_id=experiment, run_name=label) as run:
            mlflow.set_tags({"data_version": data_version, "git_commit": f"commit-{label}"})
            mlflow.log_params({"train.arch": "tiny", "train.lr": 0.001})
            mlflow.log_metrics(
                {
                    "test_accuracy": accuracy,
                    "test_log_loss": log_loss,
                    "test_n": 100.0,
                    "val_accuracy": accuracy,
                    "train_accuracy": 1.0,
                }
            )
            log_classifier(model, EXAMPLE, ["cat", "dog"])
        out[label] = (run.info.run_id, np.asarray(model(EXAMPLE, training=False)))
    return out


def _champion_outputs(name: str) -> np.ndarray:
    import mlflow.keras

    return np.asarray(mlflow.keras.load_model(f"models:/{name}@champion")(EXAMPLE, training=False))


def test_first_is_champion_worse_stays_challenger_better_is_promoted(client, runs) -> None:
    params = RegisterParams(model_name="gate")
    first = register_run(client, runs["base"][0], params)
    assert (first["version"], first["decision"], first["rule"]) == (1, "promoted", "no_champion")
    assert first["aliases"] == ["challenger", "champion"]
    assert first["value"] == pytest.approx(0.90)
    np.testing.assert_allclose(_champion_outputs("gate"), runs["base"][1], rtol=1e-6)

    version = client.get_model_version("gate", "1")
    assert version.tags["data_version"] == "dv1"
    assert version.tags["git_commit"] == "commit-base"
    assert float(version.tags["test_accuracy"]) == pytest.approx(0.90)
    assert version.tags["gate_rule"] == "no_champion"
    assert version.description.startswith("# gate v1")
    assert "| accuracy | 1.0000 | 0.9000 | 0.9000 |" in version.description
    card = Path(client.download_artifacts(runs["base"][0], "model_card.md")).read_text()
    assert card.startswith("# gate v1") and "## Limitations" in card

    worse = register_run(client, runs["worse"][0], params)
    assert (worse["version"], worse["decision"], worse["rule"]) == (2, "challenger", "not_better")
    assert worse["aliases"] == ["challenger"]
    assert "does not beat champion v1's 0.9" in worse["reason"]
    assert champion_version(client, "gate") == "1"

    better = register_run(client, runs["better"][0], params)
    assert (better["version"], better["decision"], better["rule"]) == (3, "promoted", "better")
    assert better["aliases"] == ["challenger", "champion"]
    assert better["previous_champion"]["version"] == "1"
    np.testing.assert_allclose(_champion_outputs("gate"), runs["better"][1], rtol=1e-6)
    history = champion_history(client, "gate")
    assert [(e["version"], e["previous"], e["action"]) for e in history] == [
        ("1", None, "auto-promote"),
        ("3", "1", "auto-promote"),
    ]


def test_registering_a_run_again_changes_nothing(client, runs) -> None:
    params = RegisterParams(model_name="idempotent")
    first = register_run(client, runs["base"][0], params)
    again = register_run(client, runs["base"][0], params)
    assert (again["version"], again["decision"], again["rule"]) == (
        1,
        "unchanged",
        "already_registered",
    )
    assert again["aliases"] == first["aliases"] == ["challenger", "champion"]
    assert len(client.search_model_versions("name = 'idempotent'")) == 1
    assert len(champion_history(client, "idempotent")) == 1


def test_different_data_version_is_not_promoted(client, runs) -> None:
    params = RegisterParams(model_name="data-version")
    register_run(client, runs["base"][0], params)
    report = register_run(client, runs["other_data"][0], params)
    assert (report["decision"], report["rule"]) == ("challenger", "data_version_differs")
    assert "not comparable" in report["reason"]
    assert champion_version(client, "data-version") == "1"


def test_a_run_without_test_metrics_is_not_registered(client, runs, tiny_models) -> None:
    import mlflow

    from imgclf.tracking import log_classifier

    with mlflow.start_run(
        experiment_id=client.get_experiment_by_name("registry-tests").experiment_id
    ) as run:
        log_classifier(tiny_models["base"], EXAMPLE, ["cat", "dog"])
    with pytest.raises(RegistryError, match="has no test_accuracy metric: run evaluate"):
        register_run(client, run.info.run_id, RegisterParams(model_name="unevaluated"))
    assert client.search_model_versions("name = 'unevaluated'") == []


def test_auto_promote_false_leaves_champion_to_a_person(client, runs) -> None:
    params = RegisterParams(model_name="manual", auto_promote=False, metric="log_loss")
    report = register_run(client, runs["base"][0], params)
    assert (report["decision"], report["rule"]) == ("challenger", "auto_promote_off")
    assert report["direction"] == "lower"
    assert report["aliases"] == ["challenger"]
    assert champion_version(client, "manual") is None
    assert "promote --version 1" in report["reason"]


ENGINE_BYTES = b"an exported engine"  # the registry logs the file as it is


def _export_report(root: Path, max_abs_diff: float = 2e-7, flipped: int = 0) -> None:
    """artifacts/export and reports/export.json, as the export stage leaves them."""
    (root / "artifacts" / "export").mkdir(parents=True, exist_ok=True)
    (root / "artifacts" / "export" / "model.tflite").write_bytes(ENGINE_BYTES)
    report = {"engine": "litert", "file": "model.tflite", "images": 200, "tolerance": 1e-5}
    report |= {"max_abs_diff": max_abs_diff, "flipped": flipped}
    (root / "reports" / "export.json").write_text(json.dumps(report))


def _project(
    tmp_path: Path, run_id: str, model_name: str, classes: tuple[str, ...] = ("cat", "dog")
) -> Path:
    """A project root with params.yaml, train's mlflow_run.json, the split's class list, the
    exported engine and the export/evaluate/split reports."""
    import yaml

    root = tmp_path / "project"
    (root / "artifacts" / "train").mkdir(parents=True)
    (root / "artifacts" / "split").mkdir()
    (root / "artifacts" / "split" / "classes.json").write_text(json.dumps(classes))
    (root / "reports").mkdir()
    _export_report(root)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["register"] = {"model_name": model_name, "metric": "accuracy"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "artifacts" / "train" / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))
    metrics = {
        split: {"accuracy": 0.9, "f1": 0.9, "n": 10, "tp": 5, "threshold": 0.5}
        for split in ("train", "val", "test")
    }
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    split = {
        "total": 30,
        "classes": {"cat": 15, "dog": 15},
        "splits": {
            s: {"total": 10, "groups": 10, "classes": {"cat": 5, "dog": 5}}
            for s in ("train", "val", "test")
        },
    }
    (root / "reports" / "split.json").write_text(json.dumps(split))
    return root


def _point_at(root: Path, run_id: str) -> None:
    (root / "artifacts" / "train" / "mlflow_run.json").write_text(json.dumps({"run_id": run_id}))


def imgclf(root: Path, *args: str) -> Result:
    """`imgclf --params ROOT/params.yaml ARGS` in-process."""
    args = ("--params", str(root / "params.yaml"), *args)
    return CliRunner().invoke(cli, args, catch_exceptions=False)  # a crash is not exit status 1


def run_stage(monkeypatch: pytest.MonkeyPatch, root: Path) -> int:
    """The register stage's entry point on the project at `root`."""
    monkeypatch.setattr(register_stage, "load_params", lambda: load_params(root / "params.yaml"))
    monkeypatch.setattr(register_stage, "Paths", lambda: Paths(root))
    return register_stage.main()


def test_stage_then_imgclf_promote_rollback_and_history(
    client, runs, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path, runs["base"][0], "cli")
    assert run_stage(monkeypatch, root) == 0
    report = json.loads((root / "reports" / "register.json").read_text())
    assert (report["version"], report["decision"]) == (1, "promoted")
    version = client.get_model_version("cli", "1")
    assert json.loads(version.tags["classes"]) == ["cat", "dog"]
    assert version.tags["engine"] == "engine/model.tflite"
    logged = client.download_artifacts(version.run_id, version.tags["engine"], str(tmp_path))
    assert Path(logged).read_bytes() == ENGINE_BYTES
    card = version.description
    assert "| Classes | 0 = cat, 1 = dog |" in card
    assert "| split | images | groups | cat | dog |" in card
    assert "| test | 10 | 10 | 5 | 5 |" in card and "| total | 30 | | 15 | 15 |" in card
    assert "| n | 10 | 10 | 10 |" in card and "| f1 | 0.9000 | 0.9000 | 0.9000 |" in card

    _point_at(root, runs["better"][0])
    assert run_stage(monkeypatch, root) == 0
    assert champion_version(client, "cli") == "2"

    promoted = imgclf(root, "promote", "--version", "1")
    assert promoted.exit_code == 0 and "champion v2 -> v1" in promoted.stdout
    assert champion_version(client, "cli") == "1"
    assert imgclf(root, "rollback").exit_code == 0  # undoes the promotion
    assert champion_version(client, "cli") == "2"
    assert imgclf(root, "rollback", "--reason", "bad").exit_code == 0
    assert champion_version(client, "cli") == "1"
    refused = imgclf(root, "rollback")  # nothing before v1
    assert refused.exit_code == 1 and "nothing to roll back to" in refused.stderr

    client.set_registered_model_alias("cli", "champion", "2")  # a person, in the MLflow UI
    assert imgclf(root, "rollback").exit_code == 0
    assert champion_version(client, "cli") == "1"

    history = imgclf(root, "history")
    assert history.exit_code == 0
    events = [json.loads(line) for line in history.stdout.splitlines()]
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("auto-promote", "1", None),
        ("auto-promote", "2", "1"),
        ("promote", "1", "2"),
        ("rollback", "2", "1"),
        ("rollback", "1", "2"),
        ("external", "2", "1"),
        ("rollback", "1", "2"),
    ]
    assert events[4]["reason"] == "bad" and events[0]["by"]
    np.testing.assert_allclose(_champion_outputs("cli"), runs["base"][1], rtol=1e-6)

    missing = imgclf(root, "promote", "--version", "9")
    assert missing.exit_code == 1 and missing.stderr == "Error: model 'cli' has no version 9\n"


@pytest.mark.parametrize(
    ("max_abs_diff", "flipped", "why"),
    [
        (3e-5, 0, "differs from Keras by 3.00e-05 (> export.tolerance 1e-05) on 200 photos"),
        (2e-6, 1, "changes 1 of 200 labels against Keras"),
    ],
)
def test_an_engine_that_disagrees_with_keras_is_not_registered(
    client,
    runs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    max_abs_diff: float,
    flipped: int,
    why: str,
) -> None:
    name = f"disagreeing-{flipped}"
    root = _project(tmp_path, runs["base"][0], name)
    _export_report(root, max_abs_diff, flipped)
    capsys.readouterr()
    assert run_stage(monkeypatch, root) == 1
    assert capsys.readouterr().err == f"register: error: not registered: the litert engine {why}\n"
    assert client.search_model_versions(f"name = '{name}'") == []
    assert not (root / "reports" / "register.json").exists()


@pytest.mark.parametrize(("float_accuracy", "registered"), [(0.904, True), (0.906, False)])
def test_a_reduced_precision_engine_is_gated_on_the_test_metric(
    client,
    runs,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    float_accuracy: float,
    registered: bool,
) -> None:
    # the int8 engine's test accuracy is _project's 0.9; the float model's is 0.4 or 0.6 point
    # better, against a max_metric_drop of 0.5 point
    name = f"int8-{registered}"
    root = _project(tmp_path, runs["base"][0], name)
    report = json.loads((root / "reports" / "export.json").read_text())
    report |= {"precision": "int8", "max_metric_drop": 0.005, "max_abs_diff": 3e-3}
    (root / "reports" / "export.json").write_text(json.dumps(report))
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    metrics["reduced_precision"] = {
        "engine": "litert", "precision": "int8", "float32_test": {"accuracy": float_accuracy}
    }  # fmt: skip
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert run_stage(monkeypatch, root) == (0 if registered else 1)
    assert len(client.search_model_versions(f"name = '{name}'")) == int(registered)
    if not registered:
        refusal = "int8 litert engine's test accuracy 0.9000 is 0.0060 worse"
        assert refusal in capsys.readouterr().err


def test_unreachable_server_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.mlflow_server import free_port

    root = _project(tmp_path, "0" * 32, "unreachable")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    assert run_stage(monkeypatch, root) == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith(
        f"register: error: cannot reach the MLflow tracking server at {dead}"
    )


def test_another_class_list_stays_challenger_until_a_person_promotes_it(
    client, runs, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _project(tmp_path / "a", runs["base"][0], "classes")
    assert run_stage(monkeypatch, first) == 0
    assert champion_version(client, "classes") == "1"

    # A better score on three classes: another question, so the champion stays.
    root = _project(tmp_path / "b", runs["better"][0], "classes", ("cat", "dog", "bird"))
    capsys.readouterr()
    assert run_stage(monkeypatch, root) == 0
    line = capsys.readouterr().out
    report = json.loads((root / "reports" / "register.json").read_text())
    assert (report["version"], report["decision"], report["rule"]) == (
        2,
        "challenger",
        "classes_differ",
    )
    assert report["classes"] == ["cat", "dog", "bird"]
    assert report["previous_champion"]["classes"] == ["cat", "dog"]
    assert line.startswith("register: classes v2 [challenger] challenger: champion v1 classifies")
    assert report["reason"] in line
    assert json.loads(client.get_model_version("classes", "2").tags["classes"]) == [
        "cat",
        "dog",
        "bird",
    ]
    assert champion_version(client, "classes") == "1"

    promoted = imgclf(root, "promote", "--version", "2", "--reason", "three classes now")
    assert promoted.exit_code == 0, promoted.stderr
    assert promoted.stdout.startswith("champion v1 -> v2 (classes differ from v1's")
    assert champion_version(client, "classes") == "2"


def test_a_champion_registered_before_class_tags_is_compared_on_its_metric(client, runs) -> None:
    params = RegisterParams(model_name="untagged-champion")
    old = register_run(client, runs["base"][0], params)  # no class list, as before the tag
    assert "classes" not in client.get_model_version("untagged-champion", "1").tags
    assert old["classes"] is None
    report = register_run(client, runs["better"][0], params, classes=["cat", "dog", "bird"])
    assert (report["decision"], report["rule"]) == ("promoted", "better")
    assert champion_version(client, "untagged-champion") == "2"
