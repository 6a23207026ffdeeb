"""The shipped testbed weights: they load offline and they learned the synthetic music.

Each check also runs on random weights (same architecture and vocabulary), where it must fail:
that is what makes it a test of the training rather than of the code.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.models import load_model
from probing.models.testbed import TestbedModel
from probing.synth import render_clip
from probing.testbed.build import build_untrained


@pytest.fixture(scope="module")
def shipped() -> TestbedModel:
    return load_model("testbed")


@pytest.fixture(scope="module")
def random_weights(shipped) -> TestbedModel:
    words = list(shipped.pipeline.tokenizer.get_vocab())
    pipe = build_untrained(words, seed=1, codec=shipped.pipeline.codec)
    pipe.scheduler = shipped.pipeline.scheduler
    pipe.set_progress_bar_config(disable=True)
    return TestbedModel(pipe, "testbed-random")


def denoising_error(model: TestbedModel, t: int = 300) -> float:
    """Mean |x0 estimate - x0| at timestep t on fresh renders (score seeds the training set never drew)."""
    waves = [render_clip(i, "waltz", "calm", 10**9 + n) for n, i in enumerate(("piano", "violin", "flute", "organ"))]
    x0 = torch.cat([model.encode_audio(w) for w in waves])
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=generator)
    alpha = model.scheduler.alphas_cumprod[t]
    xt = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    cond = model.encode_prompt([""] * len(waves), guidance=1.0)
    with torch.no_grad():
        eps = model.predict_noise(xt, torch.tensor(t), cond, guidance=1.0)
    return float(((xt - (1 - alpha).sqrt() * eps) / alpha.sqrt() - x0).abs().mean())


def test_the_shipped_weights_load_offline_and_generate(shipped):
    wave = shipped.generate("a calm waltz played on the flute", steps=5, guidance=3.0, seed=0)
    assert wave.shape == (shipped.clip_samples,) and np.isfinite(wave).all() and np.abs(wave).max() > 1e-3


def test_the_shipped_testbed_denoises_unseen_synthetic_music(shipped, random_weights):
    trained, untrained = denoising_error(shipped), denoising_error(random_weights)
    assert trained < 0.35 < untrained and trained < untrained / 3
