"""Drift report (imgclf/monitoring/drift/, `imgclf monitor`): generated prediction
logs, written through SQLAlchemy into the real `predictions` table, against a generated test
split: two classes (predictions.tsv as today's release writes it) and three (as evaluate writes
it for K classes). The PSI arithmetic alone: tests/unit/test_drift_checks.py."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from PIL import Image

from imgclf.cli import cli
from imgclf.config import PARAMS_FILE, MonitorParams, Paths
from imgclf.evaluation.report import prediction_columns
from imgclf.io import read_tsv, write_tsv
from imgclf.model.decision import decide
from imgclf.monitoring.drift.inputs import DriftInputError, load_live, load_reference, window
from imgclf.monitoring.drift.report import VERDICT_COLOURS
from imgclf.monitoring.schema import predictions
from tests.support.helpers import imgclf_command

CLASSES = ["cat", "dog"]
THREE = ["bird", "cat", "dog"]
NOW = dt.datetime(2025, 6, 8, 12, 0, tzinfo=dt.UTC)
NOW_OPTION = ["--now", NOW.strftime("%Y-%m-%dT%H:%M:%S")]  # naive: the command reads UTC
PARAMS = MonitorParams()  # equal to params.yaml's `monitor:` (test_config), which the CLI reads
REFERENCE_ROWS, REFERENCE_WRONG = 400, 20  # test accuracy exactly 95 %


def draw(
    n: int, seed: int, *, dog: float = 0.5, low_confidence: float = 0.0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, widths, heights of `n` images: `dog` share of dog predictions, mostly
    confident (a `low_confidence` share in [0.5, 0.75]), sizes around 400 x 350 px x `scale`."""
    rng = np.random.default_rng(seed)
    is_dog = rng.random(n) < dog
    confident = 1.0 - rng.beta(1, 60, n)
    confidence = np.where(rng.random(n) < low_confidence, rng.uniform(0.5, 0.75, n), confident)
    probability = np.where(is_dog, confidence, 1.0 - confidence)
    return probability, *sizes(rng, n, scale)


def sizes(rng: np.random.Generator, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    width = np.round(rng.uniform(300, 500, n) * scale).astype(int)
    height = np.round(rng.uniform(250, 450, n) * scale).astype(int)
    return width, height


def draw_three(
    n: int,
    seed: int,
    *,
    shares: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    low_confidence: float = 0.0,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 3) class probabilities, widths, heights: the top class drawn with `shares`, mostly
    confident (a `low_confidence` share at 0.35-0.5), the rest split between the other two."""
    rng = np.random.default_rng(seed)
    top = rng.choice(3, n, p=shares)
    confident = 1.0 - rng.beta(1, 60, n)
    confidence = np.where(rng.random(n) < low_confidence, rng.uniform(0.35, 0.5, n), confident)
    rest = (1 - confidence) * rng.uniform(0.3, 0.7, n)  # one other class's share; below the top
    probabilities = np.empty((n, 3))
    for i, (winner, p, q) in enumerate(zip(top, confidence, rest, strict=True)):
        first, second = (c for c in range(3) if c != winner)
        probabilities[i, [winner, first, second]] = p, q, 1 - p - q
    return probabilities, *sizes(rng, n, scale)


def predicted(probability: float) -> str:
    return CLASSES[int(probability >= 0.5)]


def other(label: str) -> str:
    return CLASSES[1 - CLASSES.index(label)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-image test split's reference, predictions.tsv as today's release writes it
    (`probability` = P(dog) only); test accuracy 95 %."""
    root = tmp_path_factory.mktemp("project")
    probability, width, height = draw(REFERENCE_ROWS, seed=0)
    labels = [predicted(p) for p in probability]
    truth = [other(label) for label in labels[:REFERENCE_WRONG]] + labels[REFERENCE_WRONG:]
    evaluated = [{"probability": p} for p in probability]
    columns = ("split", "path", "label", "probability")
    return write_project(root, evaluated, columns, truth, width, height)


def write_project(
    root: Path,
    evaluated: list[dict[str, object]],
    columns: Sequence[str],
    truth: Sequence[str],
    width: np.ndarray,
    height: np.ndarray,
) -> Path:
    """A project folder (its params.yaml this checkout's) with the three reference files of a
    test split: test.tsv (`truth`), the download manifest (sizes) and predictions.tsv
    (`columns`; the probability cells of each image in `evaluated`), plus other splits' rows,
    which must be ignored: a copy of the first image's answer for 300 images 10x larger."""
    shutil.copy(PARAMS_FILE, root / "params.yaml")
    paths = Paths(root)
    test, manifest, predictions_tsv = [], [], []
    for i, (cells, label, w, h) in enumerate(zip(evaluated, truth, width, height, strict=True)):
        path = f"artifacts/download/images/{i}.jpg"
        test.append({"path": path, "label": label, "group": i, "sha256": f"{i:064x}"})
        manifest.append({"path": path, "label": label, "width": w, "height": h, "bytes": 1})
        predictions_tsv.append({"split": "test", "path": path, "label": label, **cells})
    for i in range(300):
        path = f"train/{i}.jpg"
        predictions_tsv.append({**predictions_tsv[0], "split": "train", "path": path})
        manifest.append({"path": path, "label": truth[0], "width": 5000, "height": 4000})
    paths.split_dir.mkdir(parents=True)
    paths.download_dir.mkdir(parents=True)
    paths.evaluate_dir.mkdir(parents=True)
    write_tsv(paths.split_manifest("test"), test, ("path", "label", "group", "sha256"))
    write_tsv(paths.download_manifest, manifest, ("path", "label", "sha256", "width", "height"))
    write_tsv(paths.predictions, predictions_tsv, columns)
    return root


def evaluated_cells(
    probabilities: np.ndarray, classes: Sequence[str], threshold: float = 0.5
) -> list[dict[str, object]]:
    """Evaluate's predictions.tsv cells for K classes: predicted, confidence, p_<class> (and
    `probability`, P(second class), for two)."""
    cells = []
    for row in probabilities:
        decision = decide(row, classes, threshold)
        cells.append(
            {
                **({"probability": row[1]} if len(classes) == 2 else {}),
                "predicted": decision.label,
                "confidence": decision.confidence,
                **{f"p_{c}": p for c, p in zip(classes, row, strict=True)},
            }
        )
    return cells


@pytest.fixture(scope="module")
def project_three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-class project's reference, predictions.tsv as evaluate writes it for K classes
    (params.yaml still lists two: the classes are the evaluation's); test accuracy 95 %."""
    probabilities, width, height = draw_three(REFERENCE_ROWS, seed=0)
    labels = [THREE[i] for i in probabilities.argmax(axis=1)]
    wrong = [THREE[(THREE.index(label) + 1) % 3] for label in labels[:REFERENCE_WRONG]]
    evaluated = evaluated_cells(probabilities, THREE)
    root = tmp_path_factory.mktemp("project_three")
    truth = wrong + labels[REFERENCE_WRONG:]
    return write_project(root, evaluated, prediction_columns(THREE), truth, width, height)


def log_rows(
    probability: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    *,
    newest: float = 0.0,
    oldest: float = 7.0,
    labelled: int = 0,
    correct: int = 0,
) -> list[dict[str, object]]:
    """Rows for the `predictions` table, spread evenly between `oldest` and `newest` days
    before NOW; the first `labelled` rows get a true label, the first `correct` of them right."""
    n = len(probability)
    rows = []
    for i, (p, w, h) in enumerate(zip(probability, width, height, strict=True)):
        label = predicted(p)
        truth = None if i >= labelled else label if i < correct else other(label)
        rows.append(
            {
                "timestamp": NOW - dt.timedelta(days=newest + (oldest - newest) * (i + 0.5) / n),
                "request_id": f"r{i}",
                "item": 0,
                "sha256": f"{i:064x}",
                "width": int(w),
                "height": int(h),
                "label": label,
                "probability": float(p),
                "model_version": "3",
                "latency_ms": 20.0 + i % 50,
                "true_label": truth,
                "feedback_at": NOW if truth else None,
            }
        )
    return rows


def log_rows_three(
    probabilities: np.ndarray, width: np.ndarray, height: np.ndarray, **window: float
) -> list[dict[str, object]]:
    """Rows as the service logs a three-class answer: `label` the top class, `probability` and
    `confidence` its probability, `probabilities` the JSON of all three."""
    rows = log_rows(probabilities[:, 1], width, height, **window)
    for row, p in zip(rows, probabilities, strict=True):
        top = int(p.argmax())
        row.update(
            label=THREE[top],
            probability=float(p[top]),
            confidence=float(p[top]),
            probabilities=json.dumps(dict(zip(THREE, p.tolist(), strict=True))),
        )
    return rows


def write_log(path: Path, *batches: list[dict[str, object]]) -> str:
    """A SQLite prediction log holding `batches` of rows; returns its URL."""
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    predictions.create(engine)
    with engine.begin() as conn:
        for rows in batches:
            conn.execute(sa.insert(predictions), rows)
    engine.dispose()
    return url


def monitor(project: Path, *args: str) -> Result:
    """`imgclf --params PROJECT/params.yaml monitor ARGS` in-process."""
    params = project / "params.yaml"
    args = ["--params", str(params), "monitor", *NOW_OPTION, *args]
    return CliRunner().invoke(cli, args, catch_exceptions=False)  # a crash is not exit status 1


def run(
    project: Path, url: str, out: Path, *extra: str
) -> tuple[int, dict[str, object], dict[str, str], str]:
    """`imgclf monitor` on `url`: exit code, drift.json, {check: verdict}, its stdout."""
    result = monitor(project, "--db", url, "--out", str(out), *extra)
    report = json.loads((out / "drift.json").read_text())
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    return result.exit_code, report, verdicts, result.stdout


SHIFTS = {
    "class mix": {"dog": 0.85},
    "confidence": {"low_confidence": 0.3},
    "image size": {"scale": 2.5},
}


def test_an_unshifted_log_flags_nothing(project: Path, tmp_path: Path) -> None:
    """(a) A log drawn from the reference's own distribution: every check ok, exit 0."""
    url = write_log(tmp_path / "log.db", log_rows(*draw(1000, seed=1), labelled=200, correct=190))
    code, report, verdicts, _ = run(project, url, tmp_path / "out")
    assert code == 0
    assert report["status"] == "ok" and report["flagged"] == []
    assert verdicts == {
        "class mix": "ok",
        "confidence": "ok",
        "image size": "ok",
        "accuracy": "ok",
        "volume": "info",
        "latency": "info",
    }
    assert report["live"] == {"rows": 1000, "labelled": 200, "model_versions": {"3": 1000}}
    assert report["reference"]["rows"] == REFERENCE_ROWS  # the train rows were left out
    volume = next(c for c in report["checks"] if c["name"] == "volume")["statistics"]
    assert len(volume["per_day"]) == 8 and sum(volume["per_day"].values()) == 1000


@pytest.mark.parametrize("check", list(SHIFTS))
def test_a_shifted_distribution_is_flagged(check: str, project: Path, tmp_path: Path) -> None:
    """(b) 85 % dogs vs 50/50, (c) 30 % low-confidence predictions, (d) 2.5x larger images:
    that check, and only it, is flagged; exit 1."""
    url = write_log(tmp_path / "log.db", log_rows(*draw(1000, seed=2, **SHIFTS[check])))
    code, report, verdicts, _ = run(project, url, tmp_path / "out")
    assert code == 1
    assert report["status"] == "drift" and report["flagged"] == [check]
    assert verdicts["accuracy"] == "insufficient data"  # no feedback: no verdict, no alarm
    statistics = next(c for c in report["checks"] if c["name"] == check)["statistics"]
    assert statistics["psi"] >= PARAMS.psi_threshold and statistics["p_value"] < PARAMS.p_value


@pytest.mark.parametrize(("points_below", "verdict"), [(3, "drift"), (1, "ok")])
def test_live_accuracy_below_the_test_accuracy(
    points_below: int, verdict: str, project: Path, tmp_path: Path
) -> None:
    """(e) 300 labelled predictions, 3 points below the test's 95 % -> flagged; 1 point -> not."""
    correct = 300 * (95 - points_below) // 100
    rows = log_rows(*draw(1000, seed=3), labelled=300, correct=correct)
    code, report, verdicts, _ = run(project, write_log(tmp_path / "log.db", rows), tmp_path / "out")
    assert verdicts["accuracy"] == verdict
    assert code == (1 if verdict == "drift" else 0)
    accuracy = next(c for c in report["checks"] if c["name"] == "accuracy")["statistics"]
    assert accuracy["n"] == 300 and accuracy["reference_accuracy"] == pytest.approx(0.95)
    assert accuracy["drop"] == pytest.approx(points_below / 100)


def test_too_few_rows_is_insufficient_data_not_an_alarm(project: Path, tmp_path: Path) -> None:
    """(f) 60 predictions, all of them shifted and labelled wrong: no verdict, exit 0."""
    rows = log_rows(*draw(60, seed=4, dog=0.95, low_confidence=0.5, scale=3), labelled=60)
    url = write_log(tmp_path / "log.db", rows)
    code, report, verdicts, out = run(project, url, tmp_path / "out")
    assert code == 0
    assert report["status"] == "insufficient data" and report["flagged"] == []
    for check in ("class mix", "confidence", "image size", "accuracy"):
        assert verdicts[check] == "insufficient data", check
    assert "60 live predictions < min_rows 200" in out
    assert "insufficient data: fewer than 200 live predictions" in out


def test_only_the_window_counts(project: Path, tmp_path: Path) -> None:
    """(g) Shifted rows 8-30 days old and after --now are outside a 7-day window: no flag;
    a 30-day window takes the old ones in and flags them."""
    url = write_log(
        tmp_path / "log.db",
        log_rows(*draw(800, seed=5)),
        log_rows(*draw(1500, seed=6, dog=0.95, scale=3), newest=8, oldest=30, labelled=300),
        log_rows(*draw(500, seed=7, dog=0.95, scale=3), newest=-2, oldest=0),  # the future
    )
    code, report, _, _ = run(project, url, tmp_path / "week")
    assert code == 0 and report["live"]["rows"] == 800 and report["status"] == "ok"
    assert report["window"]["end"] == NOW.isoformat()
    code, report, _, _ = run(project, url, tmp_path / "month", "--days", "30")
    assert code == 1 and report["live"]["rows"] == 2300
    assert {"class mix", "image size", "accuracy"} <= set(report["flagged"])


def test_one_model_version_at_a_time(project: Path, tmp_path: Path) -> None:
    """The reference is one model's evaluation: a newer version's shifted answers flag the
    mixed window (with a warning) but not the window of the version the reference evaluated."""
    newer = [
        {**row, "model_version": "4", "request_id": f"v4-{row['request_id']}"}
        for row in log_rows(*draw(1000, seed=8, dog=0.95))
    ]
    url = write_log(tmp_path / "log.db", log_rows(*draw(1000, seed=9)), newer)
    code, report, _, out = run(project, url, tmp_path / "mixed")
    assert code == 1 and report["live"]["model_versions"] == {"3": 1000, "4": 1000}
    assert "several model versions answered: 3 (1000), 4 (1000)" in out
    code, report, _, out = run(project, url, tmp_path / "v3", "--model-version", "3")
    assert code == 0 and report["live"]["model_versions"] == {"3": 1000}
    assert "model version 3 (1000)" in out


def test_bad_input_exits_2_with_one_clear_line(project: Path, tmp_path: Path) -> None:
    """(h) No database file (and none created), no table, no reference: exit 2, one line."""
    missing = tmp_path / "missing.db"
    out = ["--out", str(tmp_path / "out")]
    result = monitor(project, "--db", f"sqlite:///{missing}", *out)
    assert result.exit_code == 2
    assert result.stderr == f"Error: no prediction log at sqlite:///{missing} (file not found)\n"
    assert not missing.exists()

    empty = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{empty}").connect().close()  # a database without the table
    result = monitor(project, "--db", f"sqlite:///{empty}", *out)
    assert result.exit_code == 2 and "no table 'predictions'" in result.stderr

    url = write_log(tmp_path / "log.db", log_rows(*draw(300, seed=8)))
    no_project = tmp_path / "no-project"
    no_project.mkdir()
    shutil.copy(project / "params.yaml", no_project)
    result = monitor(no_project, "--db", url, *out)
    assert result.exit_code == 2
    assert (
        result.stderr.startswith("Error: no reference:") and "test.tsv not found" in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_the_default_log_is_the_services(project: Path, tmp_path: Path) -> None:
    """Without --db, the installed command reads the service's log, $IMGCLF_PREDICTION_DB_URL (a
    file name: in the current folder); a missing one is the same one line, exit status 2."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_"))}
    command = [imgclf_command(), "--params", str(project / "params.yaml"), "monitor"]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**environ, "IMGCLF_PREDICTION_DB_URL": "none.db"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"Error: no prediction log at sqlite:///{tmp_path / 'none.db'} (file not found)"
    )


def test_report_files(project: Path, tmp_path: Path) -> None:
    """(i) report.html (self-contained, one coloured row per check), drift.png, drift.json."""
    url = write_log(tmp_path / "log.db", log_rows(*draw(500, seed=9, dog=0.85), labelled=150))
    out = tmp_path / "out"
    code, report, _, _ = run(project, url, out)
    assert code == 1
    with Image.open(out / "drift.png") as image:
        image.verify()
    with Image.open(out / "drift.png") as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    page = (out / "report.html").read_text()
    assert page.count('<img alt="') == 1 and 'src="data:image/png;base64,' in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    for check in report["checks"]:
        assert f"<td>{check['name']}</td>" in page
    assert page.count(f'background:{VERDICT_COLOURS["drift"]}">drift</td>') == 2
    assert len(report["checks"]) == 6 and set(report["flagged"]) == {"class mix", "accuracy"}


def test_a_log_from_before_feedback_columns_is_read(tmp_path: Path) -> None:
    """An older release's log has no true_label / feedback_at: read as unlabelled."""
    old = sa.Table(
        "predictions",
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in predictions.columns
            if c.name not in ("true_label", "feedback_at")
        ),
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old.create(engine)
    rows = log_rows(*draw(10, seed=10))
    with engine.begin() as conn:
        conn.execute(sa.insert(old), [{k: v for k, v in r.items() if k in old.c} for r in rows])
    engine.dispose()
    live = load_live(f"sqlite:///{tmp_path / 'old.db'}", *window(NOW, 7), threshold=0.5)
    assert len(live) == 10 and not live.labelled.any() and live.accuracy() is None
    assert all(t.tzinfo == dt.UTC for t in live.timestamp)


def reference(project: Path, threshold: float, classes: Sequence[str] = CLASSES):
    paths = Paths(project)
    return load_reference(
        paths.split_manifest("test"), paths.download_manifest, paths.predictions, classes, threshold
    )


@pytest.mark.parametrize("threshold", [0.5, 0.99])
def test_the_reference_is_labelled_by_the_decision_rule(project: Path, threshold: float) -> None:
    """The test split's labels and confidences are the service's: imgclf/model/decision.py."""
    test, classes = reference(project, threshold)
    assert classes == CLASSES  # a file from before class lists: the params' two
    evaluated = [r for r in read_tsv(Paths(project).predictions) if r["split"] == "test"]
    decisions = [decide([1 - p, p], CLASSES, threshold) for p in probabilities(evaluated)]
    assert test.label.tolist() == [d.label for d in decisions]
    np.testing.assert_allclose(test.confidence, [d.confidence for d in decisions])
    if threshold == 0.99:  # some dogs by P >= 0.5 are cats by this rule, with confidence < 0.5
        assert (test.confidence < 0.5).any()


def probabilities(rows: list[dict[str, str]], column: str = "probability") -> list[float]:
    return [float(r[column]) for r in rows]


@pytest.mark.parametrize("threshold", [0.5, 0.99])
def test_evaluates_k_class_file_reads_as_todays_for_two_classes(
    project: Path, tmp_path: Path, threshold: float
) -> None:
    """The same two-class evaluation written with p_<class> columns (and other class names, to
    show they come from the file): the same labels and confidences."""
    rows = [r for r in read_tsv(Paths(project).predictions) if r["split"] == "test"]
    p = np.array(probabilities(rows))
    evaluated = evaluated_cells(np.stack([1 - p, p], axis=1), ["defect", "ok"], threshold)
    columns = prediction_columns(["defect", "ok"])
    width, height = np.full(len(rows), 400), np.full(len(rows), 300)
    truth = [r["label"] for r in rows]
    k_class = write_project(tmp_path, evaluated, columns, truth, width, height)
    (old, _), (new, classes) = reference(project, threshold), reference(k_class, threshold)
    assert classes == ["defect", "ok"]
    assert new.label.tolist() == [{"cat": "defect", "dog": "ok"}[c] for c in old.label]
    np.testing.assert_array_equal(new.confidence, old.confidence)


def test_a_file_from_before_class_lists_needs_two_listed_classes(project: Path) -> None:
    with pytest.raises(DriftInputError, match="two-class probabilities but there are 3 classes"):
        reference(project, 0.5, THREE)
    with pytest.raises(DriftInputError, match=r"predictions\.tsv names no classes"):
        reference(project, 0.5, None)  # download.classes: auto


def test_logged_confidence_is_read_and_older_rows_get_the_binary_rule(tmp_path: Path) -> None:
    """A row logged before the service logged `confidence` (NULL) has it from P(second class) by
    the binary rule; a logged one is read as it is."""
    rows = log_rows(np.array([0.6, 0.2, 0.9]), np.full(3, 400), np.full(3, 300))  # newest first
    # Not derivable from `probability`: read, not recomputed.
    for row, confidence in zip(rows, [0.123, None, None], strict=True):
        row["confidence"] = confidence
    url = write_log(tmp_path / "log.db", rows)
    live = load_live(url, *window(NOW, 7), threshold=0.7)
    np.testing.assert_allclose(live.confidence, [0.9, 0.8, 0.123])  # oldest first


SHIFTS_THREE = {
    "class mix": {"shares": (0.6, 0.3, 0.1)},
    "confidence": {"low_confidence": 0.3},
    "image size": {"scale": 2.5},
}


def test_three_classes_unshifted_flag_nothing(project_three: Path, tmp_path: Path) -> None:
    url = write_log(tmp_path / "log.db", log_rows_three(*draw_three(1000, seed=1)))
    out = tmp_path / "out"
    code, report, verdicts, stdout = run(project_three, url, out)
    assert code == 0 and report["status"] == "ok", stdout
    assert {verdicts[c] for c in ("class mix", "confidence", "image size")} == {"ok"}
    mix = next(c for c in report["checks"] if c["name"] == "class mix")["statistics"]
    assert list(mix["live_shares"]) == THREE and mix["never_predicted"] == []
    assert "warning" not in stdout
    assert "10 equal-width bins of [0.333, 1] for confidence" in (out / "report.html").read_text()


@pytest.mark.parametrize("check", list(SHIFTS_THREE))
def test_three_classes_shifted_are_flagged(check: str, project_three: Path, tmp_path: Path) -> None:
    """60/30/10 vs a third each; 30 % of answers at confidence 0.35-0.5 (below two classes'
    0.5 floor); 2.5x larger images: that check, and only it, is flagged."""
    rows = log_rows_three(*draw_three(1000, seed=2, **SHIFTS_THREE[check]))
    code, report, _, stdout = run(project_three, write_log(tmp_path / "log.db", rows), tmp_path)
    assert code == 1 and report["flagged"] == [check], stdout


def test_a_class_never_predicted_is_called_out(project_three: Path, tmp_path: Path) -> None:
    rows = log_rows_three(*draw_three(1000, seed=3, shares=(0.5, 0.0, 0.5)))
    code, report, _, stdout = run(project_three, write_log(tmp_path / "log.db", rows), tmp_path)
    assert code == 1 and report["flagged"] == ["class mix"]
    assert "  warning: never predicted in the window: cat\n" in stdout
    mix = next(c for c in report["checks"] if c["name"] == "class mix")["statistics"]
    assert mix["never_predicted"] == ["cat"] and mix["live_shares"]["cat"] == 0
    assert "never predicted in the window: cat" in (tmp_path / "report.html").read_text()
