"""The house rules, read from the source: imports point one way, and every module a DVC stage runs
is one of its deps (so no edit can leave a result stale)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = REPO_ROOT / "imgclf"

# What each part of the library may import, besides itself. The base (config, io, tracking) is
# below everything; the lifecycle runs data <- model <- evaluation <- registry; serving reads the
# model, the registry, the standardisation and the prediction-log schema; nothing imports the CLI.
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
    | {"imgclf.data.standardise", "imgclf.model", "imgclf.registry", "imgclf.monitoring.schema"},
    "imgclf.cli": BASE | {"imgclf"},
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
    """Every imgclf module `path` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from imgclf.data import sources` imports the submodule when there is one.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "imgclf" and module_file(name))
    return frozenset(found)


def transitive_files(entry: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in direct_imports(path):
            todo.append(module_file(name))
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
            parts = name.split(".")
            todo.extend(module_file(".".join(parts[:i])) for i in range(1, len(parts)))
    return seen


def rule_for(module: str) -> tuple[str, set[str]]:
    owner = max((key for key in ALLOWED if module == key or module.startswith(key + ".")), key=len)
    return owner, ALLOWED[owner]


def library_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", library_modules(), ids=lambda p: module_name(p))
def test_imports_point_one_way(path: Path) -> None:
    owner, allowed = rule_for(module_name(path))
    for target in direct_imports(path):
        if target == "imgclf" or target == owner or target.startswith(owner + "."):
            continue
        assert any(target == ok or target.startswith(ok + ".") for ok in allowed), (
            f"{module_name(path)} imports {target}: {owner} may import only {sorted(allowed)}"
        )


def test_the_rule_catches_a_reversed_import(tmp_path: Path) -> None:
    """The checker itself: a data module importing serving breaks the rule."""
    _, allowed = rule_for("imgclf.data.sources")
    assert "imgclf.serving" not in allowed
    assert not any("imgclf.serving.app".startswith(ok) for ok in allowed)
    owner, allowed = rule_for("imgclf.monitoring.drift")
    assert owner == "imgclf.monitoring" and "imgclf.serving" not in allowed


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def stage_entry(stage: dict) -> Path:
    command = stage["cmd"].split()
    assert command[:2] == ["python", "-m"], stage["cmd"]
    return module_file(command[2])


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(REPO_ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_every_module_a_stage_runs_is_one_of_its_deps(name: str) -> None:
    stage = dvc_stages()[name]
    deps = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in stage.get("deps", [])]
    missing = sorted(
        str(path.relative_to(REPO_ROOT))
        for path in transitive_files(stage_entry(stage))
        if not covered(path, deps)
    )
    assert not missing, f"dvc.yaml stage {name!r} runs these but does not depend on them: {missing}"


def test_the_deps_check_sees_function_level_imports() -> None:
    """evaluate's forward pass is imported inside a function; it must still count."""
    files = transitive_files(stage_entry(dvc_stages()["evaluate"]))
    assert PACKAGE / "config.py" in files
    assert any(path.parent.name == "model" for path in files)
