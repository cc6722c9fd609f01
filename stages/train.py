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
    best = result.best_epoch
    print(
        f"train: {params.train.arch} {result.train_images} train / {result.val_images} val "
        f"images, {len(result.history)} epochs, best val_loss {best['val_loss']:.4f} "
        f"val_accuracy {best['val_accuracy']:.4f}, run {result.run_id}"
    )


if __name__ == "__main__":
    main()
