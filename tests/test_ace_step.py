"""The ACE-Step 1.5 adapter on its tiny offline pipeline.

It must number one layer per DiT block, feed the DiT exactly what `AceStepPipeline` feeds it, reproduce the
pipeline's sampler (Euler with APG guidance and its momentum) step by step, never change an output while
capturing, and recompute the attention the processor computed: RMS norms, RoPE, grouped KV heads and the
sliding-window mask included.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _adapter_checks import (attention_error, check_capture_holds_the_longest_context,
                             guided_step, recorded_attention)
from probing.errors import MelodiaError
from probing.layers import measure_layer_table, parse_layer_spec
from probing.models import load_model
from probing.models.ace_step import AceStepConditioning, AceStepModel, build_tiny_pipeline
from probing.models.base import Conditioning, DiffusionModel
from probing.models.flow import FlowModel

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # weight_norm deprecation inside Oobleck

PROMPT = "a sad waltz on violin"
SECONDS = 2.0  # 50 latent frames, 25 DiT tokens: longer than the tiny sliding window (8), so it masks
GUIDANCE = 7.0  # the pipeline's default; > 1 and not turbo: APG guidance with a [null, cond] batch
ATOL = 1e-5  # recomputed attention output vs the processor's own (float32 throughout)
SLIDING, FULL = "layers.0.self_attn", "layers.1.self_attn"  # layer 1 slides, layer 2 attends to all


@pytest.fixture(scope="module")
def model() -> AceStepModel:
    """Loaded once through `load_model` (the tiny folder is built, saved and reloaded on first use)."""
    model = load_model("tiny-ace-step")
    model.clip_seconds = SECONDS
    return model


def first_call(model, guidance: float, steps: int = 1):
    """(kwargs, output) of every denoiser forward while `generate` runs, and the final latents."""
    seen = []
    handle = model.denoiser.register_forward_hook(lambda m, a, k, o: seen.append((k, o[0])), with_kwargs=True)
    try:
        final = model.generate(PROMPT, steps=steps, guidance=guidance, seed=0, decode=False)
    finally:
        handle.remove()
    return seen, final


# ---- family and layers ------------------------------------------------------------------------------
def test_load_model_picks_the_ace_step_adapter(model):
    assert type(model) is AceStepModel and isinstance(model, FlowModel) and model.family == "ace-step"
    assert model.prediction == "flow" and model.sample_rate == 48000 and model.hop_length == 1920
    assert model.scheduler.config.num_train_timesteps == 1  # the DiT's timestep is sigma itself
    assert not model.pipeline.is_turbo and model.pipeline.condition_encoder.null_condition_emb is not None


def test_one_layer_per_dit_block_with_sliding_and_full_self_attention(model):
    table = measure_layer_table(model)
    config = model.denoiser.config
    assert table.n_layers == config.num_hidden_layers == 24 and table.counts() == {"self": 24, "cross": 24}
    cross_keys = model.encode_prompt([""], guidance=1.0).kwargs["encoder_hidden_states"].shape[1]
    tokens = math.ceil(model.latent_frames / config.patch_size)
    assert tokens == 25
    for m in table.modules:
        assert m.position == f"layers.{m.layer - 1}" and m.heads == config.num_attention_heads
        assert (m.path.rsplit(".", 1)[1], m.query_tokens) == ("self_attn" if m.kind == "self" else "cross_attn", tokens)
        assert m.key_tokens == (tokens if m.kind == "self" else cross_keys)
    windows = [model.attention_modules()[f"layers.{i}.self_attn"].sliding_window for i in range(24)]
    assert windows == [config.sliding_window, None] * 12  # odd layer numbers slide
    assert {layer for _, layer in parse_layer_spec(model.default_edit_layers, table)} == set(range(11, 22))


def test_an_odd_latent_length_is_padded_to_whole_patches(model):
    odd = AceStepModel(model.pipeline, "odd", clip_seconds=2.02)
    assert odd.latent_frames == 51 and odd.dummy_denoiser_inputs()["hidden_states"].shape[1] == 51
    assert {m.query_tokens for m in measure_layer_table(odd).modules} == {26}


# ---- conditioning: exactly what the pipeline feeds the DiT -----------------------------------------
def test_encode_prompt_and_denoise_call_match_the_pipeline_bit_for_bit(model):
    seen, _ = first_call(model, GUIDANCE)
    kwargs, output = seen[0]
    cond = model.encode_prompt([PROMPT], guidance=GUIDANCE)
    assert cond.guided and isinstance(cond, AceStepConditioning) and set(cond.kwargs) <= set(kwargs)
    for key, value in cond.kwargs.items():  # the pipeline stacks [cond, null]; melodia [uncond, cond]
        assert torch.equal(value, kwargs[key].flip(0)), key
    null = model.pipeline.condition_encoder.null_condition_emb
    assert torch.equal(cond.kwargs["encoder_hidden_states"][0], null[0].expand_as(kwargs["encoder_hidden_states"][0]))
    assert torch.equal(kwargs["timestep"], kwargs["timestep_r"]) and kwargs["timestep"].tolist() == [1.0, 1.0]
    with torch.no_grad():
        ours = model.denoise_call(kwargs["hidden_states"], 1.0, cond)
    assert torch.equal(ours, output.flip(0))

    (plain_kwargs, plain_output), = first_call(model, guidance=1.0)[0]
    plain = model.encode_prompt([PROMPT], guidance=1.0)
    assert not plain.guided and all(torch.equal(v, plain_kwargs[k]) for k, v in plain.kwargs.items())
    with torch.no_grad():
        assert torch.equal(model.denoise_call(plain_kwargs["hidden_states"], 1.0, plain), plain_output)


def test_turbo_checkpoints_ignore_guidance_like_the_pipeline(model):
    model.pipeline.is_turbo = True
    try:
        assert not model.encode_prompt([PROMPT], guidance=GUIDANCE).guided
    finally:
        model.pipeline.is_turbo = False


def test_a_negative_prompt_is_refused_in_one_line(model):
    with pytest.raises(MelodiaError, match="no negative prompt"):
        model.encode_prompt([PROMPT], guidance=GUIDANCE, negative=["noise"])


# ---- the sampler: Euler over flow_sigmas with predict_noise is the pipeline -------------------------
def _euler(model, noise, cond, steps: int, guidance: float) -> torch.Tensor:
    sigmas, latents = model.flow_sigmas(steps), noise
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            latents = latents + (sigma_next - sigma) * model.predict_noise(latents, model.timestep_for(sigma), cond,
                                                                           guidance)
    return latents[0]


def test_euler_with_apg_reproduces_the_pipelines_sampler(model):
    steps = 4
    seen, final = first_call(model, GUIDANCE, steps=steps)
    noise = seen[0][0]["hidden_states"][:1]
    assert model.sampling_timesteps(steps) == [float(k["timestep"][0]) for k, _ in seen]
    sigmas = model.flow_sigmas(steps)
    assert len(sigmas) == steps + 1 and sigmas[0] == 1.0 and sigmas[-1] == 0.0 and (sigmas.diff() < 0).all()
    cond = model.encode_prompt([PROMPT], guidance=GUIDANCE)
    for _ in range(2):  # the same conditioning twice: the APG momentum restarts with each trajectory
        np.testing.assert_allclose(_euler(model, noise, cond, steps, GUIDANCE).numpy(), final, atol=1e-5, rtol=0)
    # sensitive: APG without momentum, and plain CFG, are other samplers
    no_momentum = Conditioning(cond.kwargs, guided=True)
    assert np.abs(_euler(model, noise, no_momentum, steps, GUIDANCE).numpy() - final).max() > 1e-3
    cfg = FlowModel.predict_noise
    model.predict_noise = lambda latents, t, c, g: cfg(model, latents, t, c, g)
    try:
        assert np.abs(_euler(model, noise, cond, steps, GUIDANCE).numpy() - final).max() > 1e-3
    finally:
        del model.predict_noise

    unguided_seen, unguided_final = first_call(model, guidance=1.0, steps=2)
    plain = model.encode_prompt([PROMPT], guidance=1.0)
    np.testing.assert_allclose(_euler(model, unguided_seen[0][0]["hidden_states"], plain, 2, 1.0).numpy(),
                               unguided_final, atol=1e-5, rtol=0)


# ---- recomputed maps are the model's attention ------------------------------------------------------
CHECKED = [SLIDING, FULL, "layers.0.cross_attn", "layers.23.cross_attn"]


@pytest.fixture(scope="module")
def recorded(model):
    """path -> (attention call, value projection, processor output before to_out), one guided step."""
    return recorded_attention(model, CHECKED, guided_step(model, PROMPT, GUIDANCE))


def test_recomputed_maps_reproduce_the_processors_attention_output(model, recorded):
    assert [recorded[p][0].kind for p in CHECKED] == ["self", "self", "cross", "cross"]
    assert recorded[SLIDING][0].attention_mask is not None and recorded[FULL][0].attention_mask is None
    for path in CHECKED:
        assert attention_error(model, *recorded[path]) < ATOL, path
    call, value, _ = recorded["layers.0.cross_attn"]
    assert 2 * value.shape[-1] == call.query.shape[-1], "2:1 grouped KV heads"


def test_the_check_fails_without_rope_or_without_the_sliding_mask(model, recorded):
    plain = DiffusionModel.heads_qk  # head split, KV repeat and norms, but no RoPE
    model.heads_qk = lambda module, q, k, kwargs: plain(model, module, q, k, kwargs)
    try:
        assert attention_error(model, *recorded[FULL]) > 1e3 * ATOL
    finally:
        del model.heads_qk
    model.map_mask = lambda *args: None
    try:
        assert attention_error(model, *recorded[SLIDING]) > 1e3 * ATOL
    finally:
        del model.map_mask


def test_map_mask_is_the_dense_band_the_dit_builds(model, recorded):
    call = recorded[SLIDING][0]
    tokens, window = call.query.shape[1], model.denoiser.config.sliding_window
    mask = model.map_mask(call.module, call.call_kwargs, tokens, tokens, 2)
    distance = (torch.arange(tokens)[:, None] - torch.arange(tokens)[None]).abs()
    band = torch.where(distance <= window, 0.0, torch.finfo(torch.float32).min)
    assert mask.shape == (2, 1, tokens, tokens) and torch.equal(mask[0, 0], band) and torch.equal(mask[1, 0], band)
    assert torch.equal(mask[0, 0], call.attention_mask[0, 0])  # exactly what the processor received
    # a flash backend passes no dense mask but the window: the same band is rebuilt
    without = {k: v for k, v in call.call_kwargs.items() if k != "attention_mask"}
    assert torch.equal(model.map_mask(call.module, without, tokens, tokens, 2), mask)
    for path in (FULL, "layers.0.cross_attn"):
        other = recorded[path][0]
        assert model.map_mask(other.module, other.call_kwargs, tokens, other.key.shape[1], 2) is None


# ---- audio <-> latents ------------------------------------------------------------------------------
def test_encode_audio_and_decode_round_trip_shapes(model):
    generated = model.generate(PROMPT, steps=1, guidance=GUIDANCE, seed=0, decode=False)
    assert generated.shape == model.latent_shape == (50, 8)
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(model.clip_samples) / model.sample_rate)
    latents = model.encode_audio(wave.astype(np.float32))
    assert tuple(latents.shape) == (1, *generated.shape) and torch.isfinite(latents).all()
    decoded = model.decode(latents)
    assert decoded.dtype == np.float32 and decoded.shape == (len(wave),) and np.isfinite(decoded).all()
    # decode is the pipeline's own post-processing: it turns generate's latents into generate's audio
    np.testing.assert_allclose(model.decode(torch.from_numpy(generated)[None]),
                               model.generate(PROMPT, steps=1, guidance=GUIDANCE, seed=0), atol=1e-6, rtol=0)


def test_the_saved_tiny_folder_reloads_to_the_built_pipeline(model):
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    audio = pipe(PROMPT, audio_duration=SECONDS, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").audios
    assert audio.shape == (1, 2, 96000) and np.isfinite(audio).all() and audio.std() > 1e-3
    reloaded = model.generate(PROMPT, steps=2, guidance=GUIDANCE, seed=0)
    np.testing.assert_allclose(reloaded, audio[0].mean(axis=0), atol=1e-6, rtol=0)


def test_the_tiny_dit_is_laid_out_like_the_pinned_full_size_config(model):
    """configs/ace_step_transformer.json (ACE-Step 1.5 2B SFT) on the meta device vs the tiny DiT."""
    import json
    from pathlib import Path

    from diffusers import AceStepTransformer1DModel

    import probing.models

    path = Path(probing.models.__file__).parent / "configs" / "ace_step_transformer.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    with torch.device("meta"):
        full = AceStepTransformer1DModel(**config)
    assert sum(p.numel() for p in full.parameters()) == 1_575_458_880
    tiny = model.denoiser

    def layout(dit):
        modules = [(p, m) for p, m in dit.named_modules() if type(m).__name__ == "AceStepAttention"]
        return ([p for p, _ in modules], [m.sliding_window is not None for _, m in modules],
                {m.heads // m.kv_heads for _, m in modules}, dit.config.patch_size, dit.config.rope_theta,
                dit.config.in_channels // dit.config.audio_acoustic_hidden_dim, dit.config.is_turbo)

    assert layout(tiny) == layout(full)


def test_capture_sizes_the_context_axis_for_the_longest_prompt(model, tmp_path):
    """ACE-Step pads its packed context to the longest prompt of a batch: the store must hold the longest."""
    check_capture_holds_the_longest_context(model, tmp_path)
