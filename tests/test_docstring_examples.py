"""The docstring examples that state a result run and give it (doctest, with the module's globals).

An example with no stated result shows a call on the reader's own objects (a pipeline, audio, a
rows file) and is not run here; every example that prints a value, a shape or an error must be
true of the code. Each docstring runs in an empty folder; one that opens "maps.zarr" finds there the
store that probing.capture's example writes (the testbed, `testbed-small.yaml`, 2 steps).
Some examples change process-wide state (`configure_threads(2)` sets MELODIA_THREADS, OMP_NUM_THREADS
and torch's thread count); the environment and torch's thread count are put back after each docstring,
so the tests that run later keep one thread.
"""
from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
from pathlib import Path

import pytest
import torch

PACKAGES = ("probing", "editing")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + ".")]
    return names


def _stated_results() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder()
    tests = []
    for name in _module_names():
        for test in finder.find(importlib.import_module(name)):
            if any(example.want or example.exc_msg for example in test.examples):
                tests.append(test)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _stated_results()


def _opens_store(test: doctest.DocTest) -> bool:
    return any('open_capture("maps.zarr")' in example.source for example in test.examples)


def _run(test: doctest.DocTest, folder: Path) -> str:
    """Run `test` with `folder` as the working directory; '' if every example held, else doctest's report."""
    report: list[str] = []
    previous, environment, threads = os.getcwd(), dict(os.environ), torch.get_num_threads()
    os.chdir(folder)
    try:
        result = doctest.DocTestRunner(optionflags=FLAGS).run(test, out=report.append, clear_globs=True)
    finally:
        os.chdir(previous)
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)
    return "" if result.failed == 0 else f"{test.name} ({test.filename}:{test.lineno}):\n" + "".join(report)


@pytest.fixture(scope="session")
def capture_example(tmp_path_factory) -> tuple[Path, str]:
    """probing.capture's example, run once: the folder it wrote maps.zarr into, and its report."""
    folder = tmp_path_factory.mktemp("doctest-store")
    return folder, _run(next(t for t in DOCTESTS if t.name == "probing.capture"), folder)


def test_examples_are_found():
    names = {test.name for test in DOCTESTS}
    assert {"probing.capture", "probing.store.ArraySpec", "editing.metrics.balance"} <= names, names
    assert len(DOCTESTS) > 50


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest, tmp_path, request):
    if test.name == "probing.capture":
        failure = request.getfixturevalue("capture_example")[1]
    else:
        if _opens_store(test):
            store = request.getfixturevalue("capture_example")[0] / "maps.zarr"
            (tmp_path / "maps.zarr").symlink_to(store, target_is_directory=True)
        failure = _run(test, tmp_path)
    assert not failure, failure
