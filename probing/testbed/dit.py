"""TestbedDiTPipeline: the flow-matching DiT twin of the testbed (`--model testbed-dit`).

Same synthetic music, text encoder layout and mel codec as the UNet testbed; the denoiser is a
`LongCatAudioDiTTransformer` (LongCat-AudioDiT's block: AdaLN, self-attention with RoPE and q/k
RMS norms, cross-attention to the text), trained with the rectified-flow objective and sampled
with `FlowMatchEulerDiscreteScheduler` from sigma 1 (noise) to 0 like LongCat's pipeline. A
latent is the codec's (16, 64, 16) latent as a sequence: 64 time tokens of 16 x 16 = 256 values.

Examples:
    >>> pipe = TestbedDiTPipeline.from_pretrained(testbed_weights_dir("testbed-dit"))
    >>> audio = pipe("a sad waltz played on violin", num_inference_steps=25).audios[0]
    >>> audio.shape
    (65536,)
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LongCatAudioDiTTransformer
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from probing.testbed.build import TEXT_DIM, build_text_encoder, build_tokenizer
from probing.testbed.codec import MelCodec
from probing.testbed.pipeline import TestbedTextAudio

# LongCat-AudioDiT's block at testbed size: 6 blocks (layers), width 256, 8 heads of 32. Width 256 holds a
# whole token (4 frames x 64 mels); v1 (width 128, 12 blocks) was narrower and kept the noise (docs/flow-models.md).
DIT_CONFIG = dict(dit_dim=256, dit_depth=6, dit_heads=8, dit_text_dim=TEXT_DIM, dropout=0.0, bias=True,
                  cross_attn=True, adaln_type="global", adaln_use_text_cond=True, long_skip=True, text_conv=False,
                  qk_norm=True, cross_attn_norm=False, use_latent_condition=False, ff_mult=2.0)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def sigma_schedule(steps: int) -> list[float]:
    """The sampler's sigmas before the final 0: `steps` values from 1 down to 1/steps (LongCat's)."""
    return torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32).tolist()


class TestbedDiTPipeline(TestbedTextAudio):
    """Text -> 4.096 s of 16 kHz music with a flow-matching DiT, trained by melodia on synthetic renders."""

    __test__ = False  # not a pytest test class, despite the name

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer: LongCatAudioDiTTransformer, text_encoder: T5EncoderModel,
                 tokenizer: PreTrainedTokenizerFast, scheduler: FlowMatchEulerDiscreteScheduler,
                 sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64,
                 frames: int = 256, latent_factor: int = 4, mel_mean: float = -4.0, mel_std: float = 2.5,
                 time_factor: int | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)
        self._register_codec(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                             frames=frames, latent_factor=latent_factor, mel_mean=mel_mean, mel_std=mel_std,
                             time_factor=time_factor)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(tokens, channels) of one latent sequence."""
        channels, frames, bands = self.codec.latent_shape
        return (frames, channels * bands)

    def to_sequence(self, latents: torch.Tensor) -> torch.Tensor:
        """Codec latents (B, C, T, F) -> the DiT's sequence (B, T, C*F)."""
        return latents.permute(0, 2, 1, 3).flatten(2)

    def from_sequence(self, sequence: torch.Tensor) -> torch.Tensor:
        """The DiT's sequence (B, T, C*F) -> codec latents (B, C, T, F)."""
        channels, frames, bands = self.codec.latent_shape
        return sequence.unflatten(2, (channels, bands)).permute(0, 2, 1, 3)

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) waveform at `sample_rate` -> latent sequences (B, *latent_shape)."""
        return self.to_sequence(self.codec.encode(wave.to(self.transformer.device)))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latent sequences -> (B, clip_samples) waveform (Griffin-Lim)."""
        return self.codec.decode(self.from_sequence(latents))

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
                 guidance_scale: float) -> torch.Tensor:
        """dx/dsigma at `sigma`; with guidance > 1, `hidden`/`mask` are the [uncond, cond] batch."""
        batch = latents if guidance_scale <= 1.0 else torch.cat([latents, latents])
        timestep = torch.as_tensor(sigma, dtype=latents.dtype, device=latents.device).expand(batch.shape[0])
        out = self.transformer(hidden_states=batch, encoder_hidden_states=hidden, encoder_attention_mask=mask.bool(),
                               timestep=timestep).sample
        if guidance_scale <= 1.0:
            return out
        uncond, cond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 25, guidance_scale: float = 3.0,
                 negative_prompt: str | list[str] | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np") -> AudioPipelineOutput:
        prompts, negative = self._prompts(prompt, negative_prompt)
        hidden, mask = self.conditioning(prompts, guidance_scale, negative)
        device = self.transformer.device
        if latents is None:
            latents = torch.randn((len(prompts), *self.latent_shape), generator=generator, device="cpu").to(device)
        self.scheduler.set_timesteps(sigmas=sigma_schedule(num_inference_steps), device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            v = self.velocity(latents, t / self.scheduler.config.num_train_timesteps, hidden, mask, guidance_scale)
            latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
        if output_type == "latent":
            return AudioPipelineOutput(audios=latents)
        audio = self.decode_latents(latents)
        return AudioPipelineOutput(audios=audio.cpu().numpy().astype(np.float32) if output_type == "np" else audio)


def build_untrained_dit(words: Iterable[str], seed: int = 0, codec: MelCodec | None = None) -> TestbedDiTPipeline:
    """A randomly initialised DiT testbed over the caption vocabulary `words`."""
    codec = codec or MelCodec()
    tokenizer = build_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = build_text_encoder(tokenizer)
    channels, _, bands = codec.latent_shape
    transformer = LongCatAudioDiTTransformer(latent_dim=channels * bands, **DIT_CONFIG)
    config = {k: v for k, v in codec.to_config().items() if k != "griffin_lim_iters"}
    return TestbedDiTPipeline(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), **config)
