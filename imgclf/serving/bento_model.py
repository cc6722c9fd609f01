"""Package the registry's champion into a bento: import it into the BentoML model store, then
(with --build) run `bentoml build`, whose bentofile.yaml lists the model, so the bento carries it.

    python -m imgclf.serving.bento_model [--build]

Inside the bento the service runs with IMGCLF_MODEL_SOURCE=bento (set by bentofile.yaml `envs`)
and loads this packaged copy instead of polling the registry; the registry version number is
kept as the model's `registered_version` label, so responses still name it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from imgclf.serving.settings import BENTO_MODEL_NAME, load_settings


def import_champion() -> tuple[str, str]:
    """(bento model tag, registry version) of the champion imported into the model store."""
    import bentoml
    import mlflow

    from imgclf.serving.holder import RegistryChampion

    settings = load_settings()
    registry = RegistryChampion(settings.tracking_uri, settings.model_name, settings.alias)
    version = registry.resolve()
    if version is None:
        raise SystemExit(f"no {settings.model_name}@{settings.alias} in {settings.tracking_uri}")
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    accuracy = registry.test_accuracy(version)
    labels = {"registered_model": settings.model_name, "registered_version": version}
    if accuracy is not None:  # the live-accuracy alarm's bar travels with the packaged model
        labels["test_accuracy"] = repr(accuracy)
    model = bentoml.mlflow.import_model(
        BENTO_MODEL_NAME, f"models:/{settings.model_name}/{version}", labels=labels
    )
    return str(model.tag), version


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgclf.serving.bento_model")
    parser.add_argument("--build", action="store_true", help="then build the bento")
    parser.add_argument("--bentofile", default="bentofile.yaml")
    args = parser.parse_args(argv)
    tag, version = import_champion()
    print(f"imported champion version {version} as {tag}")
    if args.build:
        import bentoml

        bento = bentoml.bentos.build_bentofile(args.bentofile)
        print(f"built {bento.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
