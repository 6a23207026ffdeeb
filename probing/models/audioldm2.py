"""Adapter for AudioLDM 2 (`AudioLDM2Pipeline`, e.g. `cvssp/audioldm2-music`): a thin translation of its pipeline.

Audio <-> latents follows the AudioLDM 2 recipe (the pipeline has no encoder helper): 16 kHz mono ->
log-magnitude mel (n_fft = win = 1024, hop 160, 64 slaney bands 0-8000 Hz, ln(clamp(1e-5))), shape
(B, 1, T, 64) -> VAE mode x scaling_factor; decoding goes VAE -> mel -> the pipeline's HiFi-GAN vocoder.

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-audioldm2"); model.clip_seconds = 1.28
    >>> wave = model.generate("a sad waltz on violin", steps=3, guidance=3.0, seed=0)
    >>> wave.shape, model.encode_audio(wave).shape
    ((20480,), torch.Size([1, 8, 32, 16]))
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline

from probing.models.base import Conditioning, DiffusionModel
from probing.models.family import Family

FAMILY = Family(name="audioldm2", adapter="AudioLDM2Model", pipelines=("AudioLDM2Pipeline",),
                tiny="tiny-audioldm2", reference_config="audioldm2_music_unet", order=1)

# AudioLDM 2's mel front end (its vocoder's input): fixed by the checkpoints, see docs/audioldm2-layers.md.
SAMPLE_RATE, N_FFT, HOP, N_MELS, F_MAX = 16000, 1024, 160, 64, 8000.0
GENERATED_TOKENS = 8  # GPT-2 tokens AudioLDM 2 generates (language_model.config.max_new_tokens)
DUMMY_T5_TOKENS = 16  # T5 length without a tokenizer (reference table on the meta device)


@functools.lru_cache(maxsize=2)
def _mel_basis() -> torch.Tensor:
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=F_MAX, htk=False,
                                norm="slaney")
    return torch.from_numpy(basis).float()


def log_mel(wave: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, samples) 16 kHz -> (B, 1, frames, 64) natural-log magnitude mel, as AudioLDM 2 trained on.

    The wave is zero-padded (or cut) to frames * hop samples; reflect padding of (n_fft - hop) / 2 on
    each side with an uncentred STFT (AudioLDM's `mel_spectrogram_train`) gives exactly `frames` frames.
    """
    samples = frames * HOP
    wave = F.pad(wave.float(), (0, max(0, samples - wave.shape[-1])))[..., :samples]
    side = (N_FFT - HOP) // 2
    wave = F.pad(wave.unsqueeze(1), (side, side), mode="reflect").squeeze(1)
    window = torch.hann_window(N_FFT, device=wave.device)
    magnitude = torch.stft(wave, N_FFT, HOP, win_length=N_FFT, window=window, center=False,
                           return_complex=True).abs()  # (B, freq, frames)
    mel = _mel_basis().to(wave.device) @ magnitude
    return torch.log(mel.clamp_min(1e-5)).transpose(1, 2).unsqueeze(1)


class AudioLDM2Model(DiffusionModel):
    """AudioLDM 2: 16 attention positions, each 3 `Transformer2DModel`s (self only, GPT-2 cross, T5 cross).

    `clip_seconds` (default: the pipeline's own 10.24 s) sets the generated length and the dummy input
    used to measure layers; tests set ~1-2 s on tiny models.
    """

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    default_edit_layers = "self:8-14"
    sample_rate = SAMPLE_RATE
    word_aligned_keys = True  # for the T5 cross-attentions (t2) only: t1 attends GPT-2's 8 generated "LOA" tokens

    def __init__(self, pipeline: DiffusionPipeline, name: str, clip_seconds: float | None = None):
        super().__init__(pipeline, name)
        default = self.denoiser.config.sample_size * self.vae_scale_factor * HOP / SAMPLE_RATE
        self.clip_seconds = float(clip_seconds if clip_seconds is not None else default)

    @property
    def text_tokenizer(self):
        return self.pipeline.tokenizer_2  # T5: the keys of every position's third transformer

    def keys_are_prompt_tokens(self, module) -> bool:
        """Only `t2` (T5 tokens) is word-aligned; `t1`'s keys are generated, not words of the prompt."""
        return ".t2." in module.alias

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipeline.vae_scale_factor)

    def position_of(self, path: str) -> str:
        """`down_blocks.1.attentions.4...` -> `down_blocks.1.position1`: consecutive transformers share a position.

        The block's forward runs `len(block.cross_attention_dim)` transformers per resnet layer (3 here).
        """
        parts = path.split(".")
        index = parts.index("attentions")
        block = ".".join(parts[:index])
        per_position = len(self.denoiser.get_submodule(block).cross_attention_dim)
        return f"{block}.position{int(parts[index + 1]) // per_position}"

    def mel_frames(self, samples: int) -> int:
        """ceil(samples / hop) mel frames, rounded up to a multiple of the VAE factor as the pipeline does."""
        return math.ceil(math.ceil(samples / HOP) / self.vae_scale_factor) * self.vae_scale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(channels, time, freq) of the latents of a `clip_seconds` clip; (8, 256, 16) for 10.24 s."""
        frames = self.mel_frames(round(self.clip_seconds * SAMPLE_RATE))
        return (self.denoiser.config.in_channels, frames // self.vae_scale_factor, N_MELS // self.vae_scale_factor)

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        with torch.no_grad():
            prompt_embeds, attention_mask, generated = self.pipeline.encode_prompt(
                list(prompts), self.device, 1, guidance > 1.0, negative_prompt=negative)
        return Conditioning({"encoder_hidden_states": generated, "encoder_hidden_states_1": prompt_embeds,
                             "encoder_attention_mask_1": attention_mask}, guided=guidance > 1.0, prompts=list(prompts))

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(prompt, audio_length_in_s=self.clip_seconds, num_inference_steps=steps,
                            guidance_scale=guidance, generator=generator,
                            output_type="np" if decode else "latent").audios[0]
        return np.asarray(out, dtype=np.float32) if decode else out.cpu().numpy()

    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).reshape(1, -1).to(self.device)
        mel = log_mel(wave, self.mel_frames(wave.shape[-1])).to(self.pipeline.vae.dtype)
        vae = self.pipeline.vae
        with torch.no_grad():
            return vae.encode(mel).latent_dist.mode() * vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> VAE -> mel -> vocoder, cut to frames x hop samples (the vocoder overshoots a little)."""
        vae = self.pipeline.vae
        with torch.no_grad():
            mel = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
            wave = self.pipeline.mel_spectrogram_to_waveform(mel)
        return wave[0, : mel.shape[2] * HOP].numpy().astype(np.float32)

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        config, device, dtype = self.denoiser.config, self.device, self.dtype
        dims = config.cross_attention_dim
        gpt2_dim, t5_dim = (dims[0] if isinstance(dims[0], (list, tuple)) else dims)[1:3]
        # T5 is padded to the longest prompt: measure at its maximum so capture can pad every map to it
        t5_tokens = getattr(getattr(self.pipeline, "tokenizer_2", None), "model_max_length", DUMMY_T5_TOKENS)
        return {"sample": torch.randn(batch, *self.latent_shape, device=device, dtype=dtype),
                "timestep": torch.tensor(500),  # on the CPU: hooks read it (also for a meta-device model)
                "encoder_hidden_states": torch.randn(batch, GENERATED_TOKENS, gpt2_dim, device=device, dtype=dtype),
                "encoder_hidden_states_1": torch.randn(batch, t5_tokens, t5_dim, device=device, dtype=dtype),
                "encoder_attention_mask_1": torch.ones(batch, t5_tokens, dtype=torch.long, device=device)}


def reference_model(device: str = "meta") -> AudioLDM2Model:
    """The real `cvssp/audioldm2-music` UNet from its pinned config, without weights or hub.

    On "meta" it has no storage at all (layer measurement); on "cpu" it holds random weights
    (full-size speed benchmarks). Only the parts melodia's denoiser-level code reads are present.

    Examples:
        >>> model = reference_model()
        >>> sum(p.numel() for p in model.denoiser.parameters())
        346943496
    """
    from diffusers import AudioLDM2UNet2DConditionModel, DDIMScheduler

    from probing.models.tiny_parts import load_reference_config

    with torch.device(device):
        unet = AudioLDM2UNet2DConditionModel.from_config(load_reference_config("audioldm2_music_unet"))
    # The real VAE has 3 levels (factor 4).
    pipeline = SimpleNamespace(unet=unet.eval(), scheduler=DDIMScheduler(), vae_scale_factor=4)
    return AudioLDM2Model(pipeline, "cvssp/audioldm2-music")


def reference_layer_table():
    """The layer table of the real `cvssp/audioldm2-music` UNet (pinned config, meta device: no weights, no hub).

    Examples:
        >>> table = reference_layer_table()
        >>> table.n_layers, table.counts()
        (16, {'self': 64, 'cross': 32})
    """
    from probing.layers import measure_layer_table

    return measure_layer_table(reference_model("meta"))


# ---- the tiny offline pipeline -----------------------------------------------------------------------------
def build_tiny_pipeline(seed: int = 0):
    """AudioLDM 2 music, shrunk: UNet layout, conditioning path and mel/vocoder geometry kept.

    Kept from `cvssp/audioldm2-music`: DownBlock2D + 3 CrossAttnDownBlock2D, mid, 3 CrossAttnUpBlock2D +
    UpBlock2D, 2 layers per block, 8 heads, 3 transformers per attention position (self only, GPT-2
    cross, T5 cross), so the same 96 attention module paths; 8 latent channels, a 3-level VAE (factor 4),
    64 mel bins, a 16 kHz vocoder with hop 160, 8 generated GPT-2 tokens, the default 10.24 s. Shrunk:
    every width and depth. Attention cost grows with clip length as in the real model (1024 query tokens
    at positions 1-2 and 14-16 for 10.24 s): tests should generate 1-3 s.
    """
    from probing.models.tiny_parts import roberta_tokenizer, seeded, t5_tokenizer, unit_gain
    from diffusers import AudioLDM2Pipeline, AudioLDM2ProjectionModel, AudioLDM2UNet2DConditionModel
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig,
                              GPT2Config, GPT2LMHeadModel, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5Config,
                              T5EncoderModel)

    gpt2_dim, t5_dim, clap_dim, mel_bins = 16, 32, 16, 64
    tokenizer, tokenizer_2 = roberta_tokenizer(77), t5_tokenizer(128)
    unet = seeded(seed, lambda: AudioLDM2UNet2DConditionModel(
        sample_size=256, in_channels=8, out_channels=8,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        block_out_channels=(16, 32, 48, 80), layers_per_block=2, norm_num_groups=8, attention_head_dim=8,
        cross_attention_dim=[[None, gpt2_dim, t5_dim]] * 4,
    ))
    vae = seeded(seed, lambda: AutoencoderKL(
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
    text_encoder = seeded(seed, lambda: ClapModel(clap_config))
    text_encoder_2 = seeded(seed, lambda: T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=t5_dim, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
    )))
    language_model = seeded(seed, lambda: GPT2LMHeadModel(GPT2Config(
        n_embd=gpt2_dim, n_head=2, n_layer=2, vocab_size=len(tokenizer), n_positions=99,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )))
    language_model.config.max_new_tokens = 8
    projection_model = seeded(seed, lambda: AudioLDM2ProjectionModel(
        text_encoder_dim=clap_dim, text_encoder_1_dim=t5_dim, langauge_model_dim=gpt2_dim,
    ))
    vocoder = seeded(seed, lambda: unit_gain(SpeechT5HifiGan(SpeechT5HifiGanConfig(
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
