"""The tiny offline pipelines and the pinned reference configs of the real denoisers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AudioLDM2UNet2DConditionModel, StableAudioDiTModel
from diffusers.models.attention_processor import Attention

from probing.models import tiny, tiny_parts
from probing.models.registry import tiny_names
from probing.models.tiny import build_tiny, tiny_pipeline_dir
from probing.models.tiny_parts import load_reference_config

# Upstream noise: torchsde's Brownian tree warns on float rounding at the ends of the sigma range.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

# What one short generation returns: (batch, samples), (batch, channels, samples), (batch, H, W, RGB).
EXPECTED_SHAPE = {"tiny-audioldm2": (1, 20480), "tiny-stable-audio": (1, 2, 44100), "tiny-unet": (1, 64, 64, 3),
                  "tiny-ace-step": (1, 2, 96000), "tiny-stable-audio-3": (1, 2, 44100), "tiny-longcat": (1, 1, 47104)}


def generate(pipe, name: str, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
    if name == "tiny-audioldm2":
        return pipe("a sad waltz on violin", audio_length_in_s=1.28, **common).audios
    if name == "tiny-stable-audio":
        return pipe("a sad waltz on violin", audio_end_in_s=1.0, **common).audios.numpy()
    if name == "tiny-ace-step":
        return pipe("a sad waltz on violin", audio_duration=2.0, output_type="np", **common).audios
    if name == "tiny-stable-audio-3":
        return pipe("a sad waltz on violin", duration=1.0, **common).audios.numpy()
    if name == "tiny-longcat":
        return pipe("a sad waltz on violin", audio_duration_s=2.0, **common).audios
    return pipe("a sad waltz on violin", height=64, width=64, output_type="np", **common).images


@pytest.fixture(scope="module")
def built():
    """name -> (pipeline, its output for seed 0), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            pipe = build_tiny(name)
            cache[name] = (pipe, generate(pipe, name))
        return cache[name]

    return get


def attention_table(model) -> list[tuple[str, bool, int, int]]:
    """(module path, is cross, query heads, key/value heads) for every Attention module."""
    rows = []
    for path, attn in model.named_modules():
        if isinstance(attn, Attention):
            head_dim = attn.inner_dim // attn.heads
            rows.append((path, attn.is_cross_attention, attn.heads, attn.to_k.out_features // head_dim))
    return rows


def state(pipe) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
        for key, value in module.state_dict().items()
    }


@pytest.mark.parametrize("name", tiny_names())
def test_each_tiny_model_generates_a_finite_non_silent_clip(built, name):
    _, output = built(name)
    assert output.shape == EXPECTED_SHAPE[name]
    assert np.isfinite(output).all()
    assert output.std() > 1e-3, "output is (near) silent or constant"


@pytest.mark.parametrize("name", tiny_names())
def test_save_and_reload_reproduces_the_output(built, name, tmp_path):
    pipe, output = built(name)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert not list(tmp_path.rglob("*.bin")), "weights must be safetensors"
    assert list(tmp_path.rglob("*.safetensors"))
    reloaded = type(pipe).from_pretrained(tmp_path)
    # Weights come back bit-identical; outputs may differ by float rounding only, because BLAS
    # takes another kernel for the memory-mapped (differently aligned) tensors.
    assert all(torch.equal(a, b) for a, b in zip(state(pipe).values(), state(reloaded).values()))
    np.testing.assert_allclose(generate(reloaded, name), output, rtol=0, atol=1e-5)
    for key in pipe.components:
        if key.startswith("tokenizer"):
            text = "a sad waltz on violin, xylophone 12"
            assert getattr(reloaded, key)(text).input_ids == getattr(pipe, key)(text).input_ids


@pytest.mark.parametrize("name", tiny_names())
def test_the_seed_decides_every_weight(name):
    first, again, other = state(build_tiny(name, seed=0)), state(build_tiny(name, seed=0)), state(build_tiny(name, 1))
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    denoiser = "unet." if name in ("tiny-audioldm2", "tiny-unet") else "transformer."
    changed = [k for k in first if k.startswith(denoiser) and not torch.equal(first[k], other[k])]
    assert len(changed) > 10


@pytest.mark.parametrize("name", tiny_names())
def test_a_fresh_build_is_in_eval_mode_like_a_loaded_one(name):
    pipe = build_tiny(name)
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    assert modules and not any(sub.training for m in modules for sub in m.modules())


def test_tiny_audioldm2_unet_has_the_real_attention_layout(built):
    """Same module paths, kinds and heads as the real music UNet: only widths differ."""
    unet = built("tiny-audioldm2")[0].unet
    with torch.device("meta"):
        real = AudioLDM2UNet2DConditionModel.from_config(load_reference_config("audioldm2_music_unet"))
    assert attention_table(unet) == attention_table(real)
    for key in ("down_block_types", "up_block_types", "mid_block_type", "layers_per_block", "attention_head_dim",
                "in_channels", "out_channels", "sample_size"):
        assert json.dumps(unet.config[key]) == json.dumps(real.config[key]), key  # tuples vs lists
    assert [len(dims) for dims in unet.config.cross_attention_dim] == [3, 3, 3, 3]
    assert [dims[0] for dims in unet.config.cross_attention_dim] == [None] * 4


def test_tiny_stable_audio_keeps_grouped_kv_heads_and_rope(built):
    pipe = built("tiny-stable-audio")[0]
    table = attention_table(pipe.transformer)
    assert [cross for _, cross, _, _ in table] == [False, True] * pipe.transformer.config.num_layers
    for _, cross, heads, kv_heads in table:
        assert kv_heads == (heads // 2 if cross else heads)  # 24 query / 12 KV heads in the real one
    assert pipe.vae.hop_length == 2048 and pipe.vae.sampling_rate == 44100
    assert type(pipe.scheduler).__name__ == "CosineDPMSolverMultistepScheduler"


def test_tiny_unet_has_sd1_attention_pattern(built):
    table = attention_table(built("tiny-unet")[0].unet)
    assert len(table) == 32 and sum(cross for _, cross, _, _ in table) == 16  # as SD 1.x: 16 self + 16 cross
    assert {heads for _, _, heads, _ in table} == {8}


def test_tokenizers_keep_music_words_whole_and_are_deterministic():
    text = "a sad waltz on violin"
    roberta, t5, clip = tiny_parts.roberta_tokenizer(), tiny_parts.t5_tokenizer(), tiny_parts.clip_tokenizer()
    assert roberta.tokenize(text) == ["a", "Ġsad", "Ġwaltz", "Ġon", "Ġviolin"]
    assert t5.tokenize(text) == ["▁a", "▁sad", "▁waltz", "▁on", "▁violin"]
    assert clip.tokenize(text) == ["a</w>", "sad</w>", "waltz</w>", "on</w>", "violin</w>"]
    unknown = "Xylophone & 12 kazoos!"
    assert roberta.decode(roberta(unknown).input_ids, skip_special_tokens=True) == unknown
    assert t5.decode(t5(unknown).input_ids, skip_special_tokens=True) == unknown
    assert roberta.pad_token_id == 1 and t5.eos_token_id == 1 and t5.pad_token_id == 0
    for make in (tiny_parts.roberta_tokenizer, tiny_parts.t5_tokenizer, tiny_parts.clip_tokenizer):
        assert make().backend_tokenizer.to_str() == make().backend_tokenizer.to_str()


def test_pipeline_dir_is_built_once_then_reused(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    path = tiny_pipeline_dir("tiny-unet", cache_dir=tmp_path)
    assert path.parent == tmp_path and path.name == f"tiny-unet-{tiny.TINY_VERSION}"
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no staging folder left behind"

    def must_not_build(*args, **kwargs):
        raise AssertionError("rebuilt although the folder exists")

    monkeypatch.setattr(tiny, "build_tiny", must_not_build)
    assert tiny_pipeline_dir("tiny-unet", cache_dir=tmp_path) == path
    StableDiffusionPipeline.from_pretrained(path)  # loads offline from the local folder


def test_a_crash_while_saving_leaves_no_pipeline_dir(tmp_path, monkeypatch):
    def crash(name, seed=0):
        pipe = build_tiny(name, seed)

        def half_save(directory, **kwargs):
            (directory / "model_index.json").write_text("{}")
            raise OSError("disk full")

        pipe.save_pretrained = half_save
        return pipe

    monkeypatch.setattr(tiny, "build_tiny", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny_pipeline_dir("tiny-unet", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_are_refused_with_the_valid_ones(tmp_path):
    for call in (lambda: build_tiny("tiny-flux"), lambda: tiny_pipeline_dir("tiny-flux", cache_dir=tmp_path)):
        with pytest.raises(ValueError, match="tiny-audioldm2, tiny-stable-audio, tiny-unet"):
            call()
    with pytest.raises(ValueError, match="audioldm2_music_unet"):
        load_reference_config("audioldm2")


def test_real_audioldm2_music_unet_config_on_meta_device():
    """346.9M parameters, 96 attention modules (64 self, 32 cross), 8 heads each (docs/audioldm2-layers.md)."""
    config = load_reference_config("audioldm2_music_unet")
    with torch.device("meta"):
        unet = AudioLDM2UNet2DConditionModel.from_config(config)
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 346.9
    table = attention_table(unet)
    assert len(table) == 96 and sum(cross for _, cross, _, _ in table) == 32
    assert {heads for _, _, heads, _ in table} == {8}
    assert tuple(unet.config.block_out_channels) == (128, 256, 384, 640)
    assert [list(d) for d in unet.config.cross_attention_dim] == [[None, 768, 1024]] * 4


def test_real_stable_audio_open_transformer_config_on_meta_device():
    """1057M parameters (the Stable Audio Open paper's DiT); 24 blocks of RoPE self + GQA cross attention."""
    with torch.device("meta"):
        dit = StableAudioDiTModel.from_config(load_reference_config("stable_audio_open_transformer"))
    assert round(sum(p.numel() for p in dit.parameters()) / 1e6, 1) == 1056.9
    table = attention_table(dit)
    assert len(table) == 48 and sum(cross for _, cross, _, _ in table) == 24
    assert {(cross, heads, kv) for _, cross, heads, kv in table} == {(False, 24, 24), (True, 24, 12)}
