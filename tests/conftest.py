"""Fixtures shared by the whole suite: the real sample photos and throwaway copies of the repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.helpers import unavailable

# Real servers on loopback, one per session: mlflow, moto S3, PostgreSQL, a champion service, the
# service under test.
pytest_plugins = [
    "tests.support.mlflow_server",
    "tests.support.s3_server",
    "tests.support.postgres_server",
    "tests.support.champion_service",
    "tests.support.service",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TEST_KINDS = ("unit", "data", "model", "integration", "infra")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its kind, the folder it lives in, so `pytest -m "unit or data"` works."""
    tests_dir = Path(__file__).parent
    for item in items:
        kind = item.path.relative_to(tests_dir).parts[0]
        if kind not in TEST_KINDS:
            raise pytest.UsageError(
                f"{item.nodeid}: tests live in one of tests/{{{','.join(TEST_KINDS)}}}/"
            )
        item.add_marker(kind)


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    """The real Dogs-vs-Cats photos (../shared/data/dogs-vs-cats, or $IMGCLF_SAMPLE_DATA).

    Missing photos skip the test on a laptop but fail it in CI, where they must be present.
    """
    default = REPO_ROOT.parent / "shared" / "data" / "dogs-vs-cats"
    path = Path(os.environ.get("IMGCLF_SAMPLE_DATA", default))
    if not (path / "cat").is_dir():
        unavailable(f"sample photos not found at {path} (set IMGCLF_SAMPLE_DATA)")
    return path


def _project_files() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a clean clone plus the change holds."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [name for name in listing.split("\0") if name and (REPO_ROOT / name).is_file()]


def copy_project(dest: Path) -> Path:
    """A fresh git repository at `dest` holding the project's files, as a clean clone would."""
    for name in _project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, target)
    (dest / "data").mkdir(exist_ok=True)  # data.dvc's folder; empty until a user adds images
    for command in (
        ["init", "-q"],
        # An identity of its own: `git commit` and `dvc exp run` must work on any CI machine.
        ["config", "user.name", "imgclf tests"],
        ["config", "user.email", "tests@imgclf.invalid"],
        ["add", "-A"],
        ["commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *command], cwd=dest, check=True)
    return dest


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "repo")


@pytest.fixture(scope="session")
def set_params() -> Callable[[Path, dict[str, object]], None]:
    """Edit a repo copy's params.yaml: {"download.source": "...", "split.seed": 7}."""

    def update(repo: Path, overrides: dict[str, object]) -> None:
        params_file = repo / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            params[section][key] = value
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    return update


@pytest.fixture(scope="session")
def run_dvc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the venv's `dvc` in a repo with the venv first on PATH (stages call `python`)."""

    def run(
        repo: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **(env or {}), "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
        result = subprocess.run(
            [str(VENV_BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    return run


def stages_ran(dvc_output: str) -> set[str]:
    """Names of the stages `dvc repro`/`dvc exp run` executed, from its console output."""
    prefix = "Running stage '"
    return {line.split("'")[1] for line in dvc_output.splitlines() if line.startswith(prefix)}


@pytest.fixture(scope="session")
def ran() -> Callable[[str], set[str]]:
    return stages_ran
