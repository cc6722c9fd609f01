"""DVC stage `evaluate`: the trained model on every split -> artifacts/evaluate/ (predictions,
plot data, PNGs) and reports/metrics.json, logged into train's MLflow run.

python -m stages.evaluate
"""

from __future__ import annotations

import sys

from imgclf.config import Paths, load_params
from imgclf.data.labels import read_classes
from imgclf.evaluation.report import run_evaluate


def main() -> None:
    params, paths = load_params(), Paths()
    classes = read_classes(paths.split_classes)
    result = run_evaluate(paths, classes, params.evaluate, params.mlflow)
    if result.mlflow_run_id is None:
        print(f"evaluate: {paths.mlflow_run} missing, nothing logged to MLflow", file=sys.stderr)
    test, val = result.metrics["test"], result.metrics["val"]
    auc = "n/a" if test.get("roc_auc") is None else f"{test['roc_auc']:.4f}"
    f1 = "F1" if len(classes) == 2 else "macro F1"  # two classes: F1 of the second
    print(
        f"evaluate: test n={test['n']} accuracy {test.get('accuracy', float('nan')):.4f} "
        f"{f1} {test.get('f1' if len(classes) == 2 else 'macro_f1', float('nan')):.4f} "
        f"AUC {auc} (val accuracy {val.get('accuracy', float('nan')):.4f}) -> {paths.metrics}"
    )
    if reduced := result.metrics.get("reduced_precision"):
        print(
            f"evaluate: {reduced['precision']} {reduced['engine']} engine test accuracy "
            f"{test.get('accuracy', float('nan')):.4f}, float32 Keras model "
            f"{reduced['float32_test'].get('accuracy', float('nan')):.4f}"
        )


if __name__ == "__main__":
    main()
