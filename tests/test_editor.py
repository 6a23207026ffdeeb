"""The Melodia editor: injection is exactly the source's Q/K, off means the DDIM baseline, bad input fails early.

The other baselines: tests/test_baselines.py; long sources in windows: tests/test_windows.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from editing.editor import Melodia
from editing.injection import inject_source_qk, record_source_qk
from editing.flow import ode_samplers
from editing.repository import AttentionRepository
from probing.errors import MelodiaError
from probing.hooks import AttentionHooks
from probing.synth import render_clip

PROMPT = "a happy waltz played on violin"


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return render_clip("piano", "waltz", "happy", 3)


@pytest.fixture(scope="module")
def editor(untrained_testbed) -> Melodia:
    return Melodia(untrained_testbed)


# Every kind of model: the UNet testbed (DDIM inversion), the DiT testbed (flow ODE inversion) and Stable
# Audio Open (its EDM ODE in sigma, inverted with fixed-point refinement).
KINDS = pytest.mark.parametrize("kind", [("untrained_testbed", "ddim", "self:8-14", 7),
                                         ("untrained_testbed_dit", "inversion", "self:3-5", 3),
                                         ("tiny_stable_audio", "inversion", "self:1-2", 2)],
                                ids=["ddim", "flow", "edm"])


@KINDS
def test_without_injection_the_editor_is_its_baseline_bit_for_bit(kind, source, request):
    fixture, baseline, band, n_modules = kind
    editor = Melodia(request.getfixturevalue(fixture))
    off = editor.edit(source, PROMPT, layers="none", steps=6)
    plain = editor.edit(source, PROMPT, method=baseline, steps=6)
    assert off.injected == [] and np.array_equal(off.audio, plain.audio)
    injected = editor.edit(source, PROMPT, layers=band, steps=6)
    assert len(injected.injected) == n_modules and not np.allclose(injected.audio, plain.audio)


@KINDS
def test_injected_modules_see_the_sources_q_and_k_at_the_same_timesteps(kind, source, request):
    model = request.getfixturevalue(kind[0])
    modules = Melodia(model).injected_modules(kind[2])
    invert, sample = ode_samplers(model)
    z0 = model.encode_audio(source)
    empty, target = model.encode_prompt([""], 1.0), model.encode_prompt([PROMPT], 3.5)
    seen = []
    with AttentionRepository() as repository:
        with record_source_qk(model, modules, repository):
            zt = invert(model, z0, empty, steps=5, t_start=0.6)
        assert len(repository.timesteps()) == 3
        with inject_source_qk(model, modules, repository), \
                AttentionHooks(model, [m.path for m in modules], on_call=seen.append):
            sample(model, zt, target, steps=5, t_start=0.6, guidance=3.5)
        for call in seen:
            query, key = repository.get(call.timestep, call.path)  # KeyError if inversion saw other timesteps
            assert call.query.shape[0] == 2  # both halves of the CFG batch
            torch.testing.assert_close(call.query, query.expand_as(call.query), atol=0, rtol=0)
            torch.testing.assert_close(call.key, key.expand_as(call.key), atol=0, rtol=0)
    assert len(seen) == 3 * len(modules)


def test_the_repository_size_is_predicted_and_spills_to_disk(editor, source):
    result = editor.edit(source, PROMPT, layers="self:1-16", steps=5)
    assert result.repository_bytes["predicted"] == result.repository_bytes["measured"] > 0
    spilling = Melodia(editor.model, memory_budget_mb=0.01)
    spilled = spilling.edit(source, PROMPT, layers="self:1-16", steps=5)
    assert np.array_equal(spilled.audio, result.audio)
    # a refined inversion records each timestep again: the last evaluation replaces the first, in memory and on disk
    refined = editor.edit(source, PROMPT, layers="self:1-16", steps=5, inversion_refinements=2)
    assert refined.repository_bytes == result.repository_bytes
    assert np.array_equal(spilling.edit(source, PROMPT, layers="self:1-16", steps=5, inversion_refinements=2).audio,
                          refined.audio)


def test_a_short_source_is_padded_and_cut_back(editor, source):
    result = editor.edit(source[:30000], PROMPT, steps=4)
    assert result.audio.shape == (30000,) and np.isfinite(result.audio).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"t_start": 0.0}, "t_start must be in"), ({"t_start": 1.2}, "t_start must be in"),
    ({"layers": "self:17"}, "layers 1-16"), ({"layers": "cross:8"}, "only cross-attention"),
    ({"method": "magic"}, "unknown method"), ({"inversion_refinements": -1}, "whole number"),
    ({"inversion_refinements": 1.5}, "whole number"), ({"method": "sdedit", "inversion_refinements": 1}, "does not invert")])
def test_bad_settings_fail_before_any_work(editor, source, kwargs, message):
    with pytest.raises(MelodiaError, match=message):
        editor.edit(source, PROMPT, steps=4, **kwargs)


@pytest.mark.parametrize("wave, message", [
    (np.zeros(65536, np.float32), "silent"), (np.full(65536, np.nan, np.float32), "NaN"),
    (np.ones(10, np.float32) * 0.1, "too short"), (np.ones((2, 65536), np.float32) * 0.1, "mono")])
def test_bad_audio_is_refused(editor, wave, message):
    with pytest.raises(MelodiaError, match=message):
        editor.edit(wave, PROMPT, steps=4)


def test_progress_bars_name_the_method_and_its_layers(editor, source, capsys):
    editor.edit(source, PROMPT, layers="self:8-14", steps=3, progress=True)
    bars = capsys.readouterr().err
    assert "melodia self:8-14: inverting" in bars and "melodia self:8-14: denoising" in bars
    editor.edit(source, PROMPT, method="sdedit", steps=3, progress=True)
    assert "sdedit: denoising" in capsys.readouterr().err


def test_a_timestep_recorded_again_replaces_its_q_and_k_without_counting_them_twice():
    """A refined inversion step (Stable Audio Open) records a module several times per timestep: the last wins."""
    first, last = torch.zeros(1, 4, 8), torch.ones(1, 4, 8)
    with AttentionRepository() as repository:
        repository.put(0.5, "attn1", first, first)
        repository.put(0.5, "attn1", last, last)
        assert repository.nbytes == 2 * last.numel() * last.element_size()
        assert torch.equal(repository.get(0.5, "attn1")[0], last)


def test_a_refined_inversion_changes_the_edit_and_the_sidecar_says_how_it_inverted(editor, source):
    plain = editor.edit(source, PROMPT, method="ddim", steps=4)
    refined = editor.edit(source, PROMPT, method="ddim", steps=4, inversion_refinements=1)
    assert plain.summary()["inversion_refinements"] == 0  # the model's default: the explicit DDIM step
    assert refined.summary()["inversion_refinements"] == 1 and refined.settings.inversion_refinements == 1
    assert not np.allclose(plain.audio, refined.audio)
    assert editor.edit(source, PROMPT, method="sdedit", steps=4).summary()["inversion_refinements"] is None


def test_the_result_names_the_injected_band_as_the_layer_spec_language_does(editor, source):
    result = editor.edit(source, PROMPT, layers="auto", steps=3)  # no profile: the family default
    summary = result.summary()
    assert summary["layers"] == "self:8-14" and summary["injected_layers"] == [f"self:{n}" for n in range(8, 15)]
    assert len(summary["injected_modules"]) == 7
    assert editor.edit(source, PROMPT, layers="none", steps=3).summary()["layers"] == "none"


def test_one_settings_object_or_keywords_give_the_same_edit(editor, source):
    from editing.editor import EditSettings

    settings = EditSettings(PROMPT, layers="self:8-14", steps=6, t_start=0.5, seed=3)
    by_object = editor.edit(source, settings)
    by_keywords = editor.edit(source, PROMPT, layers="self:8-14", steps=6, t_start=0.5, seed=3)
    assert np.array_equal(by_object.audio, by_keywords.audio) and by_object.settings == settings
    overridden = editor.edit(source, settings, t_start=0.7)  # a keyword overrides the object's field
    assert overridden.settings.t_start == 0.7 and not np.array_equal(overridden.audio, by_object.audio)
    with pytest.raises(TypeError, match="unknown settings"):
        editor.edit(source, PROMPT, step=6)


def test_edit_arguments_that_cannot_mean_anything_are_refused(editor, source):
    with pytest.raises(TypeError):
        editor.edit(source, PROMPT, "ddim")  # the method is a keyword: a positional one is not taken as progress
    with pytest.raises(TypeError, match="needs a target"):
        editor.edit(source, steps=6)
    with pytest.raises(TypeError, match="prompt .* or an EditSettings"):
        editor.edit(source, 3)
    assert editor.edit(source, target_prompt=PROMPT, layers="none", steps=2).settings.target_prompt == PROMPT
