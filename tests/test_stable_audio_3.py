"""The Stable Audio 3 adapter on its tiny offline pipeline (`tiny-stable-audio-3`).

What is specific to this family and checked here: fused projections tapped by channel slices, differential
attention folded into one signed map per head, memory tokens prepended to the latent frames, the log-SNR sigma
schedule with t = sigma, and the distilled ping-pong sampler next to the plain Euler one.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
from diffusers.utils.torch_utils import randn_tensor

from _adapter_checks import attention_error, guided_step, recorded_attention
from probing.hooks import AttentionHooks
from probing.layers import measure_layer_table
from probing.maps import Reduction, reduce_call
from probing.models import load_model
from probing.models.stable_audio_3 import StableAudio3Model, build_tiny_pipeline, gemma_tokenizer

# Upstream noise: diffusers' SAME autoencoder builds its convs with the deprecated torch.nn.utils.weight_norm.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

PROMPT = "a sad waltz on violin"
ATOL = 1e-5  # recomputed attention output vs the processor's own, float32 throughout
CLIP_SECONDS = 1.0  # 11 latent frames; the pipeline's default 10 s works the same, only slower
CHECKED = ["transformer_blocks.0.self_attn", "transformer_blocks.0.cross_attn",
           "transformer_blocks.3.self_attn", "transformer_blocks.3.cross_attn"]


@pytest.fixture(scope="module")
def model() -> StableAudio3Model:
    loaded = load_model("tiny-stable-audio-3")
    loaded.clip_seconds = CLIP_SECONDS
    return loaded


def first_denoiser_call(model, **generate):
    """(args, kwargs, output) of the first denoiser forward of `model.generate(**generate)`, and what it returned."""
    seen = []

    def hook(module, args, kwargs, output):
        seen.append((args, kwargs, output[0]))

    handle = model.denoiser.register_forward_hook(hook, with_kwargs=True)
    try:
        result = model.generate(PROMPT, **generate)
    finally:
        handle.remove()
    return seen, result


def fused_value(attention) -> tuple[torch.nn.Module, slice]:
    """V: the last heads x dim_heads channels of the fused `to_qkv` (self-attention) or `to_kv` (cross)."""
    fused = attention.to_qkv if hasattr(attention, "to_qkv") else attention.to_kv
    return fused, slice(-attention.heads * attention.dim_heads, None)


# ---- family, layers, taps -------------------------------------------------------------------------------
def test_load_model_picks_the_stable_audio_3_adapter(model):
    assert type(model) is StableAudio3Model and model.family == "stable-audio-3" and model.prediction == "flow"
    assert model.sample_rate == 44100 and model.default_edit_layers == "self:*"
    assert model.memory_tokens == 4 and model.text_tokens == 256 + 1 and not model.stochastic_sampling
    assert model.latent_shape == (8, 11)  # ceil(1 s x 44100 / 4096)


def test_layer_table_has_one_block_per_layer_and_counts_memory_tokens(model):
    table = measure_layer_table(model)
    blocks, heads = model.denoiser.config.depth, model.denoiser.config.num_heads
    assert table.n_layers == blocks and table.counts() == {"self": blocks, "cross": blocks}
    tokens = model.memory_tokens + model.latent_length  # memory tokens first, then the latent frames
    for m in table.modules:
        assert m.position == f"transformer_blocks.{m.layer - 1}" and m.heads == heads
        assert (m.path.rsplit(".", 1)[1], m.query_tokens, m.grid) == (f"{m.kind}_attn", tokens, (tokens, 1))
        assert m.key_tokens == (tokens if m.kind == "self" else model.text_tokens)  # text + duration token
    assert [m.alias for m in table.modules[:2]] == ["b0.t0.self_attn", "b0.t0.cross_attn"]


def test_attention_kind_follows_the_forward_arguments(model):
    modules = model.attention_modules()
    self_attn, cross_attn = modules["transformer_blocks.0.self_attn"], modules["transformer_blocks.0.cross_attn"]
    assert model.attention_kind(self_attn, {"rope": torch.zeros(3, 4)}) == "self"  # forward(hidden_states, rope)
    assert model.attention_kind(cross_attn, {"context": torch.zeros(1, 3, 32), "context_mask": None}) == "cross"


def test_taps_are_the_q_and_k_channels_of_the_fused_projections(model):
    def taps(module):
        return [(t.projection, t.which, range(t.projection.out_features)[t.channels or slice(None)])
                for t in model.qk_taps(module)]

    modules = model.attention_modules()
    width = model.denoiser.config.embed_dim  # heads x head dim
    self_attn, cross_attn = modules["transformer_blocks.1.self_attn"], modules["transformer_blocks.1.cross_attn"]
    assert self_attn.to_qkv.out_features == 5 * width  # [q1 | q2 | k1 | k2 | v]
    assert taps(self_attn) == [(self_attn.to_qkv, "q", range(0, 2 * width)),
                               (self_attn.to_qkv, "k", range(2 * width, 4 * width))]
    assert cross_attn.to_q.out_features == 2 * width and cross_attn.to_kv.out_features == 3 * width
    assert taps(cross_attn) == [(cross_attn.to_q, "q", range(0, 2 * width)),
                                (cross_attn.to_kv, "k", range(0, 2 * width))]
    heads = self_attn.heads
    assert model.head_signs(self_attn).tolist() == [1.0] * heads + [-1.0] * heads


def test_memory_tokens_are_the_first_rows(model):
    """Rows 0..M-1 of a self-attention call come from the memory tokens: they do not depend on the latents."""
    inputs, calls = model.dummy_denoiser_inputs(), []
    longer = {**inputs, "hidden_states": torch.randn(1, 8, model.latent_length + 3)}
    with AttentionHooks(model, ["transformer_blocks.0.self_attn"], on_call=calls.append), torch.no_grad():
        model.denoiser(**inputs)
        model.denoiser(**longer)
    short, long = calls
    m = model.memory_tokens
    assert short.query.shape[1] == m + model.latent_length and long.query.shape[1] == m + model.latent_length + 3
    assert torch.equal(short.query[:, :m], long.query[:, :m]) and torch.equal(short.key[:, :m], long.key[:, :m])
    assert not torch.allclose(short.query[:, m:], long.query[:, m: m + model.latent_length])


# ---- conditioning and sampling: exactly the pipeline's ------------------------------------------------------
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_encode_prompt_and_denoise_call_match_the_pipeline(model, guidance):
    seen, _ = first_denoiser_call(model, steps=1, guidance=guidance, seed=0, decode=False)
    (latents, t), kwargs, output = seen[0]
    cond = model.encode_prompt([PROMPT], guidance=guidance)
    assert cond.guided == (guidance > 1) and latents.shape[0] == (2 if cond.guided else 1)
    assert set(cond.kwargs) == set(kwargs) - {"return_dict"}
    for key, value in cond.kwargs.items():
        assert torch.equal(value, kwargs[key]), key
    with torch.no_grad():
        assert torch.equal(model.denoise_call(latents, t[0], cond), output)


def test_euler_over_flow_sigmas_reproduces_generate(model):
    steps, guidance = 3, 3.0
    seen, generated = first_denoiser_call(model, steps=steps, guidance=guidance, seed=0, decode=False)
    sigmas = model.flow_sigmas(steps)
    assert sigmas.shape == (steps + 1,) and sigmas[0] == 1 and sigmas[-1] == 0 and (sigmas.diff() < 0).all()
    # t = sigma (num_train_timesteps = 1): the denoiser saw exactly these timesteps, the log-SNR schedule's
    assert [float(args[1][0]) for args, _, _ in seen] == model.sampling_timesteps(steps)
    assert model.sampling_timesteps(steps) == pytest.approx(sigmas[:-1].tolist())
    assert not np.allclose(sigmas.numpy(), np.linspace(1, 0, steps + 1), atol=0.05), "not a linear schedule"
    x = seen[0][0][0][:1]  # the initial noise (first half of the CFG batch)
    cond = model.encode_prompt([PROMPT], guidance=guidance)
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            x = x + (sigma_next - sigma) * model.predict_noise(x, model.timestep_for(sigma), cond, guidance)
    np.testing.assert_allclose(x[0].numpy(), generated, rtol=0, atol=1e-5)


def test_ping_pong_sampler_is_reproduced_with_the_pipelines_noise_draws(model):
    """The distilled checkpoints re-noise at every step with fresh draws from the pipeline's generator: reproduced
    exactly with those draws, and a different sample from the Euler path (which editing integrates)."""
    config = dict(model.scheduler.config, stochastic_sampling=True)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    pipe = StableAudio3Pipeline(**{**model.pipeline.components, "scheduler": scheduler})
    pipe.set_progress_bar_config(disable=True)
    ping_pong = StableAudio3Model(pipe, "tiny-stable-audio-3-ping-pong", clip_seconds=CLIP_SECONDS)
    assert ping_pong.stochastic_sampling
    steps, guidance, seed = 3, 3.0, 0
    generated = ping_pong.generate(PROMPT, steps=steps, guidance=guidance, seed=seed, decode=False)
    generator = torch.Generator().manual_seed(seed)
    x = randn_tensor((1, *ping_pong.latent_shape), generator=generator, dtype=torch.float32)
    sigmas, cond = ping_pong.flow_sigmas(steps), ping_pong.encode_prompt([PROMPT], guidance)
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            velocity = ping_pong.predict_noise(x, ping_pong.timestep_for(sigma), cond, guidance)
            noise = randn_tensor(x.shape, generator=generator, dtype=torch.float32)
            x = ping_pong.ping_pong_step(x, velocity, sigma, sigma_next, noise)
    np.testing.assert_allclose(x[0].numpy(), generated, rtol=0, atol=1e-5)
    euler = model.generate(PROMPT, steps=steps, guidance=guidance, seed=seed, decode=False)
    assert np.abs(euler - generated).max() > 0.1


# ---- hooks on the fused projection (capture itself: tests/test_conformance.py) ----------------------------------
def test_injected_q_and_k_reach_the_model_and_v_is_untouched(model):
    """Replacing the tapped channels changes the output; replacing them by themselves changes nothing."""
    inputs = model.dummy_denoiser_inputs()
    with torch.no_grad():
        plain = model.denoiser(**inputs)[0]
        with AttentionHooks(model, CHECKED, replace=lambda call, which, seen: seen.clone()):
            same = model.denoiser(**inputs)[0]
        with AttentionHooks(model, CHECKED, replace=lambda call, which, seen: seen.flip(1) if which == "k" else None):
            swapped = model.denoiser(**inputs)[0]
    assert torch.equal(plain, same) and not torch.allclose(plain, swapped)


# ---- recomputed maps are the model's differential attention -------------------------------------------------
def test_recomputed_maps_reproduce_the_differential_attention_output(model):
    recorded = recorded_attention(model, CHECKED, guided_step(model, PROMPT), value_of=fused_value)
    assert {c.kind for c, _, _ in recorded.values()} == {"self", "cross"}
    tokens = model.memory_tokens + model.latent_length
    for call, value, output in recorded.values():
        probs = reduce_call(model, call, Reduction(heads="all", grid=None, batch="both"))
        keys = tokens if call.kind == "self" else model.text_tokens
        assert probs.shape == (2, call.module.heads, tokens, keys)
        assert probs.sum(-1).abs().max() < 1e-5, "a differential map's rows sum to 0"
        error = attention_error(model, call, value, output, head_dim=call.module.dim_heads)
        assert error < ATOL, f"{call.path}: {error:.2e}"
    call, value, output = recorded["transformer_blocks.0.self_attn"]
    without_rope = dataclasses.replace(call, call_kwargs={})
    assert attention_error(model, without_rope, value, output, head_dim=call.module.dim_heads) > 1e3 * ATOL
    model.head_signs = lambda module: None  # 2H separate softmax maps; keep the first H as if not differential
    try:
        for call, value, output in recorded.values():
            probs = reduce_call(model, call, Reduction(heads="all", grid=None, batch="both"))[:, : call.module.heads]
            plain = (probs @ value.unflatten(-1, (call.module.heads, -1)).transpose(1, 2)).transpose(1, 2).flatten(2)
            assert (plain - output).abs().max().item() > 1e3 * ATOL, call.path
    finally:
        del model.head_signs


def test_a_context_mask_is_reproduced(model):
    """The pipeline never passes one (padding is embedded, not masked), but a direct call with one is mapped right."""
    path = "transformer_blocks.2.cross_attn"
    cross = model.attention_modules()[path]
    hidden, context = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    recorded = recorded_attention(model, [path], lambda: cross(hidden, context=context, context_mask=mask),
                                  value_of=fused_value)
    call, value, output = recorded[path]
    assert call.kind == "cross"
    assert attention_error(model, call, value, output, head_dim=cross.dim_heads) < ATOL
    unmasked = dataclasses.replace(call, call_kwargs={"context": context})
    assert attention_error(model, unmasked, value, output, head_dim=cross.dim_heads) > 1e3 * ATOL


# ---- audio <-> latents ----------------------------------------------------------------------------------------
def test_encode_audio_and_decode_round_trip_shapes(model):
    latents = torch.from_numpy(model.generate(PROMPT, steps=2, guidance=3.0, seed=0, decode=False))[None]
    wave = model.generate(PROMPT, steps=2, guidance=3.0, seed=0)
    np.testing.assert_allclose(model.decode(latents), wave, rtol=0, atol=1e-6)  # decode is the pipeline's
    assert wave.dtype == np.float32 and wave.shape == (model.clip_samples,) and np.abs(wave).max() <= 1
    sine = 0.3 * np.sin(2 * np.pi * 440 * np.arange(model.clip_samples) / model.sample_rate)
    encoded = model.encode_audio(sine.astype(np.float32))
    assert tuple(encoded.shape) == (1, *model.latent_shape) and torch.isfinite(encoded).all()
    assert tuple(model.encode_audio(np.zeros(100, np.float32)).shape) == (1, *model.latent_shape)  # zero-padded
    decoded = model.decode(encoded)
    assert decoded.dtype == np.float32 and decoded.shape == (model.clip_samples,) and np.isfinite(decoded).all()


# ---- the tiny pipeline and the real denoiser's config ---------------------------------------------------------
def test_tiny_pipeline_is_seeded_and_survives_save_and_reload(tmp_path):
    pipe, again, other = build_tiny_pipeline(0), build_tiny_pipeline(0), build_tiny_pipeline(1)
    state = {k: v for k, v in pipe.transformer.state_dict().items()}
    assert all(torch.equal(v, again.transformer.state_dict()[k]) for k, v in state.items())
    assert sum(not torch.equal(v, other.transformer.state_dict()[k]) for k, v in state.items()) > 10
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert not list(tmp_path.rglob("*.bin"))
    reloaded = StableAudio3Pipeline.from_pretrained(tmp_path)
    text = "a sad waltz on violin, xylophone 12"
    assert reloaded.tokenizer(text).input_ids == pipe.tokenizer(text).input_ids
    outputs = [StableAudio3Model(p.to("cpu"), "tiny", clip_seconds=CLIP_SECONDS).generate(PROMPT, 2, 3.0, 0)
               for p in (pipe, reloaded)]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=0, atol=1e-5)


def test_gemma_tokenizer_keeps_music_words_whole():
    tokenizer = gemma_tokenizer()
    assert tokenizer.tokenize(PROMPT) == ["a", "▁sad", "▁waltz", "▁on", "▁violin"]
    ids = tokenizer(PROMPT, padding="max_length", max_length=8).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-2:] == [tokenizer.pad_token_id] * 2  # <bos> first, right pad
    unknown = "Xylophone & 12 kazoos!"
    assert tokenizer.decode(tokenizer(unknown).input_ids, skip_special_tokens=True) == unknown


def test_real_stable_audio_3_medium_config_on_meta_device():
    """1,453,170,944 parameters and 522 + 1 tensors (the checkpoint's DiT + the padding embedding)."""
    path = Path(__file__).parents[1] / "probing" / "models" / "configs" / "stable_audio_3_transformer.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_comment")}
    with torch.device("meta"):
        dit = StableAudio3DiTModel.from_config(config)
    assert sum(p.numel() for p in dit.parameters()) == 1_453_170_944 and len(dit.state_dict()) == 523
    attention = [m for m in dit.modules() if type(m).__name__.startswith("StableAudio3") and hasattr(m, "to_out")]
    assert len(attention) == 48 and all(m.use_differential and m.heads == 24 for m in attention)
