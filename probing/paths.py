"""Where melodia's shipped data lives (checkout or wheel), and how its outputs reach the disk whole.

Examples:
    >>> from probing.paths import datasets_dir
    >>> (datasets_dir() / "probing").is_dir()
    True
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent
# The shipped, trained testbeds: model name -> weights folder inside probing/testbed/ (probing.models lists
# these names, probing.testbed.build.testbed_weights_dir resolves them).
SHIPPED_WEIGHTS = {"testbed": "weights", "testbed-v2": "weights_v2", "testbed-dit": "weights_dit"}


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


@contextmanager
def atomic_output(path: str | Path, suffix: str):
    """Yield a temporary path beside `path`; on success rename it onto `path`, else remove it.

    Examples:
        >>> with atomic_output("out/cmp.png", ".png") as tmp:
        ...     figure.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make every output private to its writer
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON at `path`, through `atomic_output`: never half-written.

    Examples:
        >>> write_json("out/profile.json", {"version": 1})
    """
    with atomic_output(path, ".json") as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))
