"""The DiT testbed's adapter (random weights): layers, capture at the sampling timesteps, maps, audio round trip."""
from __future__ import annotations

import numpy as np
import torch

from _adapter_checks import attention_error, check_capture_changes_nothing, guided_step, recorded_attention
from probing.layers import measure_layer_table

PROMPT = "a sad waltz played on violin"


def test_one_layer_per_dit_block_of_self_then_cross_attention(untrained_testbed_dit):
    table = measure_layer_table(untrained_testbed_dit)
    assert table.n_layers == 6 and table.counts() == {"self": 6, "cross": 6}
    first, second = table.modules[:2]
    assert (first.path, first.kind, first.layer) == ("blocks.0.self_attn", "self", 1)
    assert (second.path, second.kind, second.layer) == ("blocks.0.cross_attn", "cross", 1)
    assert (first.query_tokens, first.key_tokens, first.grid) == (64, 64, (64, 1))  # 64 frames of 64 ms
    assert second.key_tokens == 16  # caption tokens


def test_capture_keeps_the_output_and_sees_the_sampling_timesteps(untrained_testbed_dit):
    model = untrained_testbed_dit
    recorder = check_capture_changes_nothing(
        model, lambda: model.generate(PROMPT, steps=3, guidance=3.0, seed=0, decode=False))
    for module in recorder.modules:
        timesteps, maps = recorder.stacked(module.path)
        assert timesteps == model.sampling_timesteps(3) and len(maps) == 3


def test_recomputed_maps_reproduce_the_attention_output(untrained_testbed_dit):
    model = untrained_testbed_dit
    recorded = recorded_attention(model, ["blocks.3.self_attn", "blocks.3.cross_attn"], guided_step(model, PROMPT))
    for path, (call, value, output) in recorded.items():
        assert attention_error(model, call, value, output) < 1e-5, path


def test_audio_round_trips_through_the_latent_sequence(untrained_testbed_dit):
    model = untrained_testbed_dit
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(model.clip_samples) / model.sample_rate)).astype(np.float32)
    latents = model.encode_audio(wave)
    assert tuple(latents.shape) == (1, 64, 256)
    codec = model.pipeline.codec.encode(torch.from_numpy(wave)[None])
    assert torch.equal(model.pipeline.from_sequence(latents), codec)
    assert model.decode(latents).shape == wave.shape
