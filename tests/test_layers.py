"""The package's layers (docs/layout.md): no package imports one above it, and core imports nothing of
the project's. The contract is the `[tool.importlinter]` layers contract in pyproject.toml."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib

import grimp

from tests.conftest import ROOT


def layer_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_package"] == "two_tower"
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract


def test_every_package_is_in_a_layer():
    """A package left out of the contract would be checked by nothing."""
    named = {name.strip() for layer in layer_contract()["layers"] for name in layer.split("|")}
    packages = {f"two_tower.{p.name}" for p in (ROOT / "two_tower").iterdir() if (p / "__init__.py").is_file()}
    modules = {f"two_tower.{p.stem}" for p in (ROOT / "two_tower").glob("*.py") if p.name != "__init__.py"}
    assert packages == named and not modules


def test_no_package_imports_a_layer_above_it():
    """The same check as `lint-imports`, with grimp (import-linter's engine): always runs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import json, sys, grimp\n"
        "layers = [grimp.Layer(*[n.strip() for n in l.split('|')], independent=True) for l in json.loads(sys.argv[1])]\n"
        "graph = grimp.build_graph('two_tower', cache_dir=None)\n"
        "for dep in sorted(graph.find_illegal_dependencies_for_layers(layers=layers), key=str):\n"
        "    for route in dep.routes: print(dep.importer, '->', dep.imported, ':', ' -> '.join(route.heads), '...', ' -> '.join(route.tails))\n"
    )
    import json

    result = subprocess.run([sys.executable, "-c", code, json.dumps(layer_contract()["layers"])], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "", "imports that go up a layer:\n" + result.stdout


def test_lint_imports_keeps_the_contract():
    """`lint-imports` itself (import-linter, in the [dev] extra) on pyproject.toml's contract."""
    if importlib.util.find_spec("importlinter") is None:
        import pytest

        pytest.skip("import-linter is not installed (pip install -e '.[dev]' installs it)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())", "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 kept, 0 broken" in result.stdout
