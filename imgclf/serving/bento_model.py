"""Package the registry's champion into a bento (`imgclf bento`): import it into the BentoML model
store; `bentoml build` then packages it, as bentofile.yaml's `models:` lists it.

Inside the bento the service runs with IMGCLF_MODEL_SOURCE=bento (set by bentofile.yaml `envs`)
and loads this packaged copy instead of polling the registry; the registry version number is
kept as the model's `registered_version` label, so responses still name it, and its classes as
the model's metadata `classes`, so the bento serves them without the registry.
"""

from __future__ import annotations

from imgclf.registry.client import RegistryError
from imgclf.serving.settings import BENTO_MODEL_NAME, ServeSettings


def import_champion(settings: ServeSettings) -> tuple[str, str]:
    """(bento model tag, registry version) of `settings`' champion (model_name@alias in
    tracking_uri's registry), imported into the model store. Raises RegistryError when the alias
    points nowhere."""
    from imgclf.serving.holder import CLASSES_KEY, RegistryChampion

    registry = RegistryChampion(
        settings.tracking_uri, settings.model_name, settings.alias, settings.fallback_classes
    )
    version = registry.resolve()
    if version is None:
        raise RegistryError(f"no {settings.model_name}@{settings.alias} in {settings.tracking_uri}")
    import bentoml  # seconds to import: only once there is a champion to package
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    accuracy = registry.test_accuracy(version)
    labels = {"registered_model": settings.model_name, "registered_version": version}
    if accuracy is not None:  # the live-accuracy alarm's bar travels with the packaged model
        labels["test_accuracy"] = repr(accuracy)
    model = bentoml.mlflow.import_model(
        BENTO_MODEL_NAME,
        registry.uri(version),
        labels=labels,
        metadata={CLASSES_KEY: list(registry.classes(version))},
    )
    return str(model.tag), version
