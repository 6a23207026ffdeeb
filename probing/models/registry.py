"""The family registry: every model family declares itself once, in its own file, as `FAMILY = Family(...)`.

The declarations are read from the family files' source (the literal `FAMILY = Family(...)`
assignment), not by importing them: the CLI answers `--help` and a misspelt model name without
loading torch, and only the family a model needs is imported. A test imports every family file
and checks that its `FAMILY` object equals what the registry read.

Adding a family is one file in probing/models/ (adapter class, `FAMILY`, and for a tiny model a
`build_tiny_pipeline(seed)`) plus its tests; see docs/flow-models.md. The declaration type lives
in probing.models.family, which imports nothing, so family files never import this module back.

Examples:
    >>> families()["audioldm2"].pipelines
    ('AudioLDM2Pipeline',)
    >>> family_of_pipeline("StableAudioPipeline").name, tiny_names()[:2]
    ('stable-audio', ('tiny-audioldm2', 'tiny-stable-audio'))
"""
from __future__ import annotations

import ast
import importlib
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from probing.models.family import Family

FOLDER = Path(__file__).resolve().parent


def _declaration(path: Path) -> dict | None:
    """The keyword arguments of `FAMILY = Family(...)` in `path`, or None when it declares no family."""
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["FAMILY"]
                and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "Family"):
            if node.value.args:
                raise SyntaxError(f"{path}: declare FAMILY = Family(...) with keyword arguments only")
            return {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.value.keywords}
    return None


@lru_cache(maxsize=1)
def _read() -> tuple[dict[str, Family], dict[str, str]]:
    found, modules = {}, {}
    for path in sorted(FOLDER.glob("*.py")):
        declared = _declaration(path)
        if declared is None:
            continue
        family = Family(**declared)
        if family.name in found:
            raise RuntimeError(f"model family {family.name!r} is declared twice ({modules[family.name]}, {path.stem})")
        found[family.name], modules[family.name] = family, f"probing.models.{path.stem}"
    ordered = dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))
    return ordered, modules


def family_module(name: str) -> ModuleType:
    """The module that declares family `name` (imported now)."""
    return importlib.import_module(_read()[1][name])


def module_path(name: str) -> str:
    """The dotted name of the module that declares family `name` (not imported)."""
    return _read()[1][name]


def adapter_class(name: str) -> type:
    """Family `name`'s adapter class (its module imported now)."""
    return getattr(family_module(name), families()[name].adapter)


def families() -> dict[str, Family]:
    """Every declared family by name, in listing order."""
    return dict(_read()[0])


def family_of_pipeline(class_name: str) -> Family | None:
    """The family serving diffusers pipeline class `class_name`, or None."""
    return next((f for f in families().values() if class_name in f.pipelines), None)


def tiny_names() -> tuple[str, ...]:
    """The offline tiny models' names, in listing order."""
    return tuple(f.tiny for f in families().values() if f.tiny)


def family_of_tiny(name: str) -> Family:
    """The family whose tiny model is `name` (ValueError naming the known ones otherwise)."""
    for family in families().values():
        if family.tiny == name:
            return family
    raise ValueError(f"unknown tiny model {name!r}: expected one of {', '.join(tiny_names())}")


def reference_configs() -> dict[str, Family]:
    """Pinned real-checkpoint denoiser configs by config name, with the family that declares each."""
    return {f.reference_config: f for f in families().values() if f.reference_config}
