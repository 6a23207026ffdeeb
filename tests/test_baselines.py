"""The baselines: edit-friendly DDPM inversion regenerates its source, SDEdit noises by q(z_t|z0), both are seeded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from diffusers import DDIMScheduler

from editing.baselines import ddpm_noise_maps, ddpm_sample, sdedit_noise
from editing.cli import main
from editing.editor import Melodia
from editing.methods import METHODS
from editing.inversion import ddim_sample, partial_schedule
from probing.errors import MelodiaError
from probing.synth import render_clip

PROMPT = "a happy waltz played on violin"
STEPS, T_START = 6, 0.6


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return render_clip("piano", "waltz", "happy", 3)


@pytest.fixture(scope="module")
def z0(untrained_testbed, source) -> torch.Tensor:
    return untrained_testbed.encode_audio(source)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def regenerate(model, z0, prompt: str, guidance: float) -> torch.Tensor:
    maps = ddpm_noise_maps(model, z0, model.encode_prompt([""], 1.0), STEPS, T_START, seeded())
    return ddpm_sample(model, maps, model.encode_prompt([prompt], guidance), STEPS, T_START, guidance)


def test_ddpm_friendly_with_the_source_prompt_regenerates_the_source(untrained_testbed, z0):
    torch.testing.assert_close(regenerate(untrained_testbed, z0, "", 1.0), z0, atol=1e-5, rtol=0)
    torch.testing.assert_close(regenerate(untrained_testbed, z0, "", 3.5), z0, atol=1e-3, rtol=0)  # CFG batch of 2


def test_ddpm_friendly_regeneration_passes_through_independent_samples_of_q(untrained_testbed, z0):
    model, empty = untrained_testbed, untrained_testbed.encode_prompt([""], 1.0)
    scheduler, timesteps = partial_schedule(model, STEPS, T_START)
    generator = seeded(3)
    drawn = [scheduler.add_noise(z0, torch.randn(z0.shape, generator=generator), t[None]) for t in timesteps]
    visited = []
    ddpm_sample(model, ddpm_noise_maps(model, z0, empty, STEPS, T_START, seeded(3)), empty, STEPS, T_START,
                on_step=lambda _, t, latents: visited.append(latents))
    assert len(visited) == len(drawn) == 4
    for latents, expected in zip(visited, drawn):
        torch.testing.assert_close(latents, expected, atol=1e-5, rtol=0)


def test_ddpm_friendly_with_another_prompt_edits(untrained_testbed, z0):
    assert (regenerate(untrained_testbed, z0, PROMPT, 3.5) - z0).abs().mean() > 0.1


def test_ddpm_friendly_maps_follow_the_schedulers_prediction_type(untrained_testbed, z0, monkeypatch):
    epsilon = ddpm_noise_maps(untrained_testbed, z0, untrained_testbed.encode_prompt([""], 1.0), STEPS, T_START,
                              seeded())
    config = untrained_testbed.scheduler.config
    monkeypatch.setattr(untrained_testbed.pipeline, "scheduler",
                        DDIMScheduler.from_config(config, prediction_type="epsilon" if config.prediction_type ==
                                                  "v_prediction" else "v_prediction"))
    maps = ddpm_noise_maps(untrained_testbed, z0, untrained_testbed.encode_prompt([""], 1.0), STEPS, T_START,
                           seeded())
    assert len(maps.noise) == round(STEPS * T_START) and torch.equal(maps.start, epsilon.start)
    assert not torch.allclose(maps.noise[0], epsilon.noise[0], atol=1e-2)  # the model output was read as the other type
    torch.testing.assert_close(regenerate(untrained_testbed, z0, "", 1.0), z0, atol=1e-5, rtol=0)


def test_sdedit_noises_by_q_at_the_first_timestep_of_the_partial_sampler(untrained_testbed, z0):
    scheduler, timesteps = partial_schedule(untrained_testbed, STEPS, T_START)
    alpha_bar = scheduler.alphas_cumprod[timesteps[0]]
    expected = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * torch.randn(z0.shape, generator=seeded(7))
    torch.testing.assert_close(sdedit_noise(untrained_testbed, z0, STEPS, T_START, seeded(7)), expected)
    first = []
    ddim_sample(untrained_testbed, z0, untrained_testbed.encode_prompt([""], 1.0), STEPS, T_START,
                on_step=lambda index, t, _: first.append(t) if index == 0 else None)
    assert first == [timesteps[0]]


def test_sdedit_keeps_the_source_at_a_small_t_start_and_leaves_it_at_1(untrained_testbed, z0):
    target = untrained_testbed.encode_prompt([PROMPT], 3.5)

    def moved(t_start: float) -> float:
        noisy = sdedit_noise(untrained_testbed, z0, 10, t_start, seeded())
        return float((ddim_sample(untrained_testbed, noisy, target, 10, t_start, 3.5) - z0).abs().mean())

    near, far = moved(0.1), moved(1.0)
    assert near < 0.2 and far > 10 * near


@pytest.mark.parametrize("method", ["sdedit", "ddpm-friendly"])
def test_baselines_are_seeded_and_inject_nothing(untrained_testbed, source, method):
    editor = Melodia(untrained_testbed)
    first, again, other = (editor.edit(source, PROMPT, method=method, steps=4, seed=seed) for seed in (1, 1, 2))
    assert np.array_equal(first.audio, again.audio) and not np.allclose(first.audio, other.audio)
    assert first.injected == [] and first.settings.layers == "none" and first.repository_bytes["measured"] == 0
    assert first.audio.shape == source.shape and np.isfinite(first.audio).all()


def test_cli_edits_with_sdedit_and_refuses_an_unknown_method(capsys, tmp_path, untrained_testbed_dir, source):
    sf.write(tmp_path / "src.wav", source, 16000)
    out = tmp_path / "sdedit.wav"
    args = ["edit", str(tmp_path / "src.wav"), "--to", PROMPT, "--model", untrained_testbed_dir, "--steps", "4"]
    assert main([*args, "-o", str(out), "--method", "sdedit"]) == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["method"] == "sdedit" and sidecar["injected_modules"] == []
    assert sf.info(out).frames == len(source)
    with pytest.raises(SystemExit) as exit_:
        main([*args, "-o", str(tmp_path / "bogus.wav"), "--method", "bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'bogus'" in err
    assert all(method in err for method in METHODS) and not (tmp_path / "bogus.wav").exists()


def test_the_editor_passes_the_source_prompt_to_ddpm_friendly(untrained_testbed, source):
    editor = Melodia(untrained_testbed)
    described = editor.edit(source, PROMPT, method="ddpm-friendly", steps=STEPS, t_start=T_START, guidance=3.5,
                            source_prompt=PROMPT, source_guidance=3.5)
    codec_round_trip = untrained_testbed.decode(untrained_testbed.encode_audio(source))
    np.testing.assert_allclose(described.audio, codec_round_trip, atol=2e-3)  # same prompt both ways: the source
    undescribed = editor.edit(source, PROMPT, method="ddpm-friendly", steps=STEPS, t_start=T_START, guidance=3.5)
    assert np.abs(undescribed.audio - codec_round_trip).mean() > 10 * np.abs(described.audio - codec_round_trip).mean()
    assert described.settings.source_prompt == PROMPT
    with pytest.raises(MelodiaError, match="ddpm-friendly and flowedit only"):
        editor.edit(source, PROMPT, method="melodia", source_prompt="a piano waltz")
