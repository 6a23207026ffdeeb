"""DDIM inversion reads every prediction type the way the sampler does.

An exact denoiser for Gaussian data N(mu, c^2) predicts the same thing whichever quantity it is
asked for (noise, v or x0), so inverting with any of them must retrace the epsilon model's path,
and the round trip (invert to noise, sample back) must land where the epsilon model's does.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from editing.inversion import ddim_invert, ddim_sample
from probing.errors import MelodiaError
from probing.models.base import Conditioning

MU, C = 0.3, 0.5
UNGUIDED = Conditioning({}, guided=False)


class GaussianDenoiser:
    """The exact denoiser of N(MU, C^2) data, on the adapter surface the samplers use."""

    device = torch.device("cpu")
    inversion_refinements = 0

    def __init__(self, prediction_type: str):
        self.scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                       steps_offset=1, set_alpha_to_one=False, prediction_type=prediction_type)

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance: float) -> torch.Tensor:
        alpha_bar = self.scheduler.alphas_cumprod[int(t)]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0 = MU + C**2 * alpha * (x - alpha * MU) / (alpha_bar * C**2 + sigma**2)
        eps = (x - alpha * x0) / sigma
        kind = self.scheduler.config.prediction_type
        return {"v_prediction": alpha * eps - sigma * x0, "sample": x0}.get(kind, eps)


@pytest.fixture(scope="module")
def z0() -> torch.Tensor:
    return MU + C * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_inversion_of_any_prediction_type_retraces_the_epsilon_path(prediction_type, z0):
    reference, model = GaussianDenoiser("epsilon"), GaussianDenoiser(prediction_type)
    for t_start in (0.4, 1.0):
        expected = ddim_invert(reference, z0, UNGUIDED, steps=20, t_start=t_start)
        inverted = ddim_invert(model, z0, UNGUIDED, steps=20, t_start=t_start)
        assert (inverted - z0).abs().mean() > 0.1  # it went somewhere
        torch.testing.assert_close(inverted, expected, atol=1e-4, rtol=1e-4)
        back = ddim_sample(model, inverted, UNGUIDED, steps=20, t_start=t_start)
        torch.testing.assert_close(back, ddim_sample(reference, expected, UNGUIDED, steps=20, t_start=t_start),
                                   atol=1e-4, rtol=1e-4)


def test_the_round_trip_undoes_the_inversion(z0):
    model = GaussianDenoiser("v_prediction")
    zt = ddim_invert(model, z0, UNGUIDED, steps=50)
    back = ddim_sample(model, zt, UNGUIDED, steps=50)
    assert (back - z0).abs().mean() < 0.05 * (zt - z0).abs().mean()


def test_fixed_point_refinement_inverts_exactly_what_the_sampler_undoes(z0):
    """Each refinement evaluates the model at the step's own result; the iteration converges to the latent the
    DDIM step maps back exactly, so the round trip's error shrinks with every iteration (few steps: large error)."""
    model = GaussianDenoiser("v_prediction")
    errors = []
    for refine in (0, 1, 4):
        zt = ddim_invert(model, z0, UNGUIDED, steps=8, refine=refine)
        errors.append(float((ddim_sample(model, zt, UNGUIDED, steps=8) - z0).abs().mean()))
    assert errors[0] > 0.01, errors  # the explicit step misses at 8 steps
    assert errors[1] < 0.6 * errors[0] and errors[2] < 0.1 * errors[0], errors  # measured: 0.127, 0.060, 0.006
    model.inversion_refinements = 4  # the model's default applies when refine is not given
    torch.testing.assert_close(ddim_invert(model, z0, UNGUIDED, steps=8),
                               ddim_invert(model, z0, UNGUIDED, steps=8, refine=4))


def test_an_unknown_prediction_type_is_refused(z0):
    model = GaussianDenoiser("epsilon")
    model.scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(MelodiaError, match="prediction_type 'flow'"):
        ddim_invert(model, z0, UNGUIDED, steps=4)
