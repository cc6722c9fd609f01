"""The ray engine on a real two-node Ray cluster on loopback (`ray start --head` + `ray start
--address`, one CPU each, started once for this module), driven as a user drives it: the DVC
stages' commands with `engine: ray` and `ray_address` in params.yaml, and `imgclf predict
--engine ray --address`. Its files equal the local engine's: manifests, quarantine, images,
dedupe groups, contact sheet and split byte for byte; predictions with probabilities within
1e-6, for two classes (the submission) and three (`path,label,confidence`, from an S3 prefix,
with Parquet). A worker killed mid-batch (a task's process, a model actor) is retried by Ray and
the output is still complete and equal.

60 shared photos plus a duplicate, a near duplicate, a label conflict, a PNG with alpha and a
file for every quarantine reason the engines share (unreadable included): small, so the
cluster's start (tens of seconds on two busy cores) dominates the module's time.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imgclf.config import PARAMS_FILE, Paths, load_params
from imgclf.data.dedupe import run_dedupe
from imgclf.data.ingest import run_download
from imgclf.data.split import run_split
from imgclf.io import read_json
from imgclf.model.batch_predict import run_predict
from tests.conftest import copy_project
from tests.support.helpers import REPO_ROOT, Registry, imgclf_command, mlflow_uris
from tests.support.ray_cluster import RayCluster
from tests.support.s3_server import MotoServer

PHOTOS_PER_CLASS = 30
THREE = ("bird", "cat", "dog")
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster(s3_server: MotoServer) -> Iterator[RayCluster]:
    """Head and one worker node; the nodes' environment holds the S3 endpoint and credentials,
    as a real cluster's nodes hold theirs (an instance role)."""
    cluster = RayCluster([1, 1], env=s3_server.env()).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def photos(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for label in ("cat", "dog"):
        (folder / label).mkdir()
        for i in range(1, PHOTOS_PER_CLASS + 1):
            shutil.copyfile(
                sample_data_dir / label / f"{label}.{i}.jpg", folder / label / f"{i}.jpg"
            )
    shutil.copyfile(folder / "cat" / "1.jpg", folder / "cat" / "copy.jpg")  # exact duplicate
    shutil.copyfile(folder / "cat" / "3.jpg", folder / "dog" / "conflict.jpg")  # label conflict
    with Image.open(folder / "dog" / "1.jpg") as image:
        image.resize((image.width // 2, image.height // 2)).save(folder / "dog" / "small.jpg")
        image.convert("RGBA").save(folder / "dog" / "alpha.png")  # re-encoded by the download
    good = (folder / "cat" / "2.jpg").read_bytes()
    (folder / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "cat" / "text.jpg").write_text("not a picture\n")
    (folder / "cat" / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (12, 12), "red").save(folder / "dog" / "tiny.png")
    (folder / "dog" / "dangling.jpg").symlink_to("missing.jpg")  # unreadable
    (folder / "notes.jpg").write_bytes(good)  # no class in its path: unlabelled
    return folder


def data_params(photos: Path, engine: str, address: str | None) -> dict[str, object]:
    """download + dedupe params for `engine` (ray: on the cluster at `address`)."""
    return {
        "download.source": str(photos),
        "download.engine": engine,
        "download.ray_address": address,
        "dedupe.engine": engine,
        "dedupe.ray_address": address,
    }


@pytest.fixture(scope="module")
def local_outputs(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's download -> dedupe -> split of the photos (the reference)."""
    root = tmp_path_factory.mktemp("local")
    params = load_params(PARAMS_FILE)
    paths = Paths(root)
    download = params.download.model_copy(update={"source": str(photos), "engine": "local"})
    run_download(paths, download, progress=False)
    run_dedupe(paths, params.dedupe.model_copy(update={"engine": "local"}), progress=False)
    run_split(paths, params.split)
    return root


def run_stages(repo: Path, *stages: str) -> None:
    """`python -m stages.<name>` in `repo`: what `dvc repro` runs for each stage."""
    for stage in stages:
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert result.returncode == 0, f"{stage}:\n{result.stdout}\n{result.stderr[-3000:]}"


def files_under(root: Path, *folders: str) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def reports_without_timing(root: Path) -> dict[str, dict]:
    return {
        name: {
            k: v for k, v in read_json(root / "reports" / f"{name}.json").items() if k != "seconds"
        }
        for name in ("download", "dedupe", "split")
    }


def assert_same_data_outputs(ray_root: Path, local_root: Path, *folders: str) -> None:
    ray_files, local_files = files_under(ray_root, *folders), files_under(local_root, *folders)
    assert sorted(ray_files) == sorted(local_files)
    different = [name for name in local_files if ray_files[name] != local_files[name]]
    assert not different, different


def test_download_dedupe_split_on_the_cluster_write_the_local_engines_files(
    cluster: RayCluster, photos: Path, local_outputs: Path, tmp_path: Path, set_params
) -> None:
    repo = copy_project(tmp_path / "repo")
    set_params(repo, data_params(photos, "ray", cluster.address))
    run_stages(repo, "download", "dedupe", "split")
    assert_same_data_outputs(
        repo, local_outputs, "artifacts/download", "artifacts/dedupe", "artifacts/split"
    )
    assert reports_without_timing(repo) == reports_without_timing(local_outputs)
    # The inputs were worth comparing: every kind of outcome happened.
    report = read_json(local_outputs / "reports" / "download.json")
    assert {k for k, n in report["quarantined"].items() if n} >= {
        "empty", "truncated", "not_an_image", "unreadable", "too_small", "unlabelled"
    }  # fmt: skip
    assert report["converted_files"] >= 1
    dedupe = read_json(local_outputs / "reports" / "dedupe.json")
    assert dedupe["exact_groups"] >= 1 and dedupe["near_groups"] >= 1
    assert dedupe["conflict_groups"] >= 1


class Killer:
    """Kills the first of the cluster's workers seen running `title` (SIGKILL, as the OOM
    killer or a lost node would), from a thread, while the run goes on."""

    def __init__(self, cluster: RayCluster, title: str) -> None:
        self.cluster, self.title = cluster, title
        self.killed: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Killer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _watch(self) -> None:
        while not self.done.is_set() and not self.killed:
            for process in self.cluster.running(self.title):
                process.kill()
                self.killed.append(process.pid)
                break
            time.sleep(0.005)


def test_a_decode_worker_killed_mid_batch_is_retried_and_nothing_is_lost_or_repeated(
    cluster: RayCluster, photos: Path, local_outputs: Path, tmp_path: Path, set_params
) -> None:
    repo = copy_project(tmp_path / "repo")
    set_params(repo, data_params(photos, "ray", cluster.address))
    with Killer(cluster, "MapBatches(_ingest_batch)") as killer:
        run_stages(repo, "download")
    assert len(killer.killed) == 1, "no decode task was seen running"
    assert_same_data_outputs(repo, local_outputs, "artifacts/download")


# ------------------------------------------------------------------------- batch prediction


@pytest.fixture(scope="module")
def registry(
    mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[int, tuple[str, ...]], str]]:
    """`promote(seed, classes)` -> the `models:/NAME@champion` URI of a tiny model made
    champion in the session's MLflow server, which the cluster's workers load it from."""
    registry = Registry(tmp_path_factory.mktemp("registry"), mlflow_server, image_size=32)
    with mlflow_uris(mlflow_server):

        def promote(seed: int, classes: tuple[str, ...]) -> str:
            registry.promote(seed, classes=classes)
            return f"models:/{registry.model_name}@champion"

        yield promote


def imgclf(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The installed `imgclf` command, running the code under test."""
    return subprocess.run(
        [imgclf_command(), *map(str, args)],
        env={**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        header, *rows = list(csv.reader(fh))
    return header, rows


def assert_same_predictions(ray_csv: Path, local_csv: Path, probability_columns: int) -> None:
    """Same header, rows and labels; the last `probability_columns` equal within 1e-6."""
    (ray_header, ray_rows), (local_header, local_rows) = read_csv(ray_csv), read_csv(local_csv)
    assert ray_header == local_header
    cut = len(local_header) - probability_columns
    assert [row[:cut] for row in ray_rows] == [row[:cut] for row in local_rows]
    np.testing.assert_allclose(
        np.array([row[cut:] for row in ray_rows], float),
        np.array([row[cut:] for row in local_rows], float),
        atol=1e-6,
    )


def skipped_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("skipped ")]


def predicted_here(photos: Path, out: Path, model: str) -> list[str]:
    """The local engine's CSV at `out` (in this process: the function `imgclf predict` calls),
    and the `skipped` lines the command prints for it."""
    summary = run_predict(Paths(out.parent), load_params(PARAMS_FILE), photos, out,
                          model=model, proba=True)  # fmt: skip
    return [f"skipped {path}: {reason}" for path, reason in summary.skipped]


def test_batch_prediction_with_an_actor_killed_mid_batch_writes_the_local_submission(
    cluster: RayCluster, photos: Path, registry, mlflow_server: str, tmp_path: Path
) -> None:
    model = registry(7, ("cat", "dog"))
    skipped = predicted_here(photos, tmp_path / "local.csv", model)
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    with Killer(cluster, "MapWorker(MapBatches(_Predictor)).submit") as killer:
        on_ray = imgclf(
            "predict", photos, "--out", tmp_path / "ray.csv", "--model", model, "--proba",
            "--engine", "ray", "--address", cluster.address, "--batch-size", "16", env=env,
        )  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr
    assert len(killer.killed) == 1, "no model actor was seen predicting"
    assert_same_predictions(tmp_path / "ray.csv", tmp_path / "local.csv", probability_columns=1)
    assert skipped_lines(on_ray.stderr) == skipped
    assert "skipped dog/dangling.jpg: unreadable: No such file or directory" in skipped


def test_three_classes_from_an_s3_prefix_give_the_local_csv_and_parquet(
    cluster: RayCluster,
    photos: Path,
    registry,
    mlflow_server: str,
    s3_server: MotoServer,
    tmp_path: Path,
) -> None:
    model = registry(8, THREE)
    bucket = s3_server.bucket("predict")
    client = s3_server.client()
    for path in sorted(photos.rglob("*")):
        if path.is_file():  # S3 holds no dangling link
            client.upload_file(str(path), bucket, f"in/{path.relative_to(photos).as_posix()}")
    skipped = predicted_here(photos, tmp_path / "local.csv", model)
    env = {"MLFLOW_TRACKING_URI": mlflow_server, **s3_server.env()}
    on_ray = imgclf(
        "predict", f"s3://{bucket}/in", "--out", tmp_path / "ray.csv", "--model", model,
        "--proba", "--parquet", tmp_path / "ray.parquet",
        "--engine", "ray", "--address", cluster.address, env=env,
    )  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr
    assert_same_predictions(tmp_path / "ray.csv", tmp_path / "local.csv", probability_columns=3)
    header, rows = read_csv(tmp_path / "ray.csv")
    assert header == ["path", "label", "confidence", *THREE]
    assert skipped_lines(on_ray.stderr) == [line for line in skipped if "dangling" not in line]

    table = pq.read_table(tmp_path / "ray.parquet")
    assert table.column_names == ["path", "label", "confidence", *THREE]
    assert table.column("path").to_pylist() == [row[0] for row in rows]
    assert table.column("label").to_pylist() == [row[1] for row in rows]
    np.testing.assert_allclose(
        np.stack([table.column(c).to_numpy() for c in ("confidence", *THREE)], axis=1),
        np.array([row[2:] for row in rows], float),
        rtol=1e-8,  # the CSV prints 9 significant digits
    )


def test_the_local_engine_never_imports_ray() -> None:
    probe = (
        "import sys, imgclf.cli, imgclf.data.ingest, imgclf.data.dedupe; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
