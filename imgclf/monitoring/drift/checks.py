"""Drift report: the last days of the production prediction log against the test split.

The live side is the service's prediction log (`imgclf.monitoring.schema.predictions`), rows
with `start <= timestamp < end`. The reference is the test split as the pipeline saw it: test.tsv
(true labels) joined by path with the download manifest (image sizes) and evaluate's
predictions.tsv (P(class 1); predicted class = classes[1] when >= evaluate.threshold).

Checks (thresholds in params.yaml `monitor:`):
    class mix    predicted-class shares: PSI and a chi-square test of homogeneity
    confidence   max(p, 1 - p): PSI over `bins` equal-width bins of [0.5, 1] and a two-sample KS
    image size   megapixels: PSI over the test split's `bins`-quantiles and a two-sample KS
    accuracy     predictions whose true label came back (feedback) against the test accuracy
    volume       predictions per UTC day (information)
    latency      p50 / p95 of latency_ms (information)

A distribution is flagged "drift" only when the shift is both material (PSI >= psi_threshold) and
significant (p < p_value): big samples make tiny shifts significant, small samples make PSI noisy.
With fewer than `min_rows` live predictions (`min_labelled` labelled ones for accuracy) the
verdict is "insufficient data", never an alarm.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from imgclf.config import MonitorParams
from imgclf.io import read_tsv, redact, write_json
from imgclf.monitoring.schema import predictions

OK, DRIFT, INSUFFICIENT, INFO = "ok", "drift", "insufficient data", "info"
VERDICT_COLOURS = {OK: "#1a7f37", DRIFT: "#cf222e", INSUFFICIENT: "#6e7781", INFO: "#0969da"}


class DriftInputError(Exception):
    """A missing or unreadable input (database, table, reference file)."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """One side of the comparison, one entry per image. Live-only fields are empty for the
    reference; `true_label` holds None where no ground truth is known."""

    label: np.ndarray  # predicted class name (object)
    probability: np.ndarray  # P(class 1)
    width: np.ndarray
    height: np.ndarray
    true_label: np.ndarray  # object: str | None
    timestamp: tuple[dt.datetime, ...] = ()
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model_version: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.label)

    @property
    def confidence(self) -> np.ndarray:
        return np.maximum(self.probability, 1.0 - self.probability)

    @property
    def megapixels(self) -> np.ndarray:
        return self.width * self.height / 1e6

    @property
    def labelled(self) -> np.ndarray:
        """Boolean mask of the predictions with a true label."""
        return np.array([t is not None for t in self.true_label], dtype=bool)

    def accuracy(self) -> float | None:
        mask = self.labelled
        return float(np.mean(self.label[mask] == self.true_label[mask])) if mask.any() else None


def _predictions(
    label: Sequence[str],
    probability: Sequence[float],
    width: Sequence[int],
    height: Sequence[int],
    true_label: Sequence[str | None],
    **live: Any,
) -> Predictions:
    return Predictions(
        label=np.array(label, dtype=object),
        probability=np.asarray(probability, dtype=float),
        width=np.asarray(width, dtype=float),
        height=np.asarray(height, dtype=float),
        true_label=np.array(true_label, dtype=object),
        **live,
    )


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def window(now: dt.datetime, days: float) -> tuple[dt.datetime, dt.datetime]:
    """[now - days, now) in UTC; a naive `now` is taken as UTC."""
    end = (now if now.tzinfo else now.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    return end - dt.timedelta(days=days), end


def _engine(url: str) -> sa.Engine:
    """An engine for an existing database: a missing SQLite file is an error, never created."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DriftInputError(f"not a database URL: {url!r}") from exc
    database = parsed.database or ""
    is_file = parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if is_file and not database.startswith("file:") and not Path(database).is_file():
        raise DriftInputError(f"no prediction log at {redact(url)} (file not found)")
    try:
        return sa.create_engine(url)
    except Exception as exc:  # unknown dialect, missing driver
        raise DriftInputError(f"cannot open {redact(url)}: {exc}") from exc


LIVE_COLUMNS = (
    "timestamp",
    "label",
    "probability",
    "width",
    "height",
    "true_label",
    "latency_ms",
    "model_version",
)


def _utc(stamp: dt.datetime) -> dt.datetime:
    """SQLite keeps no time zone: a naive timestamp is the UTC the service wrote."""
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def load_live(
    url: str, start: dt.datetime, end: dt.datetime, model_version: str | None = None
) -> Predictions:
    """Logged predictions with start <= timestamp < end (aware datetimes), oldest first; only
    those of `model_version` when given.

    A log written by an older release may lack the nullable feedback columns: read as NULL."""
    engine = _engine(url)
    c = predictions.c
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            if not inspector.has_table(predictions.name):
                raise DriftInputError(f"no table {predictions.name!r} in {redact(url)}")
            present = {column["name"] for column in inspector.get_columns(predictions.name)}
            columns = [
                c[name] if name in present or not c[name].nullable else sa.null().label(name)
                for name in LIVE_COLUMNS
            ]
            query = (
                sa.select(*columns)
                .where(
                    c.timestamp >= start.astimezone(dt.UTC), c.timestamp < end.astimezone(dt.UTC)
                )
                .order_by(c.timestamp)
            )
            if model_version is not None:
                query = query.where(c.model_version == model_version)
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0]
        raise DriftInputError(f"cannot read {redact(url)}: {reason}") from exc
    finally:
        engine.dispose()
    return _predictions(
        [r.label for r in rows],
        [r.probability for r in rows],
        [r.width for r in rows],
        [r.height for r in rows],
        [r.true_label for r in rows],
        timestamp=tuple(_utc(r.timestamp) for r in rows),
        latency_ms=np.array([r.latency_ms for r in rows], dtype=float),
        model_version=tuple(r.model_version for r in rows),
    )


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DriftInputError(f"no reference: {path} not found (run `dvc repro evaluate`)")
    return read_tsv(path)


def load_reference(
    test_tsv: Path,
    manifest_tsv: Path,
    predictions_tsv: Path,
    classes: Sequence[str],
    threshold: float,
) -> Predictions:
    """The test split: true labels (test.tsv), sizes (download manifest), probabilities
    (evaluate's predictions.tsv, split == "test"), joined by path."""
    test = _read(test_tsv)
    sizes = {r["path"]: r for r in _read(manifest_tsv)}
    probabilities = {
        r["path"]: float(r["probability"]) for r in _read(predictions_tsv) if r["split"] == "test"
    }
    if not test:
        raise DriftInputError(f"no reference: {test_tsv} has no rows")
    for name, table in (("the download manifest", sizes), (predictions_tsv.name, probabilities)):
        missing = [r["path"] for r in test if r["path"] not in table]
        if missing:
            raise DriftInputError(
                f"reference out of date: {len(missing)} test images are not in {name} "
                f"(e.g. {missing[0]}; run `dvc repro`)"
            )
    p = [probabilities[r["path"]] for r in test]
    return _predictions(
        [classes[1] if x >= threshold else classes[0] for x in p],
        p,
        [int(sizes[r["path"]]["width"]) for r in test],
        [int(sizes[r["path"]]["height"]) for r in test],
        [r["label"] for r in test],
    )


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def psi(live_counts: Sequence[float], reference_counts: Sequence[float]) -> float:
    """Population stability index sum((a - e) * ln(a / e)) over bins of shares a (live) and
    e (reference); half a count is added to every bin so that empty bins stay finite."""
    a = np.asarray(live_counts, dtype=float) + 0.5
    e = np.asarray(reference_counts, dtype=float) + 0.5
    a, e = a / a.sum(), e / e.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Counts over len(inner_edges) + 1 bins: (-inf, e0), [e0, e1), ..., [e_last, inf)."""
    index = np.searchsorted(inner_edges, values, side="right")
    return np.bincount(index, minlength=len(inner_edges) + 1)


def confidence_edges(bins: int) -> np.ndarray:
    """Inner edges of `bins` equal-width bins over [0.5, 1]."""
    return np.linspace(0.5, 1.0, bins + 1)[1:-1]


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner edges at the reference's 1/bins quantiles (ties merged): bins of equal reference
    mass, so a PSI bin never starts empty on the reference side."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


@dataclass(frozen=True)
class Check:
    """One line of the report: what was compared, the numbers, the rule and the verdict."""

    name: str
    verdict: str
    value: str  # for people: the key numbers
    threshold: str  # for people: the rule that flags
    statistics: dict[str, Any]
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict,
            "value": self.value,
            "threshold": self.threshold,
            "note": self.note,
            "statistics": {k: _finite(v) for k, v in self.statistics.items()},
        }


def _finite(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def _shift_rule(params: MonitorParams) -> str:
    return f"PSI ≥ {params.psi_threshold:g} and p < {params.p_value:g}"


def _shift_check(
    name: str,
    n_live: int,
    value: str,
    psi_value: float,
    p_value: float,
    params: MonitorParams,
    **extra: Any,
) -> Check:
    """Verdict of a distribution comparison: drift needs a material AND significant shift."""
    statistics = {"n": n_live, "psi": psi_value, "p_value": p_value, **extra}
    if n_live < params.min_rows:
        note = f"{n_live} live predictions < min_rows {params.min_rows}"
        return Check(name, INSUFFICIENT, value, _shift_rule(params), statistics, note)
    drifted = psi_value >= params.psi_threshold and p_value < params.p_value
    return Check(name, DRIFT if drifted else OK, value, _shift_rule(params), statistics)


def categories(live: Predictions, classes: Sequence[str]) -> list[str]:
    """The classes, then any live label the test split never had (another model's class)."""
    return [*classes, *sorted(set(live.label.tolist()) - set(classes))]


def _class_counts(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    counts = Counter(labels.tolist())
    return np.array([counts[c] for c in names], dtype=float)


def check_class_mix(
    live: Predictions, reference: Predictions, classes: Sequence[str], params: MonitorParams
) -> Check:
    """Predicted-class shares: PSI and scipy's chi-square test of homogeneity (2 x k table)."""
    from scipy.stats import chi2_contingency

    if not len(live):
        return _shift_check("class mix", 0, "no live predictions", math.nan, math.nan, params)
    names = categories(live, classes)
    a, e = _class_counts(live.label, names), _class_counts(reference.label, names)
    table = np.array([a, e])[:, (a + e) > 0]
    p_value = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table).pvalue)
    psi_value = psi(a, e)
    shares = " / ".join(
        f"{c} {x / a.sum():.1%} (test {y / e.sum():.1%})"
        for c, x, y in zip(names, a, e, strict=True)
    )
    value = f"{shares}; PSI {psi_value:.3f}, χ² p {p_value:.2g}"
    live_shares = {c: x / a.sum() for c, x in zip(names, a, strict=True)}
    return _shift_check(
        "class mix", len(live), value, psi_value, p_value, params, live_shares=live_shares
    )


def check_distribution(
    name: str,
    live_values: np.ndarray,
    reference_values: np.ndarray,
    inner_edges: np.ndarray,
    params: MonitorParams,
    unit: str = "",
) -> Check:
    """A continuous feature: PSI over fixed bins and scipy's two-sample Kolmogorov-Smirnov."""
    from scipy.stats import ks_2samp

    if not len(live_values):
        return _shift_check(name, 0, "no live predictions", math.nan, math.nan, params)
    psi_value = psi(bin_counts(live_values, inner_edges), bin_counts(reference_values, inner_edges))
    ks = ks_2samp(live_values, reference_values)
    live_median, ref_median = np.median(live_values), np.median(reference_values)
    value = (
        f"median {live_median:.4g}{unit} (test {ref_median:.4g}{unit}); "
        f"PSI {psi_value:.3f}, KS {ks.statistic:.3f} p {ks.pvalue:.2g}"
    )
    return _shift_check(
        name,
        len(live_values),
        value,
        psi_value,
        float(ks.pvalue),
        params,
        ks_statistic=float(ks.statistic),
        median=float(live_median),
        reference_median=float(ref_median),
    )


def check_accuracy(live: Predictions, reference: Predictions, params: MonitorParams) -> Check:
    """Accuracy of the live predictions given a true label, against the test accuracy."""
    n = int(live.labelled.sum())
    live_acc, ref_acc = live.accuracy(), reference.accuracy()
    rule = f"drop > {100 * params.accuracy_drop:g} points with ≥ {params.min_labelled} labelled"
    statistics = {"n": n, "accuracy": live_acc, "reference_accuracy": ref_acc, "drop": None}
    if live_acc is None or ref_acc is None:
        value = "no labelled predictions"
        return Check("accuracy", INSUFFICIENT, value, rule, statistics, "no feedback yet")
    drop = ref_acc - live_acc
    statistics["drop"] = drop
    value = f"{live_acc:.2%} on {n} labelled (test {ref_acc:.2%}; drop {100 * drop:+.2f} points)"
    if n < params.min_labelled:
        note = f"{n} labelled < min_labelled {params.min_labelled}"
        return Check("accuracy", INSUFFICIENT, value, rule, statistics, note)
    return Check("accuracy", DRIFT if drop > params.accuracy_drop else OK, value, rule, statistics)


def daily_volume(live: Predictions, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    """Predictions per UTC day, every day of the window (zero-volume days included)."""
    counts = Counter(t.date() for t in live.timestamp)
    day, last = start.astimezone(dt.UTC).date(), (end - dt.timedelta(microseconds=1)).date()
    volume = {}
    while day <= last:
        volume[day.isoformat()] = counts[day]
        day += dt.timedelta(days=1)
    return volume


def check_volume(live: Predictions, start: dt.datetime, end: dt.datetime) -> Check:
    per_day = daily_volume(live, start, end)
    counts = list(per_day.values())
    value = (
        f"{len(live)} in {len(counts)} UTC days: min {min(counts)}, median "
        f"{np.median(counts):g}, max {max(counts)} per day"
    )
    return Check("volume", INFO, value, "—", {"total": len(live), "per_day": per_day})


def check_latency(live: Predictions) -> Check:
    if not len(live):
        return Check("latency", INFO, "no live predictions", "—", {"p50": None, "p95": None})
    p50, p95 = np.percentile(live.latency_ms, [50, 95])
    value = f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
    return Check("latency", INFO, value, "—", {"p50_ms": float(p50), "p95_ms": float(p95)})


@dataclass(frozen=True)
class Report:
    start: dt.datetime
    end: dt.datetime
    live_rows: int
    labelled_rows: int
    reference_rows: int
    model_versions: dict[str, int]
    checks: tuple[Check, ...]
    params: MonitorParams

    @property
    def flagged(self) -> list[str]:
        return [c.name for c in self.checks if c.verdict == DRIFT]

    @property
    def status(self) -> str:
        if self.flagged:
            return DRIFT
        return INSUFFICIENT if self.live_rows < self.params.min_rows else OK


def compare(
    live: Predictions,
    reference: Predictions,
    classes: Sequence[str],
    params: MonitorParams,
    start: dt.datetime,
    end: dt.datetime,
) -> Report:
    """Every check of the live window against the reference."""
    checks = (
        check_class_mix(live, reference, classes, params),
        check_distribution(
            "confidence",
            live.confidence,
            reference.confidence,
            confidence_edges(params.bins),
            params,
        ),
        check_distribution(
            "image size",
            live.megapixels,
            reference.megapixels,
            quantile_edges(reference.megapixels, params.bins),
            params,
            unit=" MP",
        ),
        check_accuracy(live, reference, params),
        check_volume(live, start, end),
        check_latency(live),
    )
    return Report(
        start=start,
        end=end,
        live_rows=len(live),
        labelled_rows=int(live.labelled.sum()),
        reference_rows=len(reference),
        model_versions=dict(sorted(Counter(live.model_version).items())),
        checks=checks,
        params=params,
    )


# --------------------------------------------------------------------------------------------
# Outputs: summary lines, drift.json, drift.png, report.html
# --------------------------------------------------------------------------------------------


def _period(report: Report) -> str:
    return f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC"


def summary_lines(report: Report) -> list[str]:
    """The short text the CLI prints: one line per check, then the outcome."""
    lines = [
        f"monitor: {report.live_rows} live predictions ({report.labelled_rows} labelled), "
        f"{_period(report)}, vs {report.reference_rows} test images"
    ]
    versions = ", ".join(f"{v} ({n})" for v, n in report.model_versions.items())
    if len(report.model_versions) > 1:  # the reference is one model's evaluation
        lines.append(f"  warning: several model versions answered: {versions}; "
                     "compare one with --model-version")  # fmt: skip
    elif versions:
        lines.append(f"  model version {versions}")
    for check in report.checks:
        note = f"  [{check.note}]" if check.note else ""
        lines.append(f"  {check.name:<11} {check.verdict:<17} {check.value}{note}")
    if report.flagged:
        lines.append(f"DRIFT flagged: {', '.join(report.flagged)}")
    elif report.status == INSUFFICIENT:
        lines.append(f"insufficient data: fewer than {report.params.min_rows} live predictions")
    else:
        lines.append("no drift flagged")
    return lines


def report_dict(report: Report, database: str) -> dict[str, Any]:
    """drift.json: the same content as the HTML report, for machines."""
    return {
        "status": report.status,
        "flagged": report.flagged,
        "window": {
            "start": report.start.isoformat(),
            "end": report.end.isoformat(),
            "days": report.params.days,
        },
        "database": redact(database),
        "live": {
            "rows": report.live_rows,
            "labelled": report.labelled_rows,
            "model_versions": report.model_versions,
        },
        "reference": {"rows": report.reference_rows, "split": "test"},
        "params": report.params.model_dump(),
        "checks": [check.as_dict() for check in report.checks],
    }


def _shares(counts: np.ndarray) -> np.ndarray:
    return counts / counts.sum() if counts.sum() else counts.astype(float)


def plot_drift(
    live: Predictions, reference: Predictions, report: Report, classes: Sequence[str]
) -> bytes:
    """drift.png (matplotlib's Agg renderer, no pyplot state): class mix, confidence and image
    size of live vs test, and the daily volume. Each title carries its check's verdict."""
    from matplotlib.figure import Figure

    verdicts = {check.name: check.verdict for check in report.checks}
    live_style = {"color": "#d1242f", "label": f"live ({len(live)})"}
    ref_style = {"color": "#0969da", "label": f"test ({len(reference)})"}
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    fig.suptitle(f"Prediction drift, {_period(report)}: {report.status}", fontsize=14)
    (ax_mix, ax_conf), (ax_size, ax_volume) = fig.subplots(2, 2)

    def title(ax: Any, text: str, check: str) -> None:
        verdict = verdicts[check]
        ax.set_title(f"{text}: {verdict}", color=VERDICT_COLOURS[verdict], fontweight="bold")

    names = categories(live, classes)
    x = np.arange(len(names))
    for offset, side, style in ((-0.2, live, live_style), (0.2, reference, ref_style)):
        shares = _shares(_class_counts(side.label, names))
        bars = ax_mix.bar(x + offset, shares, width=0.4, **style)
        ax_mix.bar_label(bars, labels=[f"{s:.1%}" for s in shares], fontsize=9)
    ax_mix.set(xticks=x, xticklabels=names, ylabel="share of predictions", ylim=(0, 1.1))
    title(ax_mix, "Predicted class mix", "class mix")

    edges = np.linspace(0.5, 1.0, report.params.bins + 1)
    for side, style in ((reference, ref_style), (live, live_style)):
        shares = _shares(bin_counts(side.confidence, edges[1:-1]))
        ax_conf.stairs(np.maximum(shares, 1e-4), edges, lw=2, **style)
    ax_conf.set(xlabel="confidence max(p, 1 − p)", ylabel="share (log scale)", yscale="log")
    title(ax_conf, "Confidence", "confidence")

    sizes = np.concatenate([live.megapixels, reference.megapixels])
    edges = np.geomspace(max(sizes.min(), 1e-3), max(sizes.max(), 2e-3), 31)
    for side, style in ((reference, ref_style), (live, live_style)):
        counts, _ = np.histogram(side.megapixels, edges)
        filled = side is reference
        ax_size.stairs(
            _shares(counts), edges, lw=2, fill=filled, alpha=0.5 if filled else 1, **style
        )
    ax_size.set(xlabel="image size (megapixels, log scale)", ylabel="share", xscale="log")
    title(ax_size, "Image size", "image size")

    volume = daily_volume(live, report.start, report.end)
    ax_volume.bar(range(len(volume)), list(volume.values()), color=live_style["color"])
    ax_volume.set_xticks(range(len(volume)), [day[5:] for day in volume], rotation=45)
    ax_volume.set(xlabel="UTC day (MM-DD)", ylabel="predictions")
    ax_volume.set_title("Daily volume", fontweight="bold")

    for ax in (ax_mix, ax_conf, ax_size):
        ax.legend(loc="upper left", fontsize=9)
    for ax in (ax_mix, ax_conf, ax_size, ax_volume):
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #1f2328; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #d0d7de; padding: 0.4em 0.7em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.verdict { color: white; font-weight: bold; white-space: nowrap; }
.status { display: inline-block; padding: 0.3em 0.8em; color: white; font-weight: bold; }
img { max-width: 100%; }
.note { color: #57606a; font-size: 0.9em; }
"""


def render_html(report: Report, database: str, png: bytes) -> str:
    """report.html: self-contained (CSS inline, the chart as a base64 PNG)."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{e(c.name)}</td>"
        f'<td class="verdict" style="background:{VERDICT_COLOURS[c.verdict]}">{e(c.verdict)}</td>'
        f"<td>{e(c.value)}</td><td>{e(c.threshold)}</td><td>{e(c.note)}</td></tr>"
        for c in report.checks
    )
    versions = ", ".join(f"{v} ({n})" for v, n in report.model_versions.items()) or "none"
    status_colour = VERDICT_COLOURS[report.status]
    outcome = f"drift: {', '.join(report.flagged)}" if report.flagged else report.status
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report {report.end:%Y-%m-%d}</title>
<style>{_CSS}</style></head>
<body>
<h1>Prediction drift report</h1>
<p><span class="status" style="background:{status_colour}">{e(outcome)}</span></p>
<p>Live: <b>{report.live_rows}</b> predictions ({report.labelled_rows} with a true label),
{e(_period(report))}, from <code>{e(redact(database))}</code>; model versions: {e(versions)}.
<br>Reference: the test split, <b>{report.reference_rows}</b> images.</p>
<table>
<tr><th>check</th><th>verdict</th><th>value</th><th>flagged when</th><th>note</th></tr>
{rows}
</table>
<p class="note">A distribution is flagged only when its shift is both material (population
stability index, PSI) and significant (chi-square test for the class mix, two-sample
Kolmogorov-Smirnov for confidence and size). With fewer than {report.params.min_rows} live
predictions ({report.params.min_labelled} labelled for accuracy) the verdict is
"insufficient data". Confidence = max(p, 1 − p); PSI bins: {report.params.bins} equal-width bins
of [0.5, 1] for confidence, {report.params.bins} bins of equal test-split mass for size.
</p>
<img alt="class mix, confidence, image size and daily volume, live vs test"
 src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">
</body></html>
"""


def write_report(
    out_dir: Path,
    report: Report,
    live: Predictions,
    reference: Predictions,
    classes: Sequence[str],
    database: str,
) -> dict[str, Path]:
    """Write report.html, drift.png and drift.json into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in ("report.html", "drift.png", "drift.json")}
    png = plot_drift(live, reference, report, classes)
    files["drift.png"].write_bytes(png)
    files["report.html"].write_text(render_html(report, database, png), encoding="utf-8")
    write_json(files["drift.json"], report_dict(report, database))
    return files
