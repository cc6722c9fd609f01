"""Packaging the champion into a bento, offline: a tiny champion in the real `mlflow server`,
`imgclf bento` as a user runs it (`make bento`) from this checkout with --params naming another
project folder (its own registry and classes), then the bento must exist in a private BentoML
store, carry the `imgclf-champion` model with the champion's own classes (not that folder's
download.classes) and that folder's params.yaml, and yield the Dockerfile `bentoml containerize`
would use (written without Docker). The packaged model holds the champion's exported engine, and
the bento serves that engine, answering as registry mode does for that version; a version without
an engine packages and serves its Keras model.

Everything touching the BentoML store runs in subprocesses with BENTOML_HOME set: the store's
location is fixed once bentoml is configured in a process, so this process's store stays alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from imgclf.config import PARAMS_FILE
from imgclf.model.engines import ENGINE_FILES
from imgclf.serving.bento_model import MLFLOW_MODEL_FOLDER
from imgclf.serving.settings import BENTO_MODEL_NAME
from tests.support.helpers import REPO_ROOT, VENV_BIN, Registry, imgclf_command, mlflow_uris

TIMEOUT_S = 300
# What bentofile.yaml builds from; the other project folder holds its own copy.
BUILD_INPUTS = ("bentofile.yaml", "service.py", "requirements.txt")
# One interpreter (bentoml imports take seconds) to read the store at $BENTOML_HOME: the bentos,
# the models the only bento carries, that model's labels and metadata, the classes the service
# loads it with (no fallback), its folder in the store, the params.yaml the bento packaged, and its
# Dockerfile at argv[1].
INSPECT = """
import json, sys
from pathlib import Path
import bentoml
from imgclf.serving.holder import load_bento_model
bentos = bentoml.bentos.list()
models = [str(m.tag) for m in bentos[0].info.models] if len(bentos) == 1 else []
stored = bentoml.models.get(models[0]) if len(models) == 1 else None
info = stored.info if stored else None
labels, metadata = (dict(info.labels), dict(info.metadata)) if info else ({}, {})
served = list(load_bento_model(models[0], None).classes) if info else None
folder = stored.path if stored else None
params = None
if len(bentos) == 1:
    bentoml.container.get_containerfile(bentos[0].tag, output_path=sys.argv[1])
    params = Path(bentos[0].path_of("src/params.yaml")).read_text()
print(json.dumps({"bentos": [str(b.tag) for b in bentos], "models": models, "labels": labels,
                  "metadata": metadata, "served": served, "folder": folder, "params": params}))
"""
# One interpreter to serve the store's model argv[1] as the bento does and its registry version
# (argv[2:5]: tracking URI, model name, version) as registry mode does: the bento model's metadata,
# the source it names, and the largest difference between the two modes' probabilities for one
# batch of images.
SERVE = """
import json, sys
import bentoml
import numpy as np
from imgclf.serving.holder import RegistryChampion, load_bento_model
tag, tracking_uri, model_name, version = sys.argv[1:5]
bento = load_bento_model(tag, None)
registry = RegistryChampion(tracking_uri, model_name, "champion", None).load(version)
size = bento.image_size
batch = np.random.default_rng(0).random((6, size, size, 3), dtype=np.float32)
gap = float(np.abs(bento.forward(batch) - registry.forward(batch)).max())
stored = bentoml.models.get(tag)
print(json.dumps({"metadata": dict(stored.info.metadata), "folder": stored.path,
                  "source": bento.source, "gap": gap}))
"""


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def other_project(folder: Path, tracking_uri: str, model_name: str) -> Path:
    """A project folder beside this checkout: its code, and a params.yaml with its own registry,
    model and classes (not this checkout's), as for a `defect/ok` project."""
    for name in BUILD_INPUTS:
        shutil.copy(REPO_ROOT / name, folder / name)
    shutil.copytree(
        REPO_ROOT / "imgclf", folder / "imgclf", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = yaml.safe_load(PARAMS_FILE.read_text())
    params["mlflow"]["tracking_uri"] = tracking_uri
    params["register"]["model_name"] = model_name
    params["download"]["classes"] = ["defect", "ok"]
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


def bento_env(tmp_path: Path) -> dict[str, str]:
    """This environment without the project's own settings, with a private BentoML store."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("IMGCLF_", "MLFLOW_"))},
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
    }


def imported_tag(output: str, version: str) -> str:
    """The bento model tag `imgclf bento` says it imported `version` as."""
    prefix = f"imported champion version {version} as "
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and lines[0].startswith(prefix + f"{BENTO_MODEL_NAME}:"), output
    return lines[0].removeprefix(prefix)


def serve_both_ways(tag: str, registry: Registry, version: str, env: dict[str, str]) -> dict:
    """SERVE's facts for the store's model `tag` and `registry`'s `version`."""
    arguments = [tag, registry.uri, registry.model_name, version]
    return json.loads(_run([str(VENV_BIN / "python"), "-c", SERVE, *arguments], env).stdout)


def test_build_bento_carries_the_champion_and_a_containerfile(
    mlflow_server: str, tmp_path: Path
) -> None:
    with mlflow_uris(mlflow_server):
        registry = Registry(tmp_path / "registry", mlflow_server)
        version = registry.promote(seed=3, classes=("scratch", "dent", "ok"))
    (tmp_path / "project").mkdir()
    params_file = other_project(tmp_path / "project", mlflow_server, registry.model_name)
    env = bento_env(tmp_path)
    command = [imgclf_command(), "--params", str(params_file), "bento"]
    built = _run(command, env)
    tag = imported_tag(built.stdout, version)

    dockerfile = tmp_path / "Dockerfile"
    facts = json.loads(_run([str(VENV_BIN / "python"), "-c", INSPECT, str(dockerfile)], env).stdout)
    assert [tag.split(":")[0] for tag in facts["bentos"]] == ["imgclf"], facts
    assert [tag.split(":")[0] for tag in facts["models"]] == [BENTO_MODEL_NAME], facts
    assert facts["labels"]["registered_model"] == registry.model_name
    assert facts["labels"]["registered_version"] == version
    assert facts["metadata"]["classes"] == ["scratch", "dent", "ok"]  # the model's, not params'
    assert facts["served"] == facts["metadata"]["classes"]
    assert facts["params"] == params_file.read_text()  # the champion's project's classes
    assert "IMGCLF_MODEL_SOURCE" in dockerfile.read_text()

    # The packaged model holds the registered engine itself, byte for byte, beside the MLflow model.
    folder, engine = Path(facts["folder"]), ENGINE_FILES["litert"]
    assert facts["metadata"]["engine"] == engine
    assert (folder / engine).read_bytes() == (registry.root / f"v{version}" / engine).read_bytes()
    assert (folder / MLFLOW_MODEL_FOLDER / "MLmodel").is_file()
    # Served without the Keras copy: the engine alone answers, as registry mode does.
    shutil.rmtree(folder / MLFLOW_MODEL_FOLDER)
    served = serve_both_ways(tag, registry, version, env)
    assert served["source"] == f"bento:{tag}/{engine}"
    assert served["gap"] <= 1e-6, served


def test_a_version_without_an_engine_packages_and_serves_keras(
    mlflow_server: str, tmp_path: Path
) -> None:
    with mlflow_uris(mlflow_server):
        registry = Registry(tmp_path / "registry", mlflow_server)
        # logged as before engines (and classes) were exported; its classes as a tag
        version = registry.promote(
            seed=4, carries_classes=False, tags={"classes": '["dent", "ok"]'}
        )
    (tmp_path / "project").mkdir()
    params_file = other_project(tmp_path / "project", mlflow_server, registry.model_name)
    env = bento_env(tmp_path)
    command = [imgclf_command(), "--params", str(params_file), "bento", "--no-build"]
    tag = imported_tag(_run(command, env).stdout, version)

    served = serve_both_ways(tag, registry, version, env)
    assert served["metadata"] == {"classes": ["dent", "ok"]}  # no engine named
    assert (Path(served["folder"]) / MLFLOW_MODEL_FOLDER / "MLmodel").is_file()
    assert served["source"] == f"bento:{tag}"
    assert served["gap"] <= 1e-6, served
