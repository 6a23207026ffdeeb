"""Editing Stable Audio Open (tiny-stable-audio, random weights): its EDM probability-flow ODE in sigma.

What holds for every kind (injection off = the baseline, Q/K injected at matching timesteps for both CFG
halves): tests/test_editor.py, parametrized over this model too.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from editing.cli import main
from editing.editor import Melodia
from editing.flow import flow_invert, flow_sample
from probing.errors import MelodiaError
from probing.models import load_model


@pytest.fixture(scope="module")
def model():
    return load_model("tiny-stable-audio")


@pytest.fixture(scope="module")
def z0(model) -> torch.Tensor:
    wave = 0.1 * np.random.default_rng(0).standard_normal(model.window_samples).astype(np.float32)
    return model.encode_audio(wave)


def test_the_denoised_estimate_is_the_schedulers_own_preconditioning_at_every_sigma(model, z0):
    """D = x - sigma dx/dsigma must equal what CosineDPMSolverMultistepScheduler makes of the DiT's output
    (c_in on the input, c_noise as the timestep, c_skip/c_out on the output): a wrong conversion fails."""
    scheduler = type(model.scheduler).from_config(model.scheduler.config)
    scheduler.set_timesteps(6)
    cond = model.encode_prompt(["a sad waltz on violin"], guidance=3.0)
    sigmas = model.flow_sigmas(6)
    assert torch.equal(sigmas[:-1], scheduler.sigmas[:-1]) and sigmas[-1] == 0
    assert model.sampling_timesteps(6) == [float(t) for t in scheduler.timesteps]  # capture's keys
    generator = torch.Generator().manual_seed(1)
    for index, (sigma, t) in enumerate(zip(sigmas[:-1], scheduler.timesteps)):
        x = z0 + sigma * torch.randn(z0.shape, generator=generator)
        scheduler._step_index = index
        with torch.no_grad():
            out = model.denoise_call(scheduler.scale_model_input(torch.cat([x, x]), t), t, cond)
            uncond, text = out.chunk(2)
            expected = scheduler.convert_model_output(uncond + 3.0 * (text - uncond), sample=x)
            ours = x - sigma * model.predict_noise(x, model.timestep_for(sigma), cond, guidance=3.0)
        torch.testing.assert_close(ours, expected, atol=1e-4 * float(x.abs().max()), rtol=1e-4)


def test_inversion_then_sampling_returns_the_latent(model, z0):
    empty = model.encode_prompt([""], guidance=1.0)
    for t_start in (0.6, 1.0):
        zt = flow_invert(model, z0, empty, steps=25, t_start=t_start)
        again = flow_sample(model, zt, empty, steps=25, t_start=t_start)
        error = float((again - z0).norm() / z0.norm())
        assert float((zt - z0).norm() / z0.norm()) > 10 and error < 0.03, error  # went to high noise, came back
    explicit = flow_sample(model, flow_invert(model, z0, empty, steps=25, refine=0), empty, steps=25)
    assert float((explicit - z0).norm() / z0.norm()) > 0.3  # what the fixed-point refinement buys


def test_sdedit_starts_on_the_variance_exploding_path(model, z0):
    from editing.flow import flow_sdedit_noise, partial_sigmas

    start = flow_sdedit_noise(model, z0, steps=10, t_start=0.5, generator=torch.Generator().manual_seed(0))
    sigma = partial_sigmas(model, 10, 0.5)[0]
    noise = (start - z0) / sigma
    assert 0.8 < float(noise.std()) < 1.2  # z0 + sigma eps, not (1 - sigma) z0 + sigma eps


def test_the_cli_edits_with_melodia_inversion_and_sdedit_and_refuses_flowedit(capsys, tmp_path, model):
    source = tmp_path / "src.wav"
    sf.write(source, 0.2 * np.sin(2 * np.pi * 440 * np.arange(model.window_samples) / 44100).astype(np.float32), 44100)
    for method in ("melodia", "inversion", "sdedit"):
        out = tmp_path / f"{method}.wav"
        code = main(["edit", str(source), "--model", "tiny-stable-audio", "--to", "violin", "--method", method,
                     "--steps", "4", "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        audio, rate = sf.read(out)
        assert rate == 44100 and audio.shape == (model.window_samples,) and np.isfinite(audio).all()
    capsys.readouterr()
    code = main(["edit", str(source), "--model", "tiny-stable-audio", "--to", "violin", "--method", "flowedit",
                 "-o", str(tmp_path / "x.wav")])
    assert code == 2 and "EDM" in capsys.readouterr().err and not (tmp_path / "x.wav").exists()


def test_the_default_band_is_the_papers_depth(model):
    assert model.default_edit_layers == "self:1-2"  # 2 tiny blocks; 24 real ones: self:11-21
    assert len(Melodia(model).injected_modules("auto")) == 2
    with pytest.raises(MelodiaError, match="bad layer spec"):
        Melodia(model).injected_modules("self:3")
