"""Adapter for Stable Audio Open (`StableAudioPipeline`, e.g. `stabilityai/stable-audio-open-1.0`).

A layer is one DiT block (`transformer_blocks.N`): `attn1` self-attention with partial RoPE applied after
to_q/to_k, `attn2` cross-attention with grouped KV heads (24 query / 12 KV heads in the real model).
Tokens: the DiT prepends ONE global token (timestep + start/end-seconds embedding) to the latent sequence,
so attn1 sees 1 + latent length tokens (row 0 of a self map is that global token; the rest is time, at
hop 2048 / 44.1 kHz per token); attn2 attends to the T5 tokens (padded to the tokenizer's max length)
plus 2 timing tokens (seconds_start, seconds_end). The latent always spans the model's full window
(1024 latents = 47.55 s for the real model); `clip_seconds` is the audible part (audio_end_in_s).

Sampling and editing: the pipeline samples with `CosineDPMSolverMultistepScheduler` (an SDE
DPM-Solver++ over exponential sigmas, v-prediction with EDM preconditioning, Brownian noise at every
step), so `generate` is stochastic given its seed and cannot be inverted. The editor integrates the
same model's probability-flow ODE instead: D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) exactly
as the scheduler preconditions it, dx/dsigma = (x - D) / sigma (`predict_noise`), Euler over the
pipeline's own sigmas (`flow_sigmas`, final 0), evaluated at the destination sigma when inverting.
This is DDIM in the variance-exploding parametrisation (x = x0 + sigma eps, `noised`).

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-stable-audio")
    >>> wave = model.generate("a sad waltz on violin", steps=3, guidance=3.0, seed=0)
    >>> wave.shape, model.encode_audio(wave).shape
    ((65536,), torch.Size([1, 8, 32]))
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.embeddings import apply_rotary_emb, get_1d_rotary_pos_embed

from probing.errors import MelodiaError
from probing.layers import band_by_depth
from probing.models.base import Conditioning
from probing.models.flow import FlowModel
from probing.models.family import Family

FAMILY = Family(name="stable-audio", adapter="StableAudioModel", pipelines=("StableAudioPipeline",),
                tiny="tiny-stable-audio", reference_config="stable_audio_open_transformer", order=2)

GLOBAL_TOKENS = 1  # the DiT's prepended global (timestep + duration) token
TIMING_TOKENS = 2  # seconds_start and seconds_end, appended to the T5 tokens for cross-attention


class StableAudioModel(FlowModel):
    """Stable Audio Open: one layer per DiT block; mono in/out (stereo VAE: mono duplicated, output averaged).

    `default_edit_layers`: the paper's AudioLDM 2 band (positions 8-14 of 16, depth 7/16 to 14/16) mapped to
    the same depth of the DiT's isotropic blocks: "self:11-21" of Stable Audio Open's 24, as for ACE-Step
    ("self:1-2" of the tiny model's 2). A guess by depth, not a measurement: probe and pass --layers auto.
    """

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    prediction = "edm"  # an ODE in sigma, on the variance-exploding path x0 + sigma eps
    # The explicit inversion step misses badly where sigma grows by a factor per step (tiny-stable-audio, 25
    # steps to sigma 500: the round trip returns 1.4 x the latent's norm away); 4 fixed-point iterations
    # bring it to 0.02 (50 steps to t_start 0.6: 0.52 -> 0.009). Cost: 5 evaluations per inversion step.
    inversion_refinements = 4
    word_aligned_keys = True  # cross keys: the T5 tokens (padded), then the two duration tokens

    def __init__(self, pipeline: DiffusionPipeline, name: str, clip_seconds: float | None = None):
        super().__init__(pipeline, name)
        self.clip_seconds = float(clip_seconds if clip_seconds is not None else self.window_seconds)

    @property
    def default_edit_layers(self) -> str:  # type: ignore[override]  # by depth, see the class docstring
        return band_by_depth(int(self.denoiser.config.num_layers))

    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vae.config.sampling_rate)

    @property
    def window_samples(self) -> int:
        """Audio samples under the full latent window (what the VAE encodes and decodes)."""
        return int(self.denoiser.config.sample_size) * int(self.pipeline.vae.hop_length)

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def clip_samples(self) -> int:
        return int(self.clip_seconds * self.sample_rate)  # as the pipeline's waveform_end

    def position_of(self, path: str) -> str:
        """`transformer_blocks.3.attn2` -> `transformer_blocks.3`: one layer per DiT block."""
        parts = path.split(".")
        return ".".join(parts[: parts.index("transformer_blocks") + 2])

    def heads_qk(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 call_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Base head split (grouped KV heads repeated) + the partial RoPE of `StableAudioAttnProcessor2_0`:
        the first rot_dim channels of each head rotated in float32; keys only in self-attention."""
        query, key = super().heads_qk(module, query, key, call_kwargs)
        rotary = call_kwargs.get("rotary_emb")
        if rotary is None:
            return query, key

        def rotate(x: torch.Tensor) -> torch.Tensor:
            rot_dim = rotary[0].shape[-1]
            rotated = apply_rotary_emb(x.float()[..., :rot_dim], rotary, use_real=True, use_real_unbind_dim=-2)
            return torch.cat((rotated, x.float()[..., rot_dim:]), dim=-1).to(x.dtype)

        return rotate(query), (key if module.is_cross_attention else rotate(key))

    def _rotary(self, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's rotary embedding (its `rotary_embed_dim` = attention_head_dim // 2)."""
        return get_1d_rotary_pos_embed(self.denoiser.config.attention_head_dim // 2, n_tokens, use_real=True,
                                       repeat_interleave_real=False)

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        """The denoiser kwargs exactly as `StableAudioPipeline.__call__` builds them (steps 3 and 7)."""
        pipe, guided, prompts = self.pipeline, guidance > 1.0, list(prompts)
        with torch.no_grad():
            text = pipe.encode_prompt(prompts, self.device, guided, negative)
            start, end = pipe.encode_duration(0.0, self.clip_seconds, self.device, guided and negative is not None,
                                              len(prompts))
        text_audio_duration = torch.cat([text, start, end], dim=1)
        audio_duration = torch.cat([start, end], dim=2)
        if guided and negative is None:  # the unconditional half is all zeros
            text_audio_duration = torch.cat([torch.zeros_like(text_audio_duration), text_audio_duration])
            audio_duration = torch.cat([audio_duration, audio_duration])
        rotary = self._rotary(int(self.denoiser.config.sample_size) + audio_duration.shape[1])
        return Conditioning({"encoder_hidden_states": text_audio_duration, "global_hidden_states": audio_duration,
                             "rotary_embedding": rotary}, guided=guided, prompts=prompts)

    # ---- the probability-flow ODE of the pipeline's EDM parametrisation (see the module docstring) ----------
    def _edm_scheduler(self):
        """The pipeline's scheduler, if it is the EDM one the editor's ODE reads (else one clear error)."""
        scheduler = self.scheduler
        if not (hasattr(scheduler, "precondition_outputs") and hasattr(scheduler.config, "sigma_data")):
            raise MelodiaError(f"{self.name}: editing reads Stable Audio Open's EDM preconditioning from its "
                               f"CosineDPMSolverMultistepScheduler; this pipeline has a {type(scheduler).__name__}")
        return scheduler

    def flow_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's sigmas for `steps` steps (sigma_max ... sigma_min), then 0."""
        scheduler = type(self._edm_scheduler()).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        return torch.cat([scheduler.sigmas[:steps].float(), torch.zeros(1)])

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """c_noise(sigma) = atan(sigma) * 2 / pi, what the pipeline hands the DiT (`precondition_noise`)."""
        return torch.as_tensor(sigma, dtype=torch.float32).atan() / math.pi * 2

    def noised(self, z0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """Variance exploding: z0 + sigma noise."""
        return z0 + sigma * noise

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                      guidance: float) -> torch.Tensor:
        """dx/dsigma = (x - D(x, sigma)) / sigma at the sigma whose c_noise is `t`; CFG on the DiT's output as
        the pipeline applies it (D is linear in it, so guiding D is the same)."""
        scheduler = self._edm_scheduler()
        # float32 throughout the preconditioning: sigma reaches 500, whose square overflows float16
        sigma = torch.as_tensor(t, dtype=torch.float32).mul(math.pi / 2).tan().to(latents.device)
        c_in = 1 / (sigma**2 + scheduler.config.sigma_data**2).sqrt()
        batch = torch.cat([latents, latents]) if cond.guided else latents
        out = self.denoise_call((batch.float() * c_in).to(latents.dtype), t, cond).float()
        if cond.guided:
            uncond, text = out.chunk(2)
            out = uncond + guidance * (text - uncond)
        x = latents.float()
        return ((x - scheduler.precondition_outputs(x, out, sigma)) / sigma).to(latents.dtype)

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        timestep = torch.as_tensor(t, device=latents.device).reshape(1)  # the pipeline passes t.unsqueeze(0)
        return self.denoiser(latents, timestep, **cond.kwargs, return_dict=False)[0]

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(prompt, audio_end_in_s=self.clip_seconds, num_inference_steps=steps,
                            guidance_scale=guidance, generator=generator,
                            output_type="np" if decode else "latent").audios[0]
        return out.mean(axis=0).astype(np.float32) if decode else out.cpu().numpy()

    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Mono at 44.1 kHz -> both VAE channels, zero-padded (or cut) to the window, as the pipeline's
        `prepare_latents` does -> the posterior mode (the pipeline samples; the mode is deterministic)."""
        vae = self.pipeline.vae
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).flatten()[: self.window_samples]
        audio = torch.zeros(1, vae.config.audio_channels, self.window_samples)
        audio[:, :, : wave.shape[0]] = wave
        with torch.no_grad():
            return vae.encode(audio.to(self.device, vae.dtype)).latent_dist.mode()

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> the VAE's stereo audio cut to `clip_seconds` -> channel mean."""
        vae = self.pipeline.vae
        with torch.no_grad():
            audio = vae.decode(latents.to(vae.dtype)).sample[:, :, : self.clip_samples]
        return audio[0].float().mean(dim=0).cpu().numpy()

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        config, device, dtype = self.denoiser.config, self.device, self.dtype
        text_tokens = getattr(getattr(self.pipeline, "tokenizer", None), "model_max_length", 128)
        length = int(config.sample_size)  # a float (1024.0) in the real checkpoint's config
        return {"hidden_states": torch.randn(batch, config.in_channels, length, device=device, dtype=dtype),
                "timestep": torch.tensor([0.5], device=device),
                "encoder_hidden_states": torch.randn(batch, text_tokens + TIMING_TOKENS,
                                                     config.cross_attention_input_dim, device=device, dtype=dtype),
                "global_hidden_states": torch.randn(batch, GLOBAL_TOKENS, config.global_states_input_dim,
                                                    device=device, dtype=dtype),
                "rotary_embedding": self._rotary(length + GLOBAL_TOKENS)}


# ---- the tiny offline pipeline -----------------------------------------------------------------------------
def build_tiny_pipeline(seed: int = 0):
    """Stable Audio Open 1.0, shrunk: DiT with partial RoPE and grouped KV heads, Oobleck VAE, T5, timing.

    Kept from `stabilityai/stable-audio-open-1.0`: 2:1 query:KV heads in cross-attention, cross-attention
    width = KV heads x head dim = T5 width, global conditioning = 2 x T5 width, an Oobleck VAE with strides
    (2, 4, 4, 8, 8) (hop 2048) at 44.1 kHz stereo, timing conditioning 0-512 s, the cosine DPM-Solver
    scheduler (v-prediction). Shrunk: widths, depth, latent channels (8) and window (32 latents, 1.49 s).
    """
    from probing.models.tiny_parts import seeded, t5_tokenizer
    from diffusers import (AutoencoderOobleck, CosineDPMSolverMultistepScheduler, StableAudioDiTModel,
                           StableAudioPipeline, StableAudioProjectionModel)
    from transformers import T5Config, T5EncoderModel

    t5_dim, head_dim, kv_heads, latent_channels = 16, 8, 2, 8
    tokenizer = t5_tokenizer(128)
    transformer = seeded(seed, lambda: StableAudioDiTModel(
        sample_size=32, in_channels=latent_channels, out_channels=latent_channels, num_layers=2,
        attention_head_dim=head_dim, num_attention_heads=2 * kv_heads, num_key_value_attention_heads=kv_heads,
        cross_attention_dim=kv_heads * head_dim, cross_attention_input_dim=t5_dim,
        global_states_input_dim=2 * t5_dim, time_proj_dim=16,
    ))
    vae = seeded(seed, lambda: AutoencoderOobleck(
        encoder_hidden_size=2 * latent_channels, downsampling_ratios=[2, 4, 4, 8, 8],
        channel_multiples=[1, 2, 4, 8, 16], decoder_channels=4, decoder_input_channels=latent_channels,
        audio_channels=2, sampling_rate=44100,
    ))
    text_encoder = seeded(seed, lambda: T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=t5_dim, d_ff=37, d_kv=8, num_heads=2, num_layers=2,
    )))
    projection_model = seeded(seed, lambda: StableAudioProjectionModel(
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
