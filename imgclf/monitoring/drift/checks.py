"""The drift checks: the live window against the reference, one verdict per check.

Checks (thresholds in params.yaml `monitor:`):
    class mix    predicted-class shares over the K classes: PSI and a chi-square test of
                 homogeneity; a class never predicted in the window is named
    confidence   probability of the predicted class: PSI over `bins` equal-width bins of
                 [1/K, 1] (it is never below 1/K under argmax; [0.5, 1] for two classes) and a
                 two-sample KS
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

import datetime as dt
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.config import MonitorParams
from imgclf.monitoring.drift.inputs import Predictions

OK, DRIFT, INSUFFICIENT, INFO = "ok", "drift", "insufficient data", "info"


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


def confidence_edges(bins: int, n_classes: int) -> np.ndarray:
    """Every edge of `bins` equal-width bins over [1/K, 1]: the most probable of K classes has
    at least 1/K (a two-class threshold above 0.5 can go lower: the first bin takes those)."""
    return np.linspace(1 / n_classes, 1.0, bins + 1)


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


def class_counts(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    counts = Counter(labels.tolist())
    return np.array([counts[c] for c in names], dtype=float)


def check_class_mix(
    live: Predictions, reference: Predictions, classes: Sequence[str], params: MonitorParams
) -> Check:
    """Predicted-class shares: PSI and scipy's chi-square test of homogeneity (2 x k table; a
    class neither side predicted is left out of the test). `never_predicted`: the classes no
    live prediction names."""
    from scipy.stats import chi2_contingency

    if not len(live):
        return _shift_check(
            "class mix", 0, "no live predictions", math.nan, math.nan, params, never_predicted=[]
        )
    names = categories(live, classes)
    a, e = class_counts(live.label, names), class_counts(reference.label, names)
    table = np.array([a, e])[:, (a + e) > 0]
    p_value = 1.0 if table.shape[1] < 2 else float(chi2_contingency(table).pvalue)
    psi_value = psi(a, e)
    shares = " / ".join(
        f"{c} {x / a.sum():.1%} (test {y / e.sum():.1%})"
        for c, x, y in zip(names, a, e, strict=True)
    )
    value = f"{shares}; PSI {psi_value:.3f}, χ² p {p_value:.2g}"
    live_shares = {c: x / a.sum() for c, x in zip(names, a, strict=True)}
    never_predicted = [c for c in classes if not live_shares[c]]
    return _shift_check(
        "class mix",
        len(live),
        value,
        psi_value,
        p_value,
        params,
        live_shares=live_shares,
        never_predicted=never_predicted,
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
    classes: tuple[str, ...]  # the model's, in order (the reference's evaluation names them)

    @property
    def never_predicted(self) -> list[str]:
        """The classes no live prediction in the window names."""
        return next(c for c in self.checks if c.name == "class mix").statistics["never_predicted"]

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
            confidence_edges(params.bins, len(classes))[1:-1],
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
        classes=tuple(classes),
    )
