"""Atomic outputs: never half-written, and readable like any file the user writes."""
from __future__ import annotations

import pytest

from probing.paths import atomic_output, write_json


def test_an_atomic_output_has_the_permissions_of_a_normally_written_file(tmp_path):
    write_json(tmp_path / "atomic.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    mode = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("atomic.json", "plain.json")}
    assert mode["atomic.json"] == mode["plain.json"]


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "out.png", ".png") as tmp:
            open(tmp, "w").write("partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
