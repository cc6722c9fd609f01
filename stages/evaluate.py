"""DVC stage `evaluate`: the trained model on every split -> artifacts/evaluate/ (predictions,
plot data, PNGs) and reports/metrics.json, logged into train's MLflow run.

python -m stages.evaluate
"""

from __future__ import annotations

import sys

from imgclf.config import Paths, load_params
from imgclf.evaluation.report import log_to_mlflow, run_evaluate
from imgclf.io import read_json


def main() -> None:
    params, paths = load_params(), Paths()
    metrics = run_evaluate(paths, params.download.classes, params.evaluate)
    if paths.mlflow_run.is_file():
        log_to_mlflow(paths, params.mlflow, metrics, read_json(paths.mlflow_run)["run_id"])
    else:
        print(f"evaluate: {paths.mlflow_run} missing, nothing logged to MLflow", file=sys.stderr)
    test = metrics["test"]
    auc = "n/a" if test.get("roc_auc") is None else f"{test['roc_auc']:.4f}"
    print(
        f"evaluate: test n={test['n']} accuracy {test.get('accuracy', float('nan')):.4f} "
        f"F1 {test.get('f1', float('nan')):.4f} AUC {auc} "
        f"(val accuracy {metrics['val'].get('accuracy', float('nan')):.4f}) -> {paths.metrics}"
    )


if __name__ == "__main__":
    main()
