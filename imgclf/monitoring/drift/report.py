"""The drift report: summary lines, drift.json, drift.png and report.html, and `run_monitor`,
the one call `imgclf monitor` makes (the checks: checks.py; the inputs: inputs.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.config import Params, Paths
from imgclf.io import redact, write_json
from imgclf.monitoring.drift.checks import (
    DRIFT,
    INFO,
    INSUFFICIENT,
    OK,
    Report,
    bin_counts,
    categories,
    class_counts,
    compare,
    confidence_edges,
    daily_volume,
)
from imgclf.monitoring.drift.inputs import Predictions, load_live, load_reference, window

VERDICT_COLOURS = {OK: "#1a7f37", DRIFT: "#cf222e", INSUFFICIENT: "#6e7781", INFO: "#0969da"}


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
    if report.never_predicted:
        lines.append(f"  warning: {_never_predicted(report)}")
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


def _never_predicted(report: Report) -> str:
    names = ", ".join(report.never_predicted)
    return f"never predicted in the window: {names}"


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
    many = len(names) > 8  # names would overlap: turn them
    for offset, side, style in ((-0.2, live, live_style), (0.2, reference, ref_style)):
        shares = _shares(class_counts(side.label, names))
        bars = ax_mix.bar(x + offset, shares, width=0.4, **style)
        if not many:
            ax_mix.bar_label(bars, labels=[f"{s:.1%}" for s in shares], fontsize=9)
    ax_mix.set_xticks(x, names, rotation=90 if many else 0)
    ax_mix.set(ylabel="share of predictions", ylim=(0, 1.1))
    title(ax_mix, "Predicted class mix", "class mix")

    edges = confidence_edges(report.params.bins, len(report.classes))
    for side, style in ((reference, ref_style), (live, live_style)):
        shares = _shares(bin_counts(side.confidence, edges[1:-1]))
        ax_conf.stairs(np.maximum(shares, 1e-4), edges, lw=2, **style)
    ax_conf.set(
        xlabel="confidence (probability of the predicted class)",
        ylabel="share (log scale)",
        yscale="log",
    )
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
    floor = f"{1 / len(report.classes):.3g}"  # the lowest confidence argmax gives: 1/K
    warning = (
        f"\n<p><b>Warning:</b> {e(_never_predicted(report))}</p>" if report.never_predicted else ""
    )
    outcome = f"drift: {', '.join(report.flagged)}" if report.flagged else report.status
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Drift report {report.end:%Y-%m-%d}</title>
<style>{_CSS}</style></head>
<body>
<h1>Prediction drift report</h1>
<p><span class="status" style="background:{status_colour}">{e(outcome)}</span></p>
<p>Live: <b>{report.live_rows}</b> predictions ({report.labelled_rows} with a true label),
{e(_period(report))}, from <code>{e(redact(database))}</code>; model versions: {e(versions)}.
<br>Reference: the test split, <b>{report.reference_rows}</b> images.</p>{warning}
<table>
<tr><th>check</th><th>verdict</th><th>value</th><th>flagged when</th><th>note</th></tr>
{rows}
</table>
<p class="note">A distribution is flagged only when its shift is both material (population
stability index, PSI) and significant (chi-square test for the class mix, two-sample
Kolmogorov-Smirnov for confidence and size). With fewer than {report.params.min_rows} live
predictions ({report.params.min_labelled} labelled for accuracy) the verdict is
"insufficient data". Confidence = the probability of the predicted class; PSI bins:
{report.params.bins} equal-width bins of [{floor}, 1] for confidence, {report.params.bins} bins of
equal test-split mass for size.
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


def run_monitor(
    paths: Paths,
    params: Params,
    database_url: str,
    now: dt.datetime,
    *,
    days: int | None = None,
    model_version: str | None = None,
    out_dir: Path | None = None,
) -> tuple[Report, dict[str, Path]]:
    """Compare the log's last `days` (default monitor.days) before `now` with the test split and
    write the report into `out_dir` (default artifacts/monitor): (report, {file name: path}).

    Raises DriftInputError, before writing anything, when an input is missing or unreadable."""
    monitor = params.monitor if days is None else params.monitor.model_copy(update={"days": days})
    threshold = params.evaluate.threshold
    listed = params.download.classes  # read only for a predictions.tsv that names no classes
    start, end = window(now, monitor.days)
    reference, classes = load_reference(
        paths.split_manifest("test"),
        paths.download_manifest,
        paths.predictions,
        None if listed == "auto" else listed,
        threshold,
    )
    live = load_live(database_url, start, end, threshold, model_version)
    report = compare(live, reference, classes, monitor, start, end)
    out = out_dir or paths.artifacts / "monitor"
    return report, write_report(out, report, live, reference, classes, database_url)
