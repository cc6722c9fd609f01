"""Package the registry's champion into a bento (`imgclf bento`): import it into the BentoML model
store; `bentoml build` then packages it, as bentofile.yaml's `models:` lists it.

Inside the bento the service runs with IMGCLF_MODEL_SOURCE=bento (set by bentofile.yaml `envs`)
and loads this packaged copy instead of polling the registry; the registry version number is
kept as the model's `registered_version` label, so responses still name it, and its classes as
the model's metadata `classes`, so the bento serves them without the registry.

The packaged model holds the version's MLflow model (folder `mlflow_model`) and, when the version
has one, its exported engine (the file the metadata `engine` names, e.g. model.tflite): the bento
then serves that engine, as registry mode does, so what answers is what evaluate measured.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from imgclf.registry.client import RegistryError
from imgclf.serving.settings import BENTO_MODEL_NAME, ServeSettings

MLFLOW_MODEL_FOLDER = "mlflow_model"  # the packaged MLflow model, as bentoml.mlflow names it
ENGINE_KEY = "engine"  # bento metadata: the packaged engine's file name in the model folder


def import_champion(settings: ServeSettings) -> tuple[str, str]:
    """(bento model tag, registry version) of `settings`' champion (model_name@alias in
    tracking_uri's registry), imported into the model store. Raises RegistryError when the alias
    points nowhere."""
    from imgclf.registry.client import engine_artifact_of
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
    metadata: dict[str, object] = {CLASSES_KEY: list(registry.classes(version))}
    registered = registry.client.get_model_version(settings.model_name, version)
    engine = engine_artifact_of(registered)  # None: registered before engines were exported
    if engine is not None:  # its name tells load_engine which runtime reads it
        metadata[ENGINE_KEY] = PurePosixPath(engine).name
    with bentoml.models.create(BENTO_MODEL_NAME, labels=labels, metadata=metadata) as model:
        folder = Path(model.path_of(MLFLOW_MODEL_FOLDER))
        folder.mkdir()  # a models:/ download writes the model's files straight into it
        mlflow.artifacts.download_artifacts(registry.uri(version), dst_path=str(folder))
        registry.engine_file(version, Path(model.path))
    return str(model.tag), version
