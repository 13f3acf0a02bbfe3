"""The scripts under experiments/ are not run by the suite; a static check keeps them from rotting silently.

Every ``from two_tower... import NAME`` in an experiments/**/*.py names a module that exists and a name that
module defines (or imports, or a submodule), and every ``experiment=NAME`` that a run.sh or README.md under
experiments/ passes to a command names a config of conf/experiment. Read from the source (ast), nothing
imported: a refactor that moves a module, renames a function or an experiment config fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
SCRIPTS = sorted(EXPERIMENTS.rglob("*.py"))


def module_file(module: str) -> Path | None:
    """The source file of a two_tower module (a package's __init__.py), found without importing it."""
    parts = module.split(".")
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def defined_names(module: str) -> frozenset[str]:
    """Names bound at the top level of ``module``'s source (defs, classes, assignments, imports)."""
    tree = ast.parse(module_file(module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return frozenset(names)


def project_imports(script: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of a two_tower module in ``script`` (name None: ``import module``)."""
    found = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "two_tower":
            found.extend((node.lineno, node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "two_tower")
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_script_imports_name_what_the_package_has(script):
    missing = []
    for line, module, name in project_imports(script):
        if module_file(module) is None:
            missing.append(f"line {line}: no module {module}")
        elif name not in (None, "*") and name not in defined_names(module) and module_file(f"{module}.{name}") is None:
            missing.append(f"line {line}: {module} has no {name}")
    assert not missing, f"{script.relative_to(ROOT)}: " + "; ".join(missing)


def test_experiment_configs_named_under_experiments_exist():
    configs = {p.stem for p in (ROOT / "two_tower" / "conf" / "experiment").glob("*.yaml")}
    unknown = []
    for path in sorted(EXPERIMENTS.rglob("run.sh")) + sorted(EXPERIMENTS.rglob("*.md")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not re.search(r"(train|evaluate|index|untrained|triplet_flatline)\.py", line):
                continue  # prose may name a recipe by its old name ("experiment=best when it ran")
            command = line.split("#")[0]
            for value in re.findall(r"(?<![\w.])experiment=([\w,]+)", command):
                unknown += [f"{path.relative_to(ROOT)}:{number}: experiment={name}" for name in value.split(",") if name not in configs]
    assert not unknown, "no such conf/experiment/*.yaml: " + ", ".join(unknown)


def test_the_module_lookup_finds_what_python_finds():
    """The static lookup agrees with the import system on a module, a package and a submodule."""
    for module in ("two_tower.cli.common", "two_tower.retrieval", "two_tower.core.metrics"):
        assert module_file(module) is not None and importlib.util.find_spec(module) is not None
    assert module_file("two_tower.no_such_module") is None
    assert "compose" in defined_names("two_tower.cli.common")
