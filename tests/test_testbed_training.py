"""The testbed trainer: data, a training step, checkpoint/resume round trip, atomic export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.models.testbed import TestbedModel
from probing.testbed.codec import MelCodec
from probing.testbed.data import TestbedData, caption_vocabulary, render_dataset
from probing.testbed.pipeline import TestbedPipeline
from probing.testbed.train import Trainer


@pytest.fixture(scope="module")
def data() -> TestbedData:
    return render_dataset(n_clips=6, seed=0, workers=1)


def test_the_codec_latent_is_an_exact_fold_of_the_log_mel():
    codec = MelCodec()
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(codec.clip_samples).astype(np.float32)) * 0.1
    latent = codec.encode(wave[None])
    assert tuple(latent.shape[1:]) == codec.latent_shape == (16, 64, 16)
    torch.testing.assert_close(codec.latent_to_log_mel(latent), codec.log_mel(wave[None]), atol=1e-5, rtol=0)
    audio = codec.decode(latent)
    assert audio.shape == (1, codec.clip_samples) and torch.isfinite(audio).all()


def test_decoding_an_off_manifold_latent_stays_finite():
    codec = MelCodec()
    assert torch.isfinite(codec.decode(torch.full((1, *codec.latent_shape), 1e4))).all()


def test_dataset_labels_and_normalisation(data, tmp_path):
    assert data.latents.shape == (6, 16, 64, 16) and data.labels.shape == (6, 3)
    assert abs(float(data.latents.astype(np.float32).mean())) < 0.05  # normalised with its own mean/std
    data.save(tmp_path / "d.npz")
    again = TestbedData.load(tmp_path / "d.npz")
    assert np.array_equal(again.latents, data.latents) and again.mel_std == data.mel_std


def test_training_resumes_exactly_and_exports_a_loadable_pipeline(data, tmp_path):
    words = caption_vocabulary(draws=1)
    first = Trainer(tmp_path, data, words, lr=1e-3, batch=2, seed=0)
    losses = [first.train_step() for _ in range(2)]
    first.checkpoint()
    expected = first.train_step()
    resumed = Trainer(tmp_path, data, words, lr=1e-3, batch=2, seed=0)
    assert resumed.resume() and resumed.step == 2
    assert resumed.train_step() == pytest.approx(expected, rel=1e-5)  # same batch, noise and weights
    assert all(np.isfinite(losses))
    resumed.export(tmp_path / "export")
    assert not (tmp_path / "export.tmp").exists()
    model = TestbedModel(TestbedPipeline.from_pretrained(tmp_path / "export"), "exported")
    assert model.pipeline.codec.mel_mean == pytest.approx(data.mel_mean)
    assert model.generate("a sad waltz", steps=2, guidance=3.0, seed=0).shape == (model.clip_samples,)


def test_a_new_run_can_start_from_exported_weights(data, tmp_path):
    words = caption_vocabulary(draws=1)
    first = Trainer(tmp_path / "a", data, words, lr=1e-3, batch=2, seed=0)
    first.train_step()
    first.export(tmp_path / "export")
    second = Trainer(tmp_path / "b", data, words, lr=1e-3, batch=2, seed=1)
    second.init_from(tmp_path / "export")
    for name, module in second.modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, first.ema[name].state_dict()[key], atol=0, rtol=0)
