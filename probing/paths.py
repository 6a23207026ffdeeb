"""Where melodia's shipped data lives, in a source checkout and in an installed wheel.

Examples:
    >>> from probing.paths import datasets_dir
    >>> (datasets_dir() / "probing").is_dir()
    True
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent


def datasets_dir() -> Path:
    """The `datasets/` folder: the checkout's top-level one, else the copy inside the wheel."""
    for candidate in (_PACKAGE_ROOT.parent / "datasets", _PACKAGE_ROOT / "data" / "datasets"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "melodia's datasets/ folder is missing: reinstall melodia (pip install melodia) "
        "or run from a source checkout"
    )


def package_root() -> Path:
    """The installed `probing` package folder (shipped weights live below it)."""
    return _PACKAGE_ROOT
