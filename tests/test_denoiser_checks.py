"""editing.denoiser_checks reads a prediction the way each family defines it: an oracle that returns the
exact target leaves no noise (0), an epsilon model that predicts no noise removes none (1)."""
from __future__ import annotations

import pytest
import torch

from editing import denoiser_checks
from editing.denoiser_checks import denoising_error, prompt_reading, reading_accuracy
from probing.models import load_model


@pytest.fixture(scope="module", params=["testbed", "testbed-dit"])
def model(request):
    return load_model(request.param)


def oracle(model, z0: torch.Tensor, noise: torch.Tensor):
    """predict_noise that returns the model's exact training target for (z0, noise)."""
    def predict(xt, t, cond, guidance):
        if model.prediction == "flow":
            return noise - z0
        alpha_bar = model.scheduler.alphas_cumprod[int(t)]
        kind = model.scheduler.config.prediction_type
        return noise if kind == "epsilon" else alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * z0
    return predict


def test_an_oracle_leaves_no_noise_and_a_wrong_one_does(model, monkeypatch):
    z0 = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    noise = denoiser_checks._noise(z0, 0)  # the noise the first level draws
    monkeypatch.setattr(model, "predict_noise", oracle(model, z0, noise))
    assert denoising_error(model, z0, ["", ""], sigmas=(0.3,))[0.3] < 1e-4
    monkeypatch.setattr(model, "predict_noise", oracle(model, z0, -noise))
    assert denoising_error(model, z0, ["", ""], sigmas=(0.3,))[0.3] > 0.5


def test_an_epsilon_model_that_predicts_no_noise_removes_none(monkeypatch):
    model = load_model("testbed")
    assert model.scheduler.config.prediction_type == "epsilon"
    monkeypatch.setattr(model, "predict_noise", lambda xt, t, cond, guidance: torch.zeros_like(xt))
    z0 = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(2))
    assert denoising_error(model, z0, [""], sigmas=(0.2, 0.6)) == pytest.approx({0.2: 1.0, 0.6: 1.0}, abs=1e-5)


def exact_under_right(model, clip: torch.Tensor, monkeypatch) -> list[list[str]]:
    """Make `model` a denoiser that is exact for `clip` only under the prompt 'right'; returns the log of
    prompt lists it was asked to encode."""
    real_encode, encoded = model.encode_prompt, []

    def encode(prompts, guidance):
        encoded.append(list(prompts))
        cond = real_encode(prompts, guidance)
        cond.prompts = list(prompts)
        return cond

    def predict(xt, t, cond, guidance):
        alpha_bar = model.scheduler.alphas_cumprod[int(t)]
        exact = (xt - alpha_bar.sqrt() * clip) / (1 - alpha_bar).sqrt()
        right = torch.tensor([p == "right" for p in cond.prompts]).view(-1, 1, 1, 1)
        return torch.where(right, exact, exact + 1.0)

    monkeypatch.setattr(model, "encode_prompt", encode)
    monkeypatch.setattr(model, "predict_noise", predict)
    return encoded


def test_prompt_reading_picks_the_candidate_whose_estimate_is_closest(monkeypatch):
    """A fake denoiser, exact only under the prompt 'right', picks 'right' wherever it stands in the list."""
    model = load_model("testbed")
    clip = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    encoded = exact_under_right(model, clip, monkeypatch)
    candidates = [["a", "right", "b"], ["right", "a", "b"], ["a", "b", "right"], ["a", "right", "b"]]
    picks = prompt_reading(model, clip.expand(4, *clip.shape[1:]), candidates)
    assert picks.tolist() == [1, 0, 2, 1]
    assert sorted(map(tuple, encoded)) == sorted({tuple(c) for c in candidates}), "each distinct list once"


def test_reading_accuracy_counts_the_clips_whose_own_class_wins(monkeypatch):
    """With 'right' always winning, clips labelled 'right' are read and the others are not."""
    model = load_model("testbed")
    clip = torch.randn(1, *model.latent_shape, generator=torch.Generator().manual_seed(3))
    exact_under_right(model, clip, monkeypatch)
    clips = clip.expand(4, *clip.shape[1:])
    assert reading_accuracy(model, clips, ["right", "a", "right", "b"], ["a", "right", "b"], lambda c, i: c) == 0.5
