"""DVC stage `train`: split manifests and class list -> model.keras, history.csv, mlflow_run.json.

python -m stages.train
"""

from __future__ import annotations

from imgclf.config import Paths, load_params
from imgclf.data.labels import read_classes
from imgclf.model.training import run_train


def main() -> None:
    params, paths = load_params(), Paths()
    result = run_train(paths, params.train, read_classes(paths.split_classes), params.mlflow)
    best, calibration = result.best_epoch, result.calibration
    print(
        f"train: {params.train.arch_name} {result.train_images} train / {result.val_images} val "
        f"images, {len(result.history)} epochs, best val_loss {best['val_loss']:.4f} "
        f"val_accuracy {best['val_accuracy']:.4f}, run {result.run_id}"
    )
    if calibration.val_log_loss_before is not None:
        print(
            f"train: temperature {calibration.temperature:.3f}, val log loss "
            f"{calibration.val_log_loss_before:.4f} -> {calibration.val_log_loss_after:.4f}"
        )


if __name__ == "__main__":
    main()
