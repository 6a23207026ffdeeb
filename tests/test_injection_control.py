"""The injection specificity control (editing/injection_control.py), mechanically, on random weights.

Whether it sees an effect on trained weights: tests/test_testbed_weights.py (the DiT positive control).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editing.injection_control import (CONTROLS, PAIRS, FlatQueries, MirroredTimesteps, specificity_differences,
                                       specificity_rows)
from editing.repository import AttentionRepository
from probing.errors import MelodiaError
from probing.synth import render_clip

PROMPTS = ["a happy waltz played on violin", "a calm march played on flute"]


@pytest.fixture(scope="module")
def sources() -> list[np.ndarray]:
    return [render_clip("piano", "waltz", "happy", 3), render_clip("violin", "march", "calm", 4)]


def test_mirrored_timesteps_serve_the_other_end_of_the_schedule():
    with AttentionRepository() as repository:
        for t in (1.0, 2.0, 3.0):
            repository.put(t, "a", torch.full((1, 2), t), torch.full((1, 2), -t))
        mirrored = MirroredTimesteps(repository)
        assert [float(mirrored.get(t, "a")[0][0, 0]) for t in (1.0, 2.0, 3.0)] == [3.0, 2.0, 1.0]
        assert float(mirrored.get(1.0, "a")[1][0, 0]) == -3.0


def test_flat_queries_make_every_attention_row_uniform():
    with AttentionRepository() as repository:
        repository.put(1.0, "a", torch.randn(1, 5, 8), torch.randn(1, 5, 8))
        query, key = FlatQueries(repository).get(1.0, "a")
        assert torch.equal(key, repository.get(1.0, "a")[1])
        rows = torch.softmax(query @ key.transpose(-1, -2), dim=-1)
        assert torch.allclose(rows, torch.full_like(rows, 1 / 5))


def test_with_no_layer_injected_every_control_is_the_same_edit(untrained_testbed_dit, sources):
    rows = specificity_rows(untrained_testbed_dit, sources, PROMPTS, t_start=0.8, steps=3, layers="none",
                            progress=False)
    for row in rows:
        assert len({row[c] for c in CONTROLS}) == 1 and len({row[c + "_distance"] for c in CONTROLS}) == 1
        assert all(row[c + "_shift"] == 0.0 for c in CONTROLS)
    assert all(d["mean"] == 0.0 for d in specificity_differences(rows))


def test_each_injected_control_feeds_different_qk(untrained_testbed_dit, sources):
    rows = specificity_rows(untrained_testbed_dit, sources, PROMPTS, t_start=0.8, steps=3, progress=False)
    for row in rows:  # own, mirrored, foreign and flat Q/K differ, so do the edits (random weights: by a little)
        assert len({row[c + "_distance"] for c in CONTROLS}) == 5, row
        assert row["none_shift"] == 0.0 and all(row[c + "_shift"] > 0 for c in CONTROLS if c != "none"), row
    assert [r["prompt"] for r in rows] == PROMPTS
    flat_shift = next(d for d in specificity_differences(rows) if (d["pair"], d["metric"]) == ("flat - none", "shift"))
    assert flat_shift["mean"] == pytest.approx(np.mean([r["flat_shift"] for r in rows]))
    assert {(d["pair"], d["metric"]) for d in specificity_differences(rows)} == {
        (f"{a} - {b}", m) for a, b in PAIRS for m in ("chroma", "distance", "shift")}


def test_one_source_or_a_missing_prompt_is_refused(untrained_testbed_dit, sources):
    with pytest.raises(MelodiaError, match="two or more sources with one prompt each"):
        specificity_rows(untrained_testbed_dit, sources[:1], PROMPTS[:1], t_start=0.8, steps=3)
    with pytest.raises(MelodiaError, match="got 2 sources and 1 prompts"):
        specificity_rows(untrained_testbed_dit, sources, PROMPTS[:1], t_start=0.8, steps=3)
