"""TestbedPipeline: melodia's own small text-to-music diffusion model, a normal diffusers pipeline.

Components: a word-level tokenizer over the caption vocabulary, a small T5 text encoder, a
`UNet2DConditionModel` laid out like AudioLDM 2's (16 attention positions: 6 down, 1 mid, 9 up),
a DDIM scheduler, and the fixed mel codec of `probing.testbed.codec` (its settings live in the
pipeline config).

Examples:
    >>> pipe = TestbedPipeline.from_pretrained(testbed_weights_dir())
    >>> audio = pipe("a sad waltz played on violin", num_inference_steps=25).audios[0]
    >>> audio.shape
    (65536,)
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from transformers import PreTrainedTokenizerFast, T5EncoderModel

from probing.testbed.codec import MelCodec

MAX_PROMPT_TOKENS = 16


class TestbedTextAudio(DiffusionPipeline):
    """What both testbeds share: the word-level text encoder and the mel codec (settings in the config)."""

    def _register_codec(self, **settings) -> None:
        self.codec = MelCodec(**settings)
        self.register_to_config(**{k: v for k, v in self.codec.to_config().items() if k != "griffin_lim_iters"})

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (hidden states (B, tokens, dim), attention mask (B, tokens))."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=MAX_PROMPT_TOKENS,
                                truncation=True, return_tensors="pt")
        ids = tokens.input_ids.to(self.text_encoder.device)
        mask = tokens.attention_mask.to(self.text_encoder.device)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden, mask

    def conditioning(self, prompts: list[str], guidance_scale: float,
                     negative_prompts: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text conditioning in the order the denoiser batch has ([uncond, cond] under CFG)."""
        if guidance_scale <= 1.0:
            return self.encode_prompt(prompts)
        negative = negative_prompts or [""] * len(prompts)
        hidden, mask = self.encode_prompt(list(negative) + list(prompts))
        return hidden, mask

    def _prompts(self, prompt: str | list[str], negative_prompt: str | list[str] | None):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        return prompts, negative


class TestbedPipeline(TestbedTextAudio):
    """Text -> 4.096 s of 16 kHz music, trained by melodia on synthetic renders."""

    __test__ = False  # not a pytest test class, despite the name

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: T5EncoderModel,
                 tokenizer: PreTrainedTokenizerFast, scheduler: DDIMScheduler,
                 sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 64,
                 frames: int = 256, latent_factor: int = 4, mel_mean: float = -4.0, mel_std: float = 2.5,
                 time_factor: int | None = None):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self._register_codec(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
                             frames=frames, latent_factor=latent_factor, mel_mean=mel_mean, mel_std=mel_std,
                             time_factor=time_factor)

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) waveform at `sample_rate` -> latents (B, *codec.latent_shape)."""
        return self.codec.encode(wave.to(self.unet.device))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, clip_samples) waveform (Griffin-Lim)."""
        return self.codec.decode(latents)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor | int, hidden: torch.Tensor,
                      mask: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """eps for `latents` at `t`; with guidance > 1, `hidden`/`mask` are the [uncond, cond] batch."""
        if guidance_scale <= 1.0:
            return self.unet(latents, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        eps = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=hidden,
                        encoder_attention_mask=mask).sample
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 50, guidance_scale: float = 3.0,
                 negative_prompt: str | list[str] | None = None, generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, output_type: str = "np") -> AudioPipelineOutput:
        prompts, negative = self._prompts(prompt, negative_prompt)
        hidden, mask = self.conditioning(prompts, guidance_scale, negative)
        if latents is None:
            latents = torch.randn((len(prompts), *self.codec.latent_shape), generator=generator,
                                  device="cpu").to(self.unet.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            eps = self.predict_noise(latents, t, hidden, mask, guidance_scale)
            latents = self.scheduler.step(eps, t, latents).prev_sample
        if output_type == "latent":
            return AudioPipelineOutput(audios=latents)
        audio = self.decode_latents(latents)
        return AudioPipelineOutput(audios=audio.cpu().numpy().astype(np.float32) if output_type == "np" else audio)
