"""Tiny, architecture-faithful pipelines with random weights, built offline.

Each tiny model is a real diffusers pipeline of the family it stands for, with every component
shrunk but laid out like the real checkpoint (same block types, same attention pattern, same
conditioning path), so layer discovery, capture, inversion and editing can be tested without a
model hub. The tokenizers are built in memory from a fixed list of music words (no files).

Examples:
    >>> from probing.models.tiny import build_tiny
    >>> pipe = build_tiny("tiny-audioldm2")
    >>> pipe.set_progress_bar_config(disable=True)
    >>> audio = pipe("a piano melody", num_inference_steps=2, audio_length_in_s=1.28).audios
    >>> audio.shape
    (1, 20480)
"""
from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import string
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import pre_tokenizers

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

TINY_MODELS = ("tiny-audioldm2", "tiny-stable-audio", "tiny-unet", "tiny-ace-step", "tiny-stable-audio-3",
               "tiny-longcat")

# Bump when a builder changes, so cached pipeline folders from older builders are not reused.
TINY_VERSION = "1"

_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REFERENCE_CONFIGS = ("audioldm2_music_unet", "stable_audio_open_transformer", "ace_step_transformer",
                     "stable_audio_3_transformer", "longcat_audio_dit_transformer")

# The tokenizers' vocabulary: each of these words is one token, so the per-token cross-attention
# maps of a tiny model line up with words as they do in a real model. Other text is spelled in
# characters (bytes for the BPE tokenizers), never lost.
WORDS = sorted(set("""
    piano violin guitar cello flute trumpet drums bass synth organ harp saxophone clarinet voice strings
    waltz march jazz rock pop classical ambient techno folk blues ballad lullaby funk
    happy sad calm energetic dark bright gentle melancholic dreamy loud soft slow fast
    a an the on in with and of by melody song music tune played playing rhythm beat solo piece
    """.split()))


def _bpe_merges(words: list[list[str]]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one symbol; ties go to the smallest pair, so it is deterministic."""
    words = [list(w) for w in words]
    merges = []
    while pairs := Counter(p for w in words for p in zip(w, w[1:])):
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i : i + 2] = [w[i] + w[i + 1]]
                i += 1
    return merges


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def roberta_tokenizer(model_max_length: int = 77):
    """A byte-level BPE `RobertaTokenizer` (the CLAP text tokenizer of AudioLDM 2), built in memory."""
    from transformers import RobertaTokenizer

    merges = _bpe_merges([list(w) for w in WORDS] + [["Ġ", *w] for w in WORDS])  # "Ġ": a leading space
    # RoBERTa order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4 (ClapTextConfig pad_token_id=1).
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + _byte_alphabet() + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def clip_tokenizer(model_max_length: int = 77):
    """A `CLIPTokenizer` (byte-level BPE with `</w>` word ends), built in memory."""
    from transformers import CLIPTokenizer

    merges = _bpe_merges([[*w[:-1], w[-1] + "</w>"] for w in WORDS])
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # last, as in CLIP's vocabulary
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 128):
    """A unigram `T5Tokenizer` (as used by Flan-T5 and T5-base), built in memory, without extra ids."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(f"▁{w}", -2.0) for w in WORDS] + [(c, -10.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


def _seeded(seed: int, build):
    torch.manual_seed(seed)
    return build()


def _unit_gain(module: torch.nn.Module) -> torch.nn.Module:
    """Re-draw conv weights with variance 1/fan-in. HiFi-GAN's own init (std 0.01) makes a tiny
    vocoder output about 1e-10; this one gives audio at a normal level (RMS about 0.1)."""
    for conv in module.modules():
        if isinstance(conv, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            upsampling = conv.stride[0] if isinstance(conv, torch.nn.ConvTranspose1d) else 1
            fan_in = conv.in_channels * conv.kernel_size[0] / upsampling
            torch.nn.init.normal_(conv.weight, std=1 / math.sqrt(fan_in))
    return module


def _tiny_audioldm2(seed: int):
    """AudioLDM 2 music, shrunk: UNet layout, conditioning path and mel/vocoder geometry kept.

    Kept from `cvssp/audioldm2-music`: DownBlock2D + 3 CrossAttnDownBlock2D, mid, 3 CrossAttnUpBlock2D +
    UpBlock2D, 2 layers per block, 8 heads, 3 transformers per attention position (self only, GPT-2
    cross, T5 cross), so the same 96 attention module paths; 8 latent channels, a 3-level VAE (factor 4),
    64 mel bins, a 16 kHz vocoder with hop 160, 8 generated GPT-2 tokens, the default 10.24 s. Shrunk:
    every width and depth. Attention cost grows with clip length as in the real model (1024 query tokens
    at positions 1-2 and 14-16 for 10.24 s): tests should generate 1-3 s.
    """
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig,
                              GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config,
                              T5EncoderModel)

    gpt2_dim, t5_dim, clap_dim, mel_bins = 16, 32, 16, 64
    tokenizer, tokenizer_2 = roberta_tokenizer(77), t5_tokenizer(128)
    unet = _seeded(seed, lambda: AudioLDM2UNet2DConditionModel(
        sample_size=256, in_channels=8, out_channels=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=(16, 32, 48, 80), layers_per_block=2, norm_num_groups=8, attention_head_dim=8,
        cross_attention_dim=[[None, gpt2_dim, t5_dim]] * 4,
    ))
    vae = _seeded(seed, lambda: AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(8, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    ))
    clap_config = ClapConfig(
        text_config=ClapTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=2,
            num_hidden_layers=2, pad_token_id=1, bos_token_id=0, eos_token_id=2, projection_dim=clap_dim,
        ).to_dict(),
        audio_config=ClapAudioConfig(
            spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, depths=[2, 2],
            num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=32, projection_dim=clap_dim,
            patch_size=2, patch_stride=2, patch_embeds_hidden_size=16, patch_embed_input_channels=4,
        ).to_dict(),
        projection_dim=clap_dim,
    )
    text_encoder = _seeded(seed, lambda: ClapModel(clap_config))
    text_encoder_2 = _seeded(seed, lambda: T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=t5_dim, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
    )))
    language_model = _seeded(seed, lambda: GPT2LMHeadModel(GPT2Config(
        n_embd=gpt2_dim, n_head=2, n_layer=2, vocab_size=len(tokenizer), n_positions=99,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )))
    language_model.config.max_new_tokens = 8
    projection_model = _seeded(seed, lambda: AudioLDM2ProjectionModel(
        text_encoder_dim=clap_dim, text_encoder_1_dim=t5_dim, langauge_model_dim=gpt2_dim,
    ))
    vocoder = _seeded(seed, lambda: _unit_gain(SpeechT5HifiGan(SpeechT5HifiGanConfig(
        model_in_dim=mel_bins, sampling_rate=16000, upsample_initial_channel=64,
        upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False,
    ))))
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
        steps_offset=1, clip_sample=False, set_alpha_to_one=False,
    )
    return AudioLDM2Pipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, projection_model=projection_model,
        language_model=language_model, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        # 10 s at 48 kHz, hop 7900: 61 frames, within the tiny Swin's 64 (the real one: 1001 of 1024).
        feature_extractor=ClapFeatureExtractor(feature_size=64, hop_length=7900),
        unet=unet, scheduler=scheduler, vocoder=vocoder,
    )


def _tiny_stable_audio(seed: int):
    """Stable Audio Open 1.0, shrunk: DiT with partial RoPE and grouped KV heads, Oobleck VAE, T5, timing.

    Kept from `stabilityai/stable-audio-open-1.0`: 2:1 query:KV heads in cross-attention, cross-attention
    width = KV heads x head dim = T5 width, global conditioning = 2 x T5 width, an Oobleck VAE with strides
    (2, 4, 4, 8, 8) (hop 2048) at 44.1 kHz stereo, timing conditioning 0-512 s, the cosine DPM-Solver
    scheduler (v-prediction). Shrunk: widths, depth, latent channels (8) and window (32 latents, 1.49 s).
    """
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioPipeline, StableAudioProjectionModel)
    from transformers import T5Config, T5EncoderModel

    t5_dim, head_dim, kv_heads, latent_channels = 16, 8, 2, 8
    tokenizer = t5_tokenizer(128)
    transformer = _seeded(seed, lambda: StableAudioDiTModel(
        sample_size=32, in_channels=latent_channels, out_channels=latent_channels, num_layers=2,
        attention_head_dim=head_dim, num_attention_heads=2 * kv_heads, num_key_value_attention_heads=kv_heads,
        cross_attention_dim=kv_heads * head_dim, cross_attention_input_dim=t5_dim,
        global_states_input_dim=2 * t5_dim, time_proj_dim=16,
    ))
    vae = _seeded(seed, lambda: AutoencoderOobleck(
        encoder_hidden_size=2 * latent_channels, downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 2, 4, 8, 16], decoder_channels=4, decoder_input_channels=latent_channels,
        audio_channels=2, sampling_rate=44100,
    ))
    text_encoder = _seeded(seed, lambda: T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=t5_dim, d_ff=37, d_kv=8, num_heads=2, num_layers=2,
    )))
    projection_model = _seeded(seed, lambda: StableAudioProjectionModel(
        text_encoder_dim=t5_dim, conditioning_dim=t5_dim, min_value=0, max_value=512,
    ))
    scheduler = CosineDPMSolverMultistepScheduler(
        sigma_min=0.3, sigma_max=500, sigma_data=1.0, sigma_schedule="exponential", solver_order=2,
        prediction_type="v_prediction",
    )
    return StableAudioPipeline(
        vae=vae, text_encoder=text_encoder, projection_model=projection_model, tokenizer=tokenizer,
        transformer=transformer, scheduler=scheduler,
    )


def _tiny_unet(seed: int):
    """Stable Diffusion 1.x, shrunk: 3 CrossAttn down blocks + DownBlock2D, mid, UpBlock2D + 3 CrossAttn up.

    Kept: the block layout (16 attention positions, each one self- and one cross-attention), 2 layers per
    block, 8 heads, a 4-level VAE (factor 8) with 4 latent channels, CLIP text conditioning, the SD 1.x
    DDIM schedule. Shrunk: widths and depths; the default image is 128 x 128 (latent 16 x 16).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_dim = 32
    tokenizer = clip_tokenizer(77)
    unet = _seeded(seed, lambda: UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 48, 48), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=8, attention_head_dim=8, cross_attention_dim=text_dim,
    ))
    vae = _seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ))
    text_encoder = _seeded(seed, lambda: CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=text_dim, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
        set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _flow_family(module: str):
    """The tiny builder of a flow-matching family, kept next to its adapter (`build_tiny_pipeline(seed)`)."""
    def build(seed: int):
        return importlib.import_module(f"probing.models.{module}").build_tiny_pipeline(seed)
    return build


_BUILDERS = {"tiny-audioldm2": _tiny_audioldm2, "tiny-stable-audio": _tiny_stable_audio, "tiny-unet": _tiny_unet,
             "tiny-ace-step": _flow_family("ace_step"), "tiny-stable-audio-3": _flow_family("stable_audio_3"),
             "tiny-longcat": _flow_family("longcat")}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}: expected one of {', '.join(TINY_MODELS)}")


def build_tiny(name: str, seed: int = 0) -> DiffusionPipeline:
    """Build a tiny pipeline in memory: random weights (seeded per component), no download.

    Args:
        name: one of `TINY_MODELS`.
        seed: seeds every component's initialisation; the same seed gives the same weights.

    Returns:
        A `diffusers.DiffusionPipeline` (`AudioLDM2Pipeline`, `StableAudioPipeline` or
        `StableDiffusionPipeline`) on the CPU in float32.

    Examples:
        >>> build_tiny("tiny-unet").__class__.__name__
        'StableDiffusionPipeline'
    """
    _check_name(name)
    pipe = _BUILDERS[name](seed)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them: dropout off
    return pipe


def default_cache_dir() -> Path:
    """`$MELODIA_CACHE/tiny` if that variable is set, else `~/.cache/melodia/tiny`."""
    root = os.environ.get("MELODIA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "melodia") / "tiny"


def tiny_pipeline_dir(name: str, cache_dir: Path | None = None) -> Path:
    """A local pipeline folder for `name` (seed 0), built and saved on first use, reused after.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written pipeline where a later call would take it for a finished one.

    Args:
        name: one of `TINY_MODELS`.
        cache_dir: parent folder; default `default_cache_dir()`.

    Returns:
        `<cache_dir>/<name>-<TINY_VERSION>`, loadable with `<PipelineClass>.from_pretrained`.
    """
    _check_name(name)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{name}-{TINY_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        build_tiny(name, seed=0).save_pretrained(staging, safe_serialization=True)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_reference_config(name: str) -> dict:
    """The pinned config of a real checkpoint's denoiser, for building it on the meta device.

    Args:
        name: `"audioldm2_music_unet"` (`cvssp/audioldm2-music`, `AudioLDM2UNet2DConditionModel`) or
            `"stable_audio_open_transformer"` (`stabilityai/stable-audio-open-1.0`, `StableAudioDiTModel`).

    Examples:
        >>> load_reference_config("audioldm2_music_unet")["block_out_channels"]
        [128, 256, 384, 640]
    """
    if name not in REFERENCE_CONFIGS:
        raise ValueError(f"unknown reference config {name!r}: expected one of {', '.join(REFERENCE_CONFIGS)}")
    config = json.loads((_CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_comment")}
