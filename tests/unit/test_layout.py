"""The house rules, read from the source: imports point one way, each stage is one library call,
and every module a DVC stage runs is one of its deps (so no code edit can leave a result stale)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "imgclf"
STAGES = REPO_ROOT / "stages"
FIRST_PARTY = ("imgclf", "stages")

# What each part may import from the project, besides itself. The base (config, io, tracking) is
# below everything; the lifecycle runs data <- model <- evaluation <- registry; monitoring reads
# the model and the registry; serving reads the model, the registry's client, the standardisation
# and the prediction-log schema; the CLI, the stages and service.py sit on top, and nothing in the
# library imports them.
BASE = {"imgclf.config", "imgclf.io", "imgclf.tracking"}
ALLOWED: dict[str, set[str]] = {
    "imgclf": set(),
    "imgclf.config": set(),
    "imgclf.io": set(),
    "imgclf.tracking": {"imgclf.config", "imgclf.io"},
    "imgclf.data": BASE,
    "imgclf.model": BASE | {"imgclf.data"},
    "imgclf.evaluation": BASE | {"imgclf.data", "imgclf.model"},
    "imgclf.registry": BASE | {"imgclf.data", "imgclf.model", "imgclf.evaluation"},
    "imgclf.monitoring": BASE | {"imgclf.model", "imgclf.registry"},
    "imgclf.serving": BASE
    | {
        "imgclf.data.standardise",
        "imgclf.model",
        "imgclf.registry.client",
        "imgclf.monitoring.schema",
    },
    "imgclf.cli": {"imgclf"},
    "stages": {"imgclf"},
    "service": {"imgclf.serving"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    base = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def direct_imports(path: Path) -> frozenset[str]:
    """Every first-party module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # Relative imports would hide a module's real target from this check.
            assert node.level == 0, f"{path}: use absolute imports (line {node.lineno})"
            # `from imgclf.data import sources` imports the submodule when there is one.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in FIRST_PARTY and module_file(n))
    return frozenset(found)


def with_packages(name: str) -> list[Path]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first, then a/b/c."""
    parts = name.split(".")
    files = (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))
    return [path for path in files if path is not None]


def transitive_files(*start: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            for name in direct_imports(path):
                todo.extend(with_packages(name))
    return seen


def rule_for(module: str) -> tuple[str, set[str]]:
    owner = max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len)
    return owner, ALLOWED[owner]


def violations(module: str, path: Path) -> list[str]:
    owner, allowed = rule_for(module)
    return [
        f"{module} imports {target}: {owner} may import only {sorted(allowed)}"
        for target in sorted(direct_imports(path))
        if not any(target == ok or target.startswith(ok + ".") for ok in allowed | {owner})
        and target != "imgclf"
    ]


def checked_modules() -> list[Path]:
    return sorted([*PACKAGE.rglob("*.py"), *STAGES.glob("*.py"), REPO_ROOT / "service.py"])


@pytest.mark.parametrize("path", checked_modules(), ids=module_name)
def test_imports_point_one_way(path: Path) -> None:
    assert not violations(module_name(path), path)


def test_the_rule_catches_a_reversed_import_even_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text(
        "from imgclf.serving import app\n\ndef late():\n    from imgclf.cli import cli\n"
    )
    found = violations("imgclf.data.bad", module)
    assert any("imports imgclf.serving.app" in v for v in found)
    assert any("imports imgclf.cli" in v for v in found)
    assert not violations("imgclf.cli", module)


def test_relative_imports_are_refused(tmp_path: Path) -> None:
    module = tmp_path / "relative.py"
    module.write_text("from ..serving import app\n")
    with pytest.raises(AssertionError, match="absolute imports"):
        direct_imports(module)


# ------------------------------------------------------------------------------ DVC stages


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    command = stage["cmd"].split()
    assert command[:2] == ["python", "-m"], stage["cmd"]
    return command[2]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_every_module_a_stage_runs_is_one_of_its_deps(name: str) -> None:
    stage = dvc_stages()[name]
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage.get("deps", [])]
    missing = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in transitive_files(*with_packages(stage_module(stage)))
        if not covered(path, deps)
    )
    assert not missing, f"dvc.yaml stage {name!r} runs these but does not depend on them: {missing}"


def test_the_deps_walk_follows_function_level_imports_and_packages(tmp_path: Path) -> None:
    """A module reached only through an import inside a function, and the __init__ files of its
    packages, count as run."""
    entry = tmp_path / "probe.py"
    entry.write_text("def main():\n    from imgclf.registry import gate\n")
    files = transitive_files(entry)
    assert {PACKAGE / "registry" / "gate.py", PACKAGE / "registry" / "__init__.py"} <= files
    assert PACKAGE / "__init__.py" in files
    assert STAGES / "__init__.py" in with_packages("stages.train")


def run_calls(path: Path) -> list[str]:
    """Names of the run_* functions a module calls."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("run_"):
                calls.append(name)
    return calls


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_each_stage_is_one_library_call(name: str) -> None:
    """parse params -> one run_* call in imgclf -> print: logic belongs in the library."""
    path = module_file(stage_module(dvc_stages()[name]))
    calls = run_calls(path)
    assert len(calls) == 1, f"{path.name} calls {calls or 'no run_* function'}"
    defined = {
        n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)
    }
    assert calls[0] not in defined, f"{path.name} defines {calls[0]} itself"


# ------------------------------------------------------------------------ DVC params, libraries

# Where runs go is no stage's param: moving the MLflow store reruns nothing (config.MlflowParams).
NOT_STAGE_PARAMS = {"mlflow"}
# Their results move with pinned library versions: decoders, hashes, TensorFlow, packaged weights.
ON_PINNED_LIBRARIES = {"download", "dedupe", "pretrained", "train", "evaluate"}


def parents_of(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def bound_to_params(call: ast.Call, parents: dict[ast.AST, ast.AST]) -> bool:
    """`params = load_params()` or `params, paths = load_params(), Paths()`."""
    value, assign = call, parents[call]
    if isinstance(assign, ast.Tuple):
        value, assign = assign, parents[assign]
    if not (isinstance(assign, ast.Assign) and len(assign.targets) == 1):
        return False
    target = assign.targets[0]
    if value is not call:
        if not isinstance(target, ast.Tuple) or len(target.elts) != len(value.elts):
            return False
        target = target.elts[value.elts.index(call)]
    return isinstance(target, ast.Name) and target.id == "params"


def params_read(path: Path) -> set[str]:
    """The `params.<section>[.<key>…]` chains a stage reads, each without the chains a shorter
    one covers. The whole params object must never leave the stage: it would hide what is read."""
    tree = ast.parse(path.read_text())
    parents = parents_of(tree)
    chains: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_params":
            assert bound_to_params(node, parents), f"{path.name}: bind load_params() to `params`"
        if not (isinstance(node, ast.Name) and node.id == "params"):
            continue
        if isinstance(node.ctx, ast.Store):
            continue
        names = []
        while isinstance(parents[node], ast.Attribute):
            node = parents[node]
            names.append(node.attr)
        assert names, f"{path.name} passes the whole params object (line {node.lineno})"
        chains.add(".".join(names))
    return {c for c in chains if not any(c.startswith(other + ".") for other in chains)}


def declared_params(stage: dict) -> set[str]:
    declared = stage.get("params", [])
    assert all(isinstance(entry, str) for entry in declared), "params come from params.yaml"
    return set(declared)


def stage_params(path: Path) -> set[str]:
    """What a stage's dvc.yaml `params:` must say: what it reads, less where runs go."""
    return {c for c in params_read(path) if c.split(".")[0] not in NOT_STAGE_PARAMS}


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_a_stage_declares_exactly_the_params_it_reads(name: str) -> None:
    stage = dvc_stages()[name]
    read, declared = stage_params(module_file(stage_module(stage))), declared_params(stage)
    assert read == declared, f"stage {name!r} reads params {sorted(read)}, declares {declared}"


def uses_load_params(path: Path) -> bool:
    return any(
        (isinstance(node, ast.alias) and node.name == "load_params")
        or (isinstance(node, ast.Attribute) and node.attr == "load_params")
        for node in ast.walk(ast.parse(path.read_text()))
    )


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_only_the_stage_loads_params(name: str) -> None:
    """A library module calling load_params() could read any section behind dvc.yaml's back."""
    stage_file = module_file(stage_module(dvc_stages()[name]))
    loaders = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in transitive_files(stage_file)
        if path not in (stage_file, PACKAGE / "config.py") and uses_load_params(path)
    )
    assert not loaders, f"stage {name!r} runs modules that load params themselves: {loaders}"


def test_a_library_loading_params_is_seen(tmp_path: Path) -> None:
    late, dotted = tmp_path / "late.py", tmp_path / "dotted.py"
    late.write_text("def f():\n    from imgclf.config import load_params\n")
    dotted.write_text("from imgclf import config\n\nsection = config.load_params().train\n")
    assert uses_load_params(late) and uses_load_params(dotted)
    assert not uses_load_params(PACKAGE / "model" / "training.py")


def test_the_params_check_sees_keys_sections_and_the_whole_object(tmp_path: Path) -> None:
    stage = tmp_path / "probe.py"
    stage.write_text(
        "params, paths = load_params(), Paths()\n"
        "run_x(paths, params.train, params.download.classes, params.mlflow)\n"
        "print(params.train.arch, params.evaluate.batch_size, params.mlflow.experiment)\n"
    )
    assert stage_params(stage) == {"train", "download.classes", "evaluate.batch_size"}
    for whole in (
        "params = load_params()\nrun_x(Paths(), params)\n",
        "run_x(Paths(), load_params())\n",
        "settings = load_params()\nrun_x(Paths(), settings.train)\n",
    ):
        stage.write_text(whole)
        with pytest.raises(AssertionError, match="params"):
            params_read(stage)


def test_the_params_check_fails_on_a_wrong_dvc_yaml() -> None:
    stage = dvc_stages()["train"]
    wrong = {**stage, "params": []}  # train forgotten
    read = stage_params(module_file(stage_module(stage)))
    assert read - declared_params(wrong) == {"train"}


def missing_requirements(stages: dict[str, dict]) -> list[str]:
    return sorted(n for n in ON_PINNED_LIBRARIES if "requirements.txt" not in stages[n]["deps"])


def test_stages_on_pinned_libraries_depend_on_requirements_txt() -> None:
    assert not missing_requirements(dvc_stages())


def test_the_requirements_check_fails_on_a_wrong_dvc_yaml() -> None:
    stages = dvc_stages()
    deps = [dep for dep in stages["pretrained"]["deps"] if dep != "requirements.txt"]
    assert missing_requirements({**stages, "pretrained": {"deps": deps}}) == ["pretrained"]
