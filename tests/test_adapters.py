"""The AudioLDM 2, Stable Audio and SD-UNet adapters on their tiny offline pipelines.

Each adapter must: number layers as the architecture defines them, feed the denoiser exactly what the
pipeline feeds it, never change an output while capturing, and recompute the attention the model
really computed (RoPE, grouped KV heads and masks included).
"""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from _adapter_checks import attention_error, guided_step, recorded_attention
from probing.layers import measure_layer_table
from probing.models import load_model
from probing.models.audioldm2 import AudioLDM2Model, log_mel
from probing.models.base import DiffusionModel
from probing.models.stable_audio import StableAudioModel
from probing.models.unet import UNetModel

# Upstream noise: torchsde's Brownian tree warns on float rounding at the ends of the sigma range.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning", "ignore::FutureWarning")

NAMES = ("tiny-audioldm2", "tiny-stable-audio", "tiny-unet")
PROMPT = "a sad waltz on violin"
ATOL = 1e-5  # recomputed attention output vs the processor's own (float32 throughout)
_MODELS: dict[str, DiffusionModel] = {}


def tiny(name: str) -> DiffusionModel:
    """Loaded once per session through `load_model` (the tiny pipeline folders are built on first use)."""
    if name not in _MODELS:
        model = load_model(name)
        if isinstance(model, AudioLDM2Model):
            model.clip_seconds = 1.28  # 10.24 s by default; short clips keep tests fast
        _MODELS[name] = model
    return _MODELS[name]


# ---- families and layer tables -----------------------------------------------------------------
def test_load_model_picks_the_adapter_of_each_family():
    assert [type(tiny(n)) for n in NAMES] == [AudioLDM2Model, StableAudioModel, UNetModel]
    assert [tiny(n).family for n in NAMES] == ["audioldm2", "stable-audio", "unet"]
    assert tiny("tiny-audioldm2").sample_rate == 16000 and tiny("tiny-stable-audio").sample_rate == 44100


def test_tiny_audioldm2_has_16_positions_of_three_transformers():
    table = measure_layer_table(tiny("tiny-audioldm2"))
    assert table.n_layers == 16 and len(table.modules) == 96 and table.counts() == {"self": 64, "cross": 32}
    for layer in range(1, 17):
        modules = [m for m in table.modules if m.layer == layer]
        kinds = {m.alias.split(".", 2)[2]: (m.kind, m.key_tokens) for m in modules}
        assert list(kinds) == ["t0.attn1", "t0.attn2", "t1.attn1", "t1.attn2", "t2.attn1", "t2.attn2"]
        assert kinds["t0.attn2"][0] == "self", "transformer 0's attn2 is self-attention at run time"
        assert kinds["t1.attn2"] == ("cross", 8)  # the 8 generated GPT-2 tokens
        assert kinds["t2.attn2"][0] == "cross"  # T5
        assert len({m.position for m in modules}) == 1 and len({m.query_tokens for m in modules}) == 1


def test_tiny_unet_has_16_layers_of_one_self_and_one_cross():
    table = measure_layer_table(tiny("tiny-unet"))
    assert table.n_layers == 16 and table.counts() == {"self": 16, "cross": 16}
    for layer in range(1, 17):
        assert [(m.kind, m.path.rsplit(".", 1)[1]) for m in table.modules if m.layer == layer] == [
            ("self", "attn1"), ("cross", "attn2")]


def test_tiny_stable_audio_has_one_layer_per_dit_block():
    model = tiny("tiny-stable-audio")
    table = measure_layer_table(model)
    blocks, length = model.denoiser.config.num_layers, model.denoiser.config.sample_size
    assert table.n_layers == blocks and table.counts() == {"self": blocks, "cross": blocks}
    for m in table.modules:
        assert m.position == f"transformer_blocks.{m.layer - 1}"
        assert m.query_tokens == length + 1 and m.grid == (length + 1, 1)  # + the prepended global token
        expected_keys = length + 1 if m.kind == "self" else model.pipeline.tokenizer.model_max_length + 2
        assert (m.path.rsplit(".", 1)[1], m.key_tokens) == ("attn1" if m.kind == "self" else "attn2", expected_keys)


# ---- conditioning: exactly what the pipeline feeds the denoiser ----------------------------------
def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("name", NAMES)
def test_encode_prompt_and_denoise_call_match_the_pipeline(name):
    model, seen = tiny(name), []

    def first_forward(module, args, kwargs, output):
        if not seen:
            seen.append((args, kwargs, output[0]))

    handle = model.denoiser.register_forward_hook(first_forward, with_kwargs=True)
    try:
        model.generate(PROMPT, steps=1, guidance=3.0, seed=0, decode=False)
    finally:
        handle.remove()
    (latents, t), kwargs, output = seen[0]
    cond = model.encode_prompt([PROMPT], guidance=3.0)
    assert cond.guided and set(cond.kwargs) <= set(kwargs)
    for key, value in cond.kwargs.items():
        assert _same(value, kwargs[key]), key
    with torch.no_grad():
        assert torch.equal(model.denoise_call(latents, t.reshape(()), cond), output)


# ---- recomputed maps are the model's attention ----------------------------------------------------
CHECKED = {  # a few modules of each kind; AudioLDM 2: self attn1, self attn2, GPT-2 cross, T5 cross (masked)
    "tiny-audioldm2": [f"{p}.transformer_blocks.0.{a}" for p, a in [
        ("down_blocks.1.attentions.0", "attn1"), ("up_blocks.1.attentions.3", "attn2"),
        ("mid_block.attentions.1", "attn2"), ("up_blocks.2.attentions.8", "attn2")]],
    "tiny-stable-audio": ["transformer_blocks.0.attn1", "transformer_blocks.0.attn2", "transformer_blocks.1.attn1"],
    "tiny-unet": ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                  "up_blocks.1.attentions.2.transformer_blocks.0.attn2"],
}


@pytest.mark.parametrize("name", NAMES)
def test_recomputed_maps_reproduce_the_models_attention_output(name):
    model = tiny(name)
    recorded = recorded_attention(model, CHECKED[name], guided_step(model, PROMPT))
    assert {c.kind for c, _, _ in recorded.values()} == {"self", "cross"}
    for call, value, output in recorded.values():
        error = attention_error(model, call, value, output)
        assert error < ATOL, f"{call.path}: {error:.2e}"
    if name == "tiny-audioldm2":  # the T5 call had padded (masked) keys in its unconditional row
        t5_call = recorded["up_blocks.2.attentions.8.transformer_blocks.0.attn2"][0]
        assert t5_call.kind == "cross" and (t5_call.attention_mask != 0).any()
    if name == "tiny-stable-audio":  # so the check is sensitive: without RoPE the maps are wrong
        plain = DiffusionModel.heads_qk
        model.heads_qk = lambda module, q, k, kwargs: plain(model, module, q, k, kwargs)
        try:
            assert attention_error(model, *recorded["transformer_blocks.0.attn1"]) > 1e3 * ATOL
        finally:
            del model.heads_qk
        cross_call, cross_value, _ = recorded["transformer_blocks.0.attn2"]
        assert 2 * cross_value.shape[-1] == cross_call.query.shape[-1], "attn2 has grouped KV heads (2:1)"


# ---- audio <-> latents -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny-audioldm2", "tiny-stable-audio"])
def test_encode_audio_and_decode_round_trip_shapes(name):
    model = tiny(name)
    generated = model.generate(PROMPT, steps=1, guidance=3.0, seed=0, decode=False)
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(model.clip_seconds * model.sample_rate)) / model.sample_rate)
    latents = model.encode_audio(wave.astype(np.float32))
    assert tuple(latents.shape) == (1, *generated.shape) and torch.isfinite(latents).all()
    decoded = model.decode(latents)
    assert decoded.dtype == np.float32 and decoded.ndim == 1 and np.isfinite(decoded).all()
    assert decoded.shape == (len(wave),)


def test_audioldm2_latent_length_follows_the_pipeline_rounding():
    model = tiny("tiny-audioldm2")
    assert model.encode_audio(np.zeros(20000, np.float32)).shape == (1, 8, 32, 16)  # 125 frames -> 128
    assert tuple(model.dummy_denoiser_inputs()["sample"].shape) == (1, 8, 32, 16)
    assert AudioLDM2Model(model.pipeline, "x").latent_shape == (8, 256, 16)  # the default 10.24 s


def test_audioldm2_log_mel_matches_librosa():
    """ln(clamp(mel @ |STFT|, 1e-5)), n_fft 1024, hop 160, 64 slaney bands, reflect padding (1024-160)/2."""
    t = np.arange(16000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    ours = log_mel(torch.from_numpy(wave)[None], frames=100)[0, 0].numpy()
    padded = np.pad(wave, 432, mode="reflect")
    magnitude = np.abs(librosa.stft(padded, n_fft=1024, hop_length=160, window="hann", center=False))
    basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0, fmax=8000, norm="slaney")
    expected = np.log(np.maximum(basis @ magnitude, 1e-5)).T
    assert ours.shape == expected.shape == (100, 64)
    np.testing.assert_allclose(ours, expected, atol=1e-3)
    centres = librosa.mel_frequencies(66, fmin=0, fmax=8000)[1:-1]
    assert abs(centres[ours.mean(axis=0).argmax()] - 1000) < 60


def test_unet_refuses_audio_with_one_clear_line():
    from probing.errors import MelodiaError

    model = tiny("tiny-unet")
    for call in (lambda: model.encode_audio(np.zeros(100, np.float32)), lambda: model.decode(torch.zeros(1, 4, 2, 2))):
        with pytest.raises(MelodiaError, match="image pipeline"):
            call()


def test_a_pipeline_object_in_memory_gets_its_familys_adapter():
    """The notebook way in: hand load_model the pipeline you already have; nothing is reloaded."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from probing.errors import MelodiaError

    pipe = tiny("tiny-audioldm2").pipeline
    model = load_model(pipe)
    assert model.family == "audioldm2" and model.pipeline is pipe and load_model(pipe, name="mine").name == "mine"
    unsupported = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                                up_block_types=("UpBlock2D", "UpBlock2D")), scheduler=DDPMScheduler())
    with pytest.raises(MelodiaError, match="DDPMPipeline is not supported .*AudioLDM2Pipeline"):
        load_model(unsupported)
    with pytest.raises(MelodiaError, match="not a dict"):
        load_model({})
