"""The model card: a version's identity and classes, the engine's precision when reduced (its
test metric beside the float model's), metrics (per class where metrics.json holds them), data,
intended use, limits and parameters.

Each registered version's description is its card (cut to the SQL column's size), and the full
card is logged to its run as `model_card.md`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imgclf.config import RegisterParams
from imgclf.registry.client import utc_now
from imgclf.registry.gate import higher_is_better, metric_drop

if TYPE_CHECKING:
    from mlflow.entities import Run

SPLITS = ("train", "val", "test")
MAX_DESCRIPTION = 5000  # model version description column of the SQL backends
METRIC_ORDER = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
COUNT_KEYS = ("tn", "fp", "fn", "tp", "n", "support")


def split_metrics(run_metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """{"test_accuracy": 0.9} -> {"test": {"accuracy": 0.9}} (train/val/test prefixes only).

    Prefer reports/metrics.json where it exists: Keras' MlflowCallback logs `val_accuracy`
    and `val_loss` per epoch into the same run, and the run keeps the highest step's value.
    """
    out: dict[str, dict[str, float]] = {split: {} for split in SPLITS}
    for key, value in run_metrics.items():
        split, _, name = key.partition("_")
        if split in out and name:
            out[split][name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(row: Mapping[str, Any], skip: set[str]) -> dict[str, float]:
    return {str(k): v for k, v in row.items() if k not in skip and _is_number(v)}


def _nested(node: Any) -> list[Any]:
    """`node` and every mapping or list inside it, depth first."""
    found = [node]
    children = node.values() if isinstance(node, Mapping) else node
    for child in children:
        if isinstance(child, Mapping | list):
            found += _nested(child)
    return found


def _class_rows(node: Any, classes: set[str]) -> dict[str, dict[str, float]]:
    """{class: {metric: value}} when `node` is a per-class table in one of the shapes an
    evaluation might write: {class: {metric: x}}, {metric: {class: x}} or
    [{"class": c, metric: x}, ...]; {} otherwise. Class-named columns (a confusion matrix's)
    are not metrics."""
    if isinstance(node, list):
        rows = [r for r in node if isinstance(r, Mapping)]
        keys = [[k for k, v in r.items() if isinstance(v, str) and v in classes] for r in rows]
        named = {str(r[k[0]]): r for r, k in zip(rows, keys, strict=True) if len(k) == 1}
        if len(named) != len(node) or set(named) != classes:
            return {}
        return {c: _numbers(r, classes) for c, r in named.items()}
    if classes <= set(node) and all(isinstance(node[c], Mapping) for c in classes):
        return {c: _numbers(node[c], classes) for c in classes}
    columns = {k: v for k, v in node.items() if isinstance(v, Mapping) and classes <= set(v)}
    return {
        c: {str(k): v[c] for k, v in columns.items() if k not in classes and _is_number(v[c])}
        for c in classes
    }


def per_class_metrics(
    test: Mapping[str, Any], classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The first per-class table anywhere in metrics.json's test section (`_class_rows`), in
    class order; {} when it holds none."""
    for node in _nested(test):
        rows = _class_rows(node, set(classes))
        if any(rows.values()):
            return {c: rows[c] for c in classes}
    return {}


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "–"
    if name in COUNT_KEYS:
        return str(int(value))
    if isinstance(value, int | float):
        return f"{value:.4f}"
    return str(value)


def _cell(value: Any, width: int = 80) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def model_card(
    name: str,
    version: str,
    run: Run,
    metrics: Mapping[str, Mapping[str, Any]],
    split_counts: Mapping[str, Any] | None,
    params: RegisterParams,
    classes: Sequence[str] | None = None,
) -> str:
    """The version's model card (Markdown): identity, metrics, data, use, limits, params."""
    tags, run_params = run.data.tags, run.data.params
    test = metrics.get("test", {})
    classes = list(classes or [])
    lines = [
        f"# {name} v{version}",
        "",
        "| | |",
        "|---|---|",
        f"| Model URI | `models:/{name}/{version}` |",
        f"| Run | `{run.info.run_id}` ({run_params.get('train.arch', 'unknown arch')}) |",
        f"| Git commit | `{tags.get('git_commit', 'unknown')}` |",
        f"| Classes | {_classes_cell(classes)} |",
        f"| Data version | `{tags.get('data_version', 'unknown')}` (hash of the split manifests) |",
        f"| Registered | {utc_now()} |",
        f"| Gate metric | test {params.metric} "
        f"({'higher' if higher_is_better(params.metric, params.direction) else 'lower'} "
        f"is better) |",
        *_precision_rows(metrics, params),
        "",
        "## Metrics",
        "",
        "| metric | train | val | test |",
        "|---|---|---|---|",
    ]
    scalars = {  # nested tables (per class, confusion) are not rows of this table
        m for s in SPLITS for m, v in metrics.get(s, {}).items() if v is None or _is_number(v)
    } - {"threshold"}
    names = [m for m in METRIC_ORDER if m in scalars]
    names += sorted(scalars - set(names), key=lambda m: (m in COUNT_KEYS, m))
    for metric in names:
        cells = " | ".join(_fmt(metric, metrics.get(s, {}).get(metric)) for s in SPLITS)
        lines.append(f"| {metric} | {cells} |")
    if "threshold" in test:
        lines += [
            "",
            f"Decision threshold on P({classes[1] if classes else 'class 1'}): "
            f"{test['threshold']}.",
        ]
    lines += _per_class_section(per_class_metrics(test, classes) if classes else {})
    lines += ["", "## Data", ""]
    if split_counts and split_counts.get("splits"):
        counted = split_counts.get("classes", {})
        class_names = [c for c in classes if c in counted] + sorted(set(counted) - set(classes))
        lines += [
            "| split | images | groups | " + " | ".join(class_names) + " |",
            "|---|---|---|" + "---|" * len(class_names),
        ]
        for split, row in split_counts["splits"].items():
            counts = " | ".join(str(row.get("classes", {}).get(c, 0)) for c in class_names)
            lines.append(f"| {split} | {row.get('total')} | {row.get('groups')} | {counts} |")
        totals = " | ".join(str(split_counts["classes"][c]) for c in class_names)
        lines.append(f"| total | {split_counts.get('total')} | | {totals} |")
    else:
        lines.append("Split counts not available (reports/split.json missing).")
    label = " / ".join(classes) if classes else "the training classes"
    task = (
        f"Binary classification of one photo as {label}"
        if len(classes) <= 2
        else f"Classification of one photo as one of {len(classes)} classes ({label})"
    )
    n, accuracy = test.get("n"), test.get("accuracy")
    interval = ""
    if n and accuracy is not None:
        half = 1.96 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)
        interval = (
            f" With {int(n)} test images, test accuracy {accuracy:.4f} is uncertain by about "
            f"±{half:.4f} (95% normal interval)."
        )
    ece = test.get("ece")
    lines += [
        "",
        "## Intended use",
        "",
        f"{task}, for photos like the training data "
        f"(consumer photos of one pet). Served by the BentoML service from "
        f"`models:/{name}@champion`. Not for decisions about people or safety.",
        "",
        "## Limitations",
        "",
        f"- It always answers one of {label}: there is no 'neither' class, so out-of-scope "
        f"images (other animals, drawings, several animals) get a confident wrong answer.",
        f"- Measured only on the data version above.{interval}",
        "- Scores of versions tested on a different data version are not comparable.",
    ]
    if ece is not None:
        lines.append(f"- Probabilities are calibrated to about ECE {ece:.4f} on the test split.")
    # Last: a description longer than the SQL column is cut here, keeping the sections above.
    lines += ["", "## Parameters", "", "| param | value |", "|---|---|"]
    for key in sorted(run_params):
        lines.append(f"| {key} | {_cell(run_params[key])} |")
    return "\n".join(lines) + "\n"


def _precision_rows(metrics: Mapping[str, Any], params: RegisterParams) -> list[str]:
    """An engine exported at reduced precision: its precision, its test metric beside the float
    Keras model's, and the drop the gate allowed (evaluate's `reduced_precision` block)."""
    check = metrics.get("reduced_precision")
    if not check:
        return []
    metric = params.metric
    engine_value = metrics.get("test", {}).get(metric)
    float_value = check["float32_test"].get(metric)
    if engine_value is None or float_value is None:
        measured = f"test {metric} not measured"
    else:
        drop = metric_drop(engine_value, float_value, params)
        measured = (
            f"test {metric} {engine_value:.4f}, float32 model {float_value:.4f}, drop {drop:.4f}"
        )
    return [f"| Engine precision | {check['precision']} ({check['engine']}): {measured} |"]


def _classes_cell(classes: Sequence[str]) -> str:
    """Label index = class name; a very long list is cut (the `classes` tag holds it whole)."""
    if not classes:
        return "unknown"
    return _cell(", ".join(f"{i} = {c}" for i, c in enumerate(classes)), width=400)


def _per_class_section(rows: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The test split's per-class table, when the evaluation wrote one."""
    if not rows:
        return []
    columns = list(dict.fromkeys(m for row in rows.values() for m in row))
    lines = [
        "",
        "### Per class (test)",
        "",
        "| class | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in rows.items():
        cells = " | ".join(_fmt(m, row.get(m)) for m in columns)
        lines.append(f"| {_cell(name)} | {cells} |")
    return lines


def description_for(card: str) -> str:
    """The card as a version description: cut to whole lines under the SQL column's size."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    tail = "\n\n… (truncated: the full card is the run artifact model_card.md)\n"
    head = card[: MAX_DESCRIPTION - len(tail)]
    return head[: head.rfind("\n")] + tail  # whole lines only
