"""The LongCat-AudioDiT adapter on its tiny offline pipeline.

It must number one layer per DiT block, feed the denoiser what `LongCatAudioDiTPipeline.__call__` feeds it,
step the pipeline's schedule in melodia's sign convention, never change an output while capturing, and
recompute the attention the processors really computed (q/k RMSNorm before the head split, two RoPEs,
boolean masks).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import LongCatAudioDiTTransformer

from _adapter_checks import (attention_error, check_capture_changes_nothing, check_capture_holds_the_longest_context,
                             recorded_attention)
from probing.layers import measure_layer_table
from probing.models import load_model
from probing.models.longcat import DUMMY_TEXT_TOKENS, AudioDiTAttentionGeometry, LongCatModel, build_tiny_pipeline
from probing.models.tiny_parts import CONFIG_DIR

# torch.nn.utils.weight_norm (the Wav-VAE's convolutions) is deprecated upstream.
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

PROMPT = "a sad waltz on violin"
CLIP_SECONDS = 2.0  # 23 latent frames
ATOL = 1e-5  # float32 throughout: recomputed attention vs the processor's, batched CFG vs the pipeline's two calls


@pytest.fixture(scope="module")
def model() -> LongCatModel:
    """Loaded once through `load_model` (the tiny pipeline folder is built and saved on first use)."""
    model = load_model("tiny-longcat")
    model.clip_seconds = CLIP_SECONDS
    return model


def pipeline_forwards(model, **call) -> list[tuple[dict, torch.Tensor]]:
    """(kwargs, output) of every denoiser forward during the pipeline's own `__call__`."""
    seen = []
    handle = model.denoiser.register_forward_hook(lambda m, a, k, o: seen.append((k, o.sample)), with_kwargs=True)
    try:
        call = {"audio_duration_s": CLIP_SECONDS, "generator": torch.Generator().manual_seed(0), **call}
        model.pipeline(call.pop("prompt", PROMPT), output_type="latent", **call)
    finally:
        handle.remove()
    return seen


# ---- family, layers, reference config -------------------------------------------------------------------
def test_load_model_picks_the_adapter_and_numbers_one_layer_per_block(model):
    assert type(model) is LongCatModel and model.family == "longcat" and model.sample_rate == 24000
    assert isinstance(model, AudioDiTAttentionGeometry) and model.default_edit_layers == "self:*"
    table = measure_layer_table(model)
    blocks, frames = model.denoiser.config.dit_depth, model.latent_frames
    assert frames == 23 and table.n_layers == blocks and table.counts() == {"self": blocks, "cross": blocks}
    for m in table.modules:
        assert m.position == f"blocks.{m.layer - 1}" and m.heads == 4
        assert (m.query_tokens, m.grid) == (frames, (frames, 1)), "rows are latent frames, not latent channels"
        expected = ("self_attn", frames) if m.kind == "self" else ("cross_attn", DUMMY_TEXT_TOKENS)
        assert (m.path.rsplit(".", 1)[1], m.key_tokens) == expected


def test_the_pinned_1b_config_builds_the_full_size_transformer():
    config = json.loads((CONFIG_DIR / "longcat_audio_dit_transformer.json").read_text())
    with torch.device("meta"):
        transformer = LongCatAudioDiTTransformer(**{k: v for k, v in config.items() if not k.startswith("_")})
    assert sum(p.numel() for p in transformer.parameters()) == 981_955_648
    attentions = [p for p, _ in transformer.named_modules() if p.endswith(("self_attn", "cross_attn"))]
    assert len(attentions) == 48 and transformer.blocks[0].self_attn.heads == 24


def test_the_saved_tiny_pipeline_is_the_built_one(model):
    built = build_tiny_pipeline(seed=0)
    built.set_progress_bar_config(disable=True)
    call = dict(audio_duration_s=CLIP_SECONDS, num_inference_steps=2, guidance_scale=3.0)
    ours = built(PROMPT, generator=torch.Generator().manual_seed(0), **call).audios
    loaded = model.pipeline(PROMPT, generator=torch.Generator().manual_seed(0), **call).audios
    assert ours.shape == (1, 1, 47104) and 1e-3 < ours.std() < 1.0
    np.testing.assert_allclose(loaded, ours, atol=1e-6)
    # The pipeline never saves or loads its scheduler (an optional __init__ argument): it builds this one.
    assert (model.scheduler.config.shift, model.scheduler.config.invert_sigmas) == (1.0, True)


# ---- conditioning: what the pipeline feeds the denoiser ------------------------------------------------
def test_unguided_encode_prompt_and_denoise_call_are_the_pipelines_forward_bit_for_bit(model):
    (kwargs, output), = pipeline_forwards(model, num_inference_steps=1, guidance_scale=1.0)
    ours = []
    handle = model.denoiser.register_forward_hook(lambda m, a, k, o: ours.append(k), with_kwargs=True)
    try:
        with torch.no_grad():
            out = model.denoise_call(kwargs["hidden_states"], model.timestep_for(model.flow_sigmas(1)[0]),
                                     model.encode_prompt([PROMPT], guidance=1.0))
    finally:
        handle.remove()
    assert set(ours[0]) - {"return_dict"} == set(kwargs)
    for key, value in kwargs.items():
        assert torch.equal(ours[0][key], value) if torch.is_tensor(value) else ours[0][key] == value, key
    assert torch.equal(out, output)


def test_guided_conditioning_is_one_uncond_cond_batch_of_the_pipelines_two_forwards(model):
    (cond_kwargs, cond_out), (uncond_kwargs, uncond_out) = pipeline_forwards(model, num_inference_steps=1,
                                                                              guidance_scale=3.0)
    assert uncond_kwargs["encoder_hidden_states"].abs().max() == 0, "the pipeline's uncond pass: zero text states"
    cond = model.encode_prompt([PROMPT], guidance=3.0)
    assert cond.guided
    for key in ("encoder_hidden_states", "encoder_attention_mask"):
        assert torch.equal(cond.kwargs[key], torch.cat([uncond_kwargs[key], cond_kwargs[key]])), key
    latents, t = cond_kwargs["hidden_states"], cond_kwargs["timestep"]
    with torch.no_grad():
        batched = model.denoise_call(torch.cat([latents, latents]), t, cond)
    error = (batched - torch.cat([uncond_out, cond_out])).abs().max().item()
    assert error < ATOL, f"{error:.2e}"  # float rounding only (batch-1 matrix-vector vs batch-2 matrix products)


def test_a_negative_prompt_is_encoded_on_its_own_and_padded_with_masked_tokens(model):
    negative = "loud fast drums and bass and synth in a techno rhythm"
    (cond_kwargs, cond_out), (uncond_kwargs, uncond_out) = pipeline_forwards(
        model, num_inference_steps=1, guidance_scale=3.0, negative_prompt=negative)
    cond = model.encode_prompt([PROMPT], guidance=3.0, negative=[negative])
    states, mask = cond.kwargs["encoder_hidden_states"], cond.kwargs["encoder_attention_mask"]
    short, long = cond_kwargs["encoder_attention_mask"].shape[1], uncond_kwargs["encoder_attention_mask"].shape[1]
    assert short < long == states.shape[1] and not mask[1, short:].any() and mask[1, :short].all()
    assert torch.equal(states[0], uncond_kwargs["encoder_hidden_states"][0])
    assert torch.equal(states[1, :short], cond_kwargs["encoder_hidden_states"][0])
    assert states[1, short:].abs().max() == 0
    latents, t = cond_kwargs["hidden_states"], cond_kwargs["timestep"]
    with torch.no_grad():
        uncond_row = model.denoise_call(torch.cat([latents, latents]), t, cond)[:1]
    assert (uncond_row - uncond_out).abs().max().item() < ATOL  # the unpadded row; the padded one is documented


# ---- the schedule: timesteps, sigmas, sign -------------------------------------------------------------------
def test_sampling_timesteps_are_what_the_pipeline_feeds_the_denoiser(model):
    forwards = pipeline_forwards(model, num_inference_steps=4, guidance_scale=1.0)
    fed = [float(kwargs["timestep"][0]) for kwargs, _ in forwards]
    assert model.sampling_timesteps(4) == fed == [0.0, 0.25, 0.5, 0.75]  # t = 1 - sigma: 0 is noise
    assert model.flow_sigmas(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_euler_over_flow_sigmas_reproduces_the_pipeline(model, guidance):
    forwards = pipeline_forwards(model, num_inference_steps=4, guidance_scale=guidance)
    generated = model.pipeline(PROMPT, audio_duration_s=CLIP_SECONDS, num_inference_steps=4, guidance_scale=guidance,
                               generator=torch.Generator().manual_seed(0), output_type="latent").audios
    latents, cond = forwards[0][0]["hidden_states"], model.encode_prompt([PROMPT], guidance)
    sigmas = model.flow_sigmas(4)
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            latents = latents + (sigma_next - sigma) * model.predict_noise(latents, model.timestep_for(sigma), cond,
                                                                          guidance)
    assert (generated - latents).abs().max().item() < ATOL
    assert (generated - forwards[0][0]["hidden_states"]).abs().max().item() > 100 * ATOL, "the model moved it"


def test_generate_is_the_pipeline_call(model):
    """Bit for bit without guidance; with it, up to the rounding of the batched [uncond, cond] forward."""
    for guidance, decode in [(1.0, False), (1.0, True), (3.0, True)]:
        ours = model.generate(PROMPT, steps=3, guidance=guidance, seed=0, decode=decode)
        theirs = model.pipeline(PROMPT, audio_duration_s=CLIP_SECONDS, num_inference_steps=3, guidance_scale=guidance,
                                generator=torch.Generator().manual_seed(0),
                                output_type="np" if decode else "latent").audios[0]
        theirs = theirs[0] if decode else theirs.numpy()
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == ((47104,) if decode else (23, 8))
        if guidance == 1.0:
            assert np.array_equal(ours, theirs)
        else:
            np.testing.assert_allclose(ours, theirs, atol=ATOL)


# ---- capture: changes nothing, leaves nothing, one [uncond, cond] forward per step ------------------------
def test_capture_never_changes_the_output(model):
    batches = []  # the batch size of each denoiser forward, one list per `generate`

    def generate():
        batches.append([])
        counter = model.denoiser.register_forward_pre_hook(
            lambda m, a, k: batches[-1].append(len(k["hidden_states"])), with_kwargs=True)
        try:
            return model.generate(PROMPT, steps=2, guidance=3.0, seed=0)
        finally:
            counter.remove()

    recorder = check_capture_changes_nothing(model, generate)
    assert batches == [[2, 2]] * 3, "one [uncond, cond] forward per step: plain, two-pass and one-pass capture"
    for module in recorder.modules:
        steps, maps = recorder.stacked(module.path)
        assert steps == model.sampling_timesteps(2) and maps.shape[1] == 1, "the cond row of each step's batch"


# ---- recomputed maps are the model's attention ------------------------------------------------------------
CHECKED = ["blocks.0.self_attn", "blocks.0.cross_attn", "blocks.2.cross_attn", "blocks.3.self_attn"]


def test_recomputed_maps_reproduce_the_processors_attention_output(model):
    """Two prompts of different lengths under CFG: the shorter one's text tokens are masked keys in cross-attention."""
    cond = model.encode_prompt([PROMPT, "piano"], guidance=3.0)
    assert not cond.kwargs["encoder_attention_mask"].all()
    latents = torch.randn(2, *model.latent_shape, generator=torch.Generator().manual_seed(1))
    recorded = recorded_attention(model, CHECKED, lambda: model.predict_noise(latents, 0.3, cond, guidance=3.0))
    assert [recorded[p][0].kind for p in CHECKED] == ["self", "cross", "cross", "self"]
    for path in CHECKED:
        assert attention_error(model, *recorded[path]) < ATOL, path

    # Sensitive to each part of the geometry: without RoPE, the q/k norms or the text mask the maps are wrong.
    def without(path, **drop):
        call = recorded[path][0]
        kwargs = {k: v for k, v in call.call_kwargs.items() if k not in drop}
        module = call.module if "norms" not in drop else type("Plain", (), {
            "qk_norm": False, "inner_dim": call.module.inner_dim, "heads": call.module.heads})()
        return LongCatModel.heads_qk(model, module, call.query, call.key, kwargs)

    for path in ("blocks.0.self_attn", "blocks.0.cross_attn"):
        for drop in ({"audio_rotary_emb": 1, "prompt_rotary_emb": 1}, {"norms": 1}):
            model.heads_qk = lambda module, q, k, kwargs, p=path, d=drop: without(p, **d)
            try:
                assert attention_error(model, *recorded[path]) > 1e3 * ATOL, (path, drop)
            finally:
                del model.heads_qk
    model.map_mask = lambda *args: None
    try:
        assert attention_error(model, *recorded["blocks.0.cross_attn"]) > 1e3 * ATOL
    finally:
        del model.map_mask


def test_self_attention_maps_follow_a_padded_latent_mask(model):
    """The pipeline never pads latents; a padded mask (True = keep) must still mask the keys of the map."""
    inputs = model.dummy_denoiser_inputs(batch=1)
    live = model.latent_frames - 5
    inputs["attention_mask"][:, live:] = False
    recorded = recorded_attention(model, ["blocks.1.self_attn"], lambda: model.denoiser(**inputs))
    output = recorded["blocks.1.self_attn"][2]
    assert output[:, live:].abs().max() == 0, "the processor zeroes the output rows of padded frames"
    assert attention_error(model, *recorded["blocks.1.self_attn"], rows=slice(0, live)) < ATOL
    model.map_mask = lambda *args: None
    try:
        assert attention_error(model, *recorded["blocks.1.self_attn"], rows=slice(0, live)) > 1e3 * ATOL
    finally:
        del model.map_mask


# ---- audio <-> latents -------------------------------------------------------------------------------------
def test_encode_audio_and_decode_round_trip_shapes(model):
    generated = model.generate(PROMPT, steps=1, guidance=3.0, seed=0, decode=False)
    seconds = np.arange(int(CLIP_SECONDS * model.sample_rate)) / model.sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)
    latents = model.encode_audio(wave)
    assert tuple(latents.shape) == (1, *generated.shape) == (1, 23, 8) and torch.isfinite(latents).all()
    assert torch.equal(latents, model.encode_audio(wave)), "the posterior mean, not a sample"
    decoded = model.decode(latents)
    assert decoded.dtype == np.float32 and decoded.shape == (model.clip_samples,) == (23 * 2048,)
    assert np.isfinite(decoded).all()


def test_capture_sizes_the_context_axis_for_the_longest_prompt(model, tmp_path):
    """The pipeline pads UMT5 states to the longest prompt of a batch: the store must hold the longest."""
    check_capture_holds_the_longest_context(model, tmp_path)
