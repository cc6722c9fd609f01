"""The data half of the DAG through real `dvc repro` in a throwaway copy of the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.io import read_json, read_tsv

SPLITS = ("train", "val", "test")


def _split_rows(repo: Path) -> dict[str, list[dict[str, str]]]:
    return {name: read_tsv(repo / "artifacts" / "split" / f"{name}.tsv") for name in SPLITS}


@pytest.fixture
def data_repo(repo_copy: Path, sample_data_dir: Path, set_params, run_dvc, ran) -> Path:
    """A repo copy whose pipeline has run up to split on 40 photos per class."""
    set_params(repo_copy, {"download.source": str(sample_data_dir), "download.max_per_class": 40})
    result = run_dvc(repo_copy, "repro", "split")
    assert ran(result.stdout) == {"download", "dedupe", "split"}, result.stdout
    return repo_copy


def test_repro_split_writes_leak_free_manifests(data_repo: Path) -> None:
    splits = _split_rows(data_repo)
    assert sum(len(rows) for rows in splits.values()) == 80
    for rows in splits.values():
        assert {row["label"] for row in rows} == {"cat", "dog"}
    groups = [{row["group"] for row in rows} for rows in splits.values()]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    report = read_json(data_repo / "reports" / "split.json")
    assert report, "split report is empty"
    assert (data_repo / "dvc.lock").is_file()


def test_second_repro_does_nothing(data_repo: Path, run_dvc, ran) -> None:
    result = run_dvc(data_repo, "repro", "split")
    assert ran(result.stdout) == set(), result.stdout
    assert "up to date" in run_dvc(data_repo, "status", "split").stdout


def test_split_param_reruns_split_alone(data_repo: Path, set_params, run_dvc, ran) -> None:
    before = _split_rows(data_repo)
    set_params(data_repo, {"split.seed": 7})
    result = run_dvc(data_repo, "repro", "split")
    assert ran(result.stdout) == {"split"}, result.stdout
    assert _split_rows(data_repo) != before


def test_dedupe_param_reruns_dedupe_and_split(data_repo: Path, set_params, run_dvc, ran) -> None:
    set_params(data_repo, {"dedupe.threshold": 2})
    executed = ran(run_dvc(data_repo, "repro", "split").stdout)
    # split reruns only if dedupe's output changed: DVC compares content, not timestamps.
    assert "dedupe" in executed and executed <= {"dedupe", "split"}, executed
