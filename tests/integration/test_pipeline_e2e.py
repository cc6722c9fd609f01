"""The whole DAG on a few real photos through `dvc repro`; its outputs pushed to an S3 remote (a
real moto server) and pulled into a fresh clone; then a one-line experiment."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from imgclf.io import read_json
from tests.conftest import copy_project, stages_ran
from tests.support.helpers import free_port

# The DAG's mechanics at the least cost: a small CNN trained end to end (with the default
# temperature and flip TTA inside the saved model) exports in half the time of a pretrained
# backbone, and on 32 photos Keras computes calibration features faster than exporting the
# backbone to LiteRT for them (~15 s per train). The pretrained backbone, its linear head and the
# LiteRT feature engine go through the stages in test_digits_pipeline.py.
TINY = {
    "download.max_per_class": 16,
    "train.arch": "small_cnn",
    "train.image_size": 96,
    "train.feature_engine": "keras",
    "train.epochs": 3,
    "train.batch_size": 8,
    "evaluate.misclassified_grid": 4,
}


def _downstream_of_train(repo: Path) -> set[str]:
    """train and every stage declared after it (evaluate, register, ...)."""
    names = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    return set(names[names.index("train") :])


@pytest.fixture(scope="module")
def trained_repo(
    tmp_path_factory: pytest.TempPathFactory, sample_data_dir: Path, set_params, run_dvc, ran
) -> Path:
    """One tiny `dvc repro` of the whole DAG, shared by the tests below (in file order)."""
    repo = copy_project(tmp_path_factory.mktemp("e2e") / "repo")
    set_params(repo, {"download.source": str(sample_data_dir), **TINY})
    result = run_dvc(repo, "repro")
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran(result.stdout) == stages, result.stdout
    return repo


def test_repro_produces_metrics_plots_and_one_mlflow_run(trained_repo: Path, run_dvc) -> None:
    metrics = read_json(trained_repo / "reports" / "metrics.json")
    for split in ("train", "val", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
        assert {"precision", "recall", "f1", "roc_auc", "log_loss", "ece"} <= metrics[split].keys()
    shown = json.loads(run_dvc(trained_repo, "metrics", "show", "--json").stdout)
    assert "test" in json.dumps(shown)
    assert (trained_repo / "artifacts" / "train" / "model.keras").is_file()
    for plot in ("test_confusion.csv", "roc.csv", "precision_recall.csv", "misclassified.png"):
        assert (trained_repo / "artifacts" / "evaluate" / plot).is_file(), plot

    client = MlflowClient(tracking_uri=f"sqlite:///{trained_repo / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "imgclf"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["train.image_size"] == "96"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert {"git_commit", "data_version"} <= run.data.tags.keys()
    history = _csv_rows(trained_repo / "artifacts" / "train" / "history.csv")
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == len(history)
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert "model/MLmodel" in logged


def _stages_with_changed_dep(repo: Path, run_dvc, dep: str) -> set[str]:
    """Stages whose `dvc status` names `dep` among their changed deps."""
    status = json.loads(run_dvc(repo, "status", "--json").stdout)
    return {
        stage
        for stage, changes in status.items()
        for change in changes
        if isinstance(change, dict) and dep in change.get("changed deps", {})
    }


def test_editing_a_module_train_runs_makes_train_export_and_evaluate_stale(
    trained_repo: Path, run_dvc
) -> None:
    module = "imgclf/model/inference.py"
    source = trained_repo / module
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"# an edit\n")
        stale = _stages_with_changed_dep(trained_repo, run_dvc, module)
        assert stale == {"train", "export", "evaluate"}
    finally:
        source.write_bytes(original)
    assert _stages_with_changed_dep(trained_repo, run_dvc, module) == set()


def _commit(repo: Path, message: str) -> None:
    for args in (["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(["git", *args], cwd=repo, check=True)


def _use_bucket(repo: Path, run_dvc, bucket: str, endpoint: str) -> None:
    """The committed remote `s3`, pointed at a test bucket in the git-ignored config.local, as
    a user of an S3-compatible store would."""
    run_dvc(repo, "remote", "modify", "--local", "s3", "url", f"s3://{bucket}/dvc")
    run_dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", endpoint)


def test_push_then_pull_into_a_fresh_clone_leaves_nothing_to_run(
    trained_repo: Path, run_dvc, s3_server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket("dvc-remote")
    _commit(trained_repo, "reference run")
    _use_bucket(trained_repo, run_dvc, bucket, s3_server.url)
    run_dvc(trained_repo, "push", env=s3_server.env())
    assert any(key.startswith("dvc/files/md5/") for key in s3_server.keys(bucket))

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(trained_repo), str(clone)], check=True)
    _use_bucket(clone, run_dvc, bucket, s3_server.url)
    run_dvc(clone, "pull", env=s3_server.env())
    pulled = clone / "artifacts" / "train" / "model.keras"
    assert pulled.read_bytes() == (trained_repo / "artifacts/train/model.keras").read_bytes()
    result = run_dvc(clone, "repro", env=s3_server.env())
    assert stages_ran(result.stdout) == set(), result.stdout


def test_an_unreachable_remote_fails_with_a_clear_error(
    trained_repo: Path, run_dvc, tmp_path: Path
) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(trained_repo), str(clone)], check=True)
    _use_bucket(clone, run_dvc, "nowhere", f"http://127.0.0.1:{free_port()}")
    offline = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    result = run_dvc(clone, "pull", check=False, env=offline)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "127.0.0.1" in message or "connect" in message.lower(), message
    assert not (clone / "artifacts" / "train" / "model.keras").exists()


def test_exp_run_with_a_train_param_reruns_train_and_after(
    trained_repo: Path, run_dvc, ran
) -> None:
    result = run_dvc(trained_repo, "exp", "run", "-S", "train.lr=1e-4")
    assert ran(result.stdout) == _downstream_of_train(trained_repo), result.stdout
    shown = json.loads(run_dvc(trained_repo, "exp", "show", "--json").stdout)
    assert "1e-4" in json.dumps(shown) or "0.0001" in json.dumps(shown)


def _csv_rows(csv_path: Path) -> list[str]:
    """Data lines of a small CSV (header excluded)."""
    return csv_path.read_text().strip().splitlines()[1:]
