"""The family registry: each family file declares itself once; the declarations are read without imports."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from probing.models import ADAPTERS, TINY_NAMES
from probing.models.family import Family
from probing.models.registry import _declaration, adapter_class, families, family_module, module_path
from probing.models.tiny_parts import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(families()))
def test_each_family_file_holds_what_it_declares(name):
    declared = families()[name]
    module = family_module(name)
    assert module.FAMILY == declared  # the registry read the same declaration the module builds
    adapter = adapter_class(name)
    assert adapter.family == name and adapter.pipeline_classes == declared.pipelines
    assert all(ADAPTERS[p] == f"{module_path(name)}:{declared.adapter}" for p in declared.pipelines)
    if declared.tiny:
        assert callable(module.build_tiny_pipeline) and declared.tiny in TINY_NAMES
    if declared.reference_config:
        assert (CONFIG_DIR / f"{declared.reference_config}.json").is_file()


def test_listing_order_and_names_are_unique():
    names = [f.tiny for f in families().values() if f.tiny]
    assert names == list(TINY_NAMES) and len(set(names)) == len(names)
    pipelines = [p for f in families().values() for p in f.pipelines]
    assert len(set(pipelines)) == len(pipelines)


def test_a_declaration_is_read_from_source_and_must_use_keywords(tmp_path):
    good = tmp_path / "newfamily.py"
    good.write_text('import torch\n\nFAMILY = Family(name="new", adapter="NewModel", pipelines=("NewPipeline",), '
                    'tiny="tiny-new")\n\nclass NewModel: ...\n')
    assert Family(**_declaration(good)) == Family("new", "NewModel", ("NewPipeline",), tiny="tiny-new")
    bad = tmp_path / "bad.py"
    bad.write_text('FAMILY = Family("new", "NewModel", ("NewPipeline",))\n')
    with pytest.raises(SyntaxError, match="keyword arguments"):
        _declaration(bad)
    assert _declaration(tmp_path / "newfamily.py") is not None and _declaration(Path(__file__)) is None


def test_listing_the_families_imports_no_torch():
    code = "import sys, probing.models as m; assert m.TINY_NAMES; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- the import graph ---------------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*REPO.glob("probing/**/*.py"), *REPO.glob("editing/**/*.py")]):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path], family_modules: set[str]) -> set[str]:
    """Every module `name` imports anywhere (functions included), importlib by literal, and the registry's
    dynamic imports (`family_module`, `adapter_class`) as edges to every family module."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call):
            called = getattr(node.func, "id", getattr(node.func, "attr", None))
            if called == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
            elif called in ("family_module", "adapter_class"):
                found |= family_modules
    return {m for m in found if m in known and m != name}


def test_the_import_graph_has_no_cycles_and_probing_never_imports_editing():
    known = _modules()
    family_modules = {module_path(name) for name in families()}
    graph = {name: _imports(name, path, known, family_modules) for name, path in known.items()}
    assert not [n for n, targets in graph.items() if n.startswith("probing") and any(t.startswith("editing")
                                                                                     for t in targets)]
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join(trail[trail.index(target):] + [target])
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    importlib.import_module("probing.models.registry")  # and the registry itself imports cleanly
