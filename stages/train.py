"""DVC stage `train`: split manifests -> model.keras, history.csv, mlflow_run.json.

python -m stages.train
"""

from __future__ import annotations

import mlflow

from imgclf import tracking
from imgclf.config import Paths, load_params
from imgclf.io import atomic_dir, write_json, write_tsv
from imgclf.model.architectures.factory import build_classifier
from imgclf.model.dataset import read_split
from imgclf.model.preprocess import load_images
from imgclf.model.training import distribution_strategy, set_seeds, train_classifier


def main() -> None:
    params, paths = load_params(), Paths()
    classes, train_params = params.download.classes, params.train
    set_seeds(train_params.seed)
    train = read_split(paths.split_manifest("train"), classes, paths.root)
    val = read_split(paths.split_manifest("val"), classes, paths.root)
    manifests = [paths.split_manifest(name) for name in ("train", "val", "test")]

    with (
        atomic_dir(paths.train_dir) as out,
        tracking.open_run(params.mlflow, paths.root, run_name=train_params.arch) as run,
        distribution_strategy(train_params.strategy).scope(),
    ):
        tracking.log_run_context(
            params.model_dump(mode="json", exclude={"mlflow"}), paths.root, manifests
        )
        classifier = build_classifier(train_params, paths.pretrained_weights)
        history = train_classifier(
            classifier, train, val, train_params, callbacks=[mlflow.keras.MlflowCallback()]
        )
        classifier.model.save(out / paths.model.name)
        write_tsv(out / paths.history.name, history, list(history[0]), delimiter=",")
        write_json(out / paths.mlflow_run.name, {"run_id": run.info.run_id})
        tracking.log_classifier(
            classifier.model, load_images(train.files[:1], train_params.image_size)
        )
    best = min(history, key=lambda row: row["val_loss"])
    print(
        f"train: {train_params.arch} {len(train)} train / {len(val)} val images, "
        f"{len(history)} epochs, best val_loss {best['val_loss']:.4f} "
        f"val_accuracy {best['val_accuracy']:.4f}, run {run.info.run_id}"
    )


if __name__ == "__main__":
    main()
