"""Adapter for LongCat-AudioDiT (`LongCatAudioDiTPipeline`, e.g. `meituan-longcat/LongCat-AudioDiT-1B` converted to
the diffusers layout), and `AudioDiTAttentionGeometry`, the attention geometry of its `AudioDiTAttention` that the
DiT testbed shares.

A layer is one DiT block (`blocks.N`): `self_attn` attends to the latent frames, `cross_attn` to the text tokens
(UMT5 states after the transformer's own text embedder and ConvNeXt blocks). Tokens are latent frames only (no
prepended global token): 24 kHz audio at hop 2048, 11.7 frames per second, so a map's rows are time (grid
`(frames, 1)`). The processor RMS-normalises Q and K over the whole inner dimension *before* the head split, then
rotates each head with RoPE: Q and K by the frame positions in self-attention; Q by the frame positions and K by the
token positions in cross-attention. Masks are boolean (True = attend) over the keys.

Protocol decisions (see `LongCatModel`): the pipeline steps t from 0 (noise) to 1 (data); melodia's sigma is
`1 - t` and its velocity the negated model output. Classifier-free guidance runs as ONE denoiser forward of the
batch [uncond, cond] (the pipeline makes two forwards, cond then uncond; see `LongCatModel`).

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-longcat")
    >>> model.clip_seconds = 2.0
    >>> wave = model.generate("a sad waltz on violin", steps=2, guidance=3.0, seed=0)
    >>> wave.shape, model.encode_audio(wave).shape
    ((47104,), torch.Size([1, 23, 8]))
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.models.transformers.transformer_longcat_audio_dit import _apply_rotary_emb
from diffusers.pipelines.longcat_audio_dit.pipeline_longcat_audio_dit import _lens_to_mask, _normalize_text

from probing.models.base import Conditioning
from probing.models.flow import FlowModel
from probing.models.family import Family
from probing.maps import additive_mask

FAMILY = Family(name="longcat", adapter="LongCatModel", pipelines=("LongCatAudioDiTPipeline",),
                tiny="tiny-longcat", reference_config="longcat_audio_dit_transformer", order=6)

DEFAULT_CLIP_SECONDS = 10.0
DUMMY_TEXT_TOKENS = 32  # text length of the forward that measures the layer table (the pipeline pads to the longest)


class AudioDiTAttentionGeometry:
    """How diffusers' `AudioDiTAttention` (LongCat-AudioDiT's block) turns its projections into attention.

    A mixin placed before the adapter's base class (`class M(AudioDiTAttentionGeometry, FlowModel)`): it
    overrides `position_of`, `token_grid`, `heads_qk` and `map_mask` of `probing.models.base.DiffusionModel`
    and nothing else, so it holds for any pipeline built on `LongCatAudioDiTTransformer`, whatever its
    timestep convention or conditioning.
    """

    def position_of(self, path: str) -> str:
        """`blocks.3.self_attn` / `blocks.3.cross_attn` -> `blocks.3`: one layer per DiT block."""
        parts = path.split(".")
        return ".".join(parts[: parts.index("blocks") + 2])

    def token_grid(self, n_tokens: int, latent_hw: tuple[int, ...]) -> tuple[int, int]:
        """(frames, 1): every query token is one latent frame. The denoiser input is (batch, frames, channels),
        so the hooks' `latent_hw` is (channels,), which says nothing about the grid."""
        return (n_tokens, 1)

    def heads_qk(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 call_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected Q (B, N, H*d), K (B, M, H*d) -> (B, H, N, d), (B, H, M, d), as the processors use them:
        RMSNorm over all H*d channels (`q_norm`/`k_norm`), head split, then RoPE: `audio_rotary_emb` on Q; on K
        `audio_rotary_emb` in self-attention and `prompt_rotary_emb` in cross-attention (as
        `AudioDiTAttention.forward` routes them; either may be None)."""
        if module.qk_norm:
            query, key = module.q_norm(query), module.k_norm(key)
        head_dim = module.inner_dim // module.heads
        query = query.view(query.shape[0], -1, module.heads, head_dim)
        key = key.view(key.shape[0], -1, module.heads, head_dim)
        is_cross = call_kwargs.get("encoder_hidden_states") is not None
        query_rope = call_kwargs.get("audio_rotary_emb")
        key_rope = call_kwargs.get("prompt_rotary_emb" if is_cross else "audio_rotary_emb")
        if query_rope is not None:
            query = _apply_rotary_emb(query, query_rope)
        if key_rope is not None:
            key = _apply_rotary_emb(key, key_rope)
        return query.transpose(1, 2), key.transpose(1, 2)

    def map_mask(self, module: torch.nn.Module, call_kwargs: dict[str, Any], query_len: int, key_len: int,
                 batch: int) -> torch.Tensor | None:
        """The boolean key mask the processor hands to SDPA (`attention_mask`, (B, M), True = attend: the latent
        mask in self-attention, the text mask in cross-attention) as an additive mask: 0 where kept, -inf where
        masked, (B, 1, 1, M).

        Not part of the map: both processors zero the *output rows* of padded latent frames afterwards (self:
        `attention_mask`, cross: `post_attention_mask`). LongCat's pipeline never pads latents (one duration per
        batch), so every row is live there.
        """
        mask = call_kwargs.get("attention_mask")
        if mask is None:
            return None
        additive = additive_mask(mask.bool())
        if additive.ndim == 2:  # (B, M): what the native SDPA backend reshapes to (B, 1, 1, M)
            return additive.view(batch, 1, 1, key_len)
        return additive.unsqueeze(1) if additive.ndim == 3 else additive


class LongCatModel(AudioDiTAttentionGeometry, FlowModel):
    """LongCat-AudioDiT: mono 24 kHz, latents (batch, frames, 64), one layer per DiT block.

    Protocol decisions:
    - Timesteps: the denoiser receives the pipeline's t = 1 - sigma in [0, 1) (0 = noise), computed exactly as
      `__call__` computes it (`timestep_for`), so hooked timesteps equal `sampling_timesteps` bit for bit.
      `flow_sigmas` are melodia's sigmas (1 = noise ... 0), i.e. 1 - the scheduler's inverted sigmas.
    - Sign: the model predicts dx/dt = data - noise; `predict_noise` returns dx/dsigma = -(model output), with
      the pipeline's guidance `uncond + (cond - uncond) * guidance` applied before the sign.
    - Classifier-free guidance: one forward of the batch [uncond, cond] (uncond = zero text states with the
      prompt's own text mask, as the pipeline without a negative prompt). The pipeline instead makes two
      forwards per step, cond first: batched, the output differs from those two calls by float rounding only
      (about 1e-6: the per-sample (batch, dim) MLPs of the timestep/AdaLN path run as a matrix-vector product
      at batch 1 and as a matrix product at batch 2), and every hook sees one forward per step whose batch is
      [uncond, cond], as in every other family. Two calls would be bit-exact, but the hooks key captures by
      timestep, so the pipeline's second (uncond) call would silently overwrite the cond maps. `generate` runs
      `__call__`'s steps (same noise, scheduler and decoder) with this batched forward; with guidance <= 1 it is
      bit-identical to `__call__`.
    - Masks: boolean, True = attend (`map_mask`); the latent mask is all True (no padding).
    - `default_edit_layers` is every self-attention layer: the DiT is one stack of identical blocks at one
      resolution (no down/mid/up hierarchy, so the paper's "8-14 of 16 U-Net positions" has no counterpart),
      a layer number means different depths in the 24-block 1B model and the 4-block tiny one, and no layer
      profile of LongCat exists yet; `--layers auto` with a profile narrows it.
    """

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    pads_context_per_batch = True  # UMT5 states padded to a batch's longest prompt
    default_edit_layers = "self:*"

    def __init__(self, pipeline: DiffusionPipeline, name: str, clip_seconds: float = DEFAULT_CLIP_SECONDS):
        super().__init__(pipeline, name)
        self.clip_seconds = float(clip_seconds)

    # ---- geometry ----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.sample_rate)

    @property
    def hop(self) -> int:
        """Audio samples per latent frame (the VAE's downsampling ratio, 2048)."""
        return int(self.pipeline.vae_scale_factor)

    @property
    def latent_frames(self) -> int:
        """Latent frames for `clip_seconds`, as `__call__(audio_duration_s=clip_seconds)` computes them (floor,
        at least 1, at most the pipeline's 30 s)."""
        pipe = self.pipeline
        frames = int(self.clip_seconds * self.sample_rate // self.hop)
        return max(1, min(frames, int(pipe.max_wav_duration * self.sample_rate // self.hop)))

    @property
    def clip_samples(self) -> int:
        """Audio samples of one clip: whole frames, so slightly under `clip_seconds` (the VAE decodes frames x hop)."""
        return self.latent_frames * self.hop

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.latent_frames, int(self.denoiser.config.latent_dim))

    # ---- conditioning and the denoiser ----------------------------------------------------------------
    def _text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """UMT5 states and their boolean mask, as `__call__` builds `prompt_embeds` / `text_mask`."""
        with torch.no_grad():
            states, lengths = self.pipeline.encode_prompt(prompts, self.device)
        return states, _lens_to_mask(lengths, length=states.shape[1])

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        """Text states and masks as `__call__` builds them (prompts normalised, negatives not, as there); with
        guidance > 1 the batch is [uncond, cond]. Without a negative prompt uncond is all-zero states under the
        prompt's own mask. A negative prompt is encoded on its own, as there; if it tokenizes to another length,
        the shorter side is padded with masked zero tokens to share the batch. The padded row then differs from
        the pipeline's unpadded pass (not by rounding: the DiT's text ConvNeXt blocks and their GRN, which
        normalises over tokens, see the padding before the mask is applied, as in any batch of prompts of
        different lengths in `__call__` itself); the unpadded row is the pipeline's up to rounding.

        The latent mask and the zero `latent_cond` depend on the latents' length: `denoise_call` adds them."""
        prompts = list(prompts)
        states, mask = self._text([_normalize_text(p) for p in prompts])
        guided = guidance > 1.0
        if guided:
            if negative is None:
                negative_states, negative_mask = torch.zeros_like(states), mask
            else:
                negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
                negative_states, negative_mask = self._text(negative)
                tokens = max(states.shape[1], negative_states.shape[1])
                states, mask = _pad_tokens(states, mask, tokens)
                negative_states, negative_mask = _pad_tokens(negative_states, negative_mask, tokens)
            states, mask = torch.cat([negative_states, states]), torch.cat([negative_mask, mask])
        return Conditioning({"encoder_hidden_states": states, "encoder_attention_mask": mask}, guided=guided,
                            prompts=prompts)

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        """One forward as `__call__` makes it: t expanded to the batch in the text states' dtype, an all-True latent
        mask (no padding) and zero `latent_cond` (no audio prompt)."""
        batch, frames = latents.shape[:2]
        states = cond.kwargs["encoder_hidden_states"]
        timestep = torch.as_tensor(t, device=latents.device).flatten()[0].expand(batch).to(states.dtype)
        latent_mask = torch.ones(batch, frames, dtype=torch.bool, device=latents.device)
        latent_cond = torch.zeros(batch, frames, latents.shape[2], dtype=states.dtype, device=latents.device)
        return self.denoiser(hidden_states=latents, timestep=timestep, attention_mask=latent_mask,
                             latent_cond=latent_cond, return_dict=False, **cond.kwargs)[0]

    # ---- the flow schedule ------------------------------------------------------------------------------
    @property
    def _inverted(self) -> bool:
        """True for LongCat's scheduler (`invert_sigmas=True`): it steps t = 1 - sigma upwards from 0 (noise)."""
        return bool(self.scheduler.config.get("invert_sigmas", False))

    @staticmethod
    def _pipeline_sigmas(steps: int) -> list[float]:
        """The sigmas `__call__` hands to `scheduler.set_timesteps` (before shift and inversion)."""
        return torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32).tolist()

    def flow_sigmas(self, steps: int) -> torch.Tensor:
        """melodia's sigmas of a `steps`-step `__call__`: the pipeline's sigmas through a copy of its scheduler
        without the inversion (shift applied, 0 appended), so 1 = noise."""
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config, invert_sigmas=False)
        scheduler.set_timesteps(sigmas=self._pipeline_sigmas(steps))
        return scheduler.sigmas.clone()

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The denoiser's timestep at melodia's `sigma`, bit for bit as `__call__` computes it: the scheduler's
        inverted sigma 1 - sigma, times num_train_timesteps (its `timesteps`), divided back, in the text dtype."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        scheduler_sigma = 1.0 - sigma if self._inverted else sigma
        train_steps = self.scheduler.config.num_train_timesteps
        return (scheduler_sigma * train_steps / train_steps).to(self.pipeline.text_encoder.dtype)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                      guidance: float) -> torch.Tensor:
        """dx/dsigma at timestep `t` (1 = noise): the pipeline's guided prediction, negated (it predicts dx/dt)."""
        prediction = super().predict_noise(latents, t, cond, guidance)
        return -prediction if self._inverted else prediction

    # ---- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        """`__call__(prompt, audio_duration_s=clip_seconds, num_inference_steps=steps, guidance_scale=guidance,
        generator=Generator().manual_seed(seed))` step for step (same noise, scheduler steps and decoder), with
        the guided forward batched as [uncond, cond] (see the class doc)."""
        pipe, scheduler = self.pipeline, self.scheduler
        cond = self.encode_prompt([prompt], guidance)
        states = cond.kwargs["encoder_hidden_states"]
        latents = pipe.prepare_latents(1, self.latent_frames, self.device, states.dtype,
                                       generator=torch.Generator().manual_seed(seed))
        scheduler.set_timesteps(sigmas=self._pipeline_sigmas(steps), device=self.device)
        scheduler.set_begin_index(0)
        sign = -1.0 if self._inverted else 1.0
        for t in scheduler.timesteps:
            velocity = self.predict_noise(latents, t / scheduler.config.num_train_timesteps, cond, guidance)
            latents = scheduler.step(sign * velocity, t, latents, return_dict=False)[0]
        if not decode:
            return latents[0].cpu().numpy()
        return self.decode(latents)

    # ---- audio <-> latents ----------------------------------------------------------------------------
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Mono at 24 kHz, zero-padded or cut to `clip_samples` -> the VAE's posterior mean (deterministic; its
        `encode` samples by default), as (1, frames, latent_dim)."""
        vae = self.pipeline.vae
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).flatten()[: self.clip_samples]
        audio = torch.zeros(1, 1, self.clip_samples)
        audio[0, 0, : wave.shape[0]] = wave
        with torch.no_grad():
            latents = vae.encode(audio.to(self.device), sample_posterior=False).latents
        return latents.permute(0, 2, 1).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(1, frames, latent_dim) -> mono float32 of frames x hop samples, as `__call__`'s decoder."""
        with torch.no_grad():
            audio = self.pipeline.vae.decode(latents.to(self.device).permute(0, 2, 1)).sample
        return audio[0, 0].float().cpu().numpy()

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        config, device, dtype = self.denoiser.config, self.device, self.dtype
        frames = self.latent_frames
        return {"hidden_states": torch.randn(batch, frames, config.latent_dim, device=device, dtype=dtype),
                "encoder_hidden_states": torch.randn(batch, DUMMY_TEXT_TOKENS, config.dit_text_dim, device=device,
                                                     dtype=dtype),
                "encoder_attention_mask": torch.ones(batch, DUMMY_TEXT_TOKENS, dtype=torch.bool, device=device),
                "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
                "attention_mask": torch.ones(batch, frames, dtype=torch.bool, device=device),
                "latent_cond": torch.zeros(batch, frames, config.latent_dim, device=device, dtype=dtype)}


def _pad_tokens(states: torch.Tensor, mask: torch.Tensor, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states (B, T, C) and mask (B, T) padded to `tokens` with zero, masked-out tokens."""
    extra = tokens - states.shape[1]
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


# ---- the tiny offline pipeline ---------------------------------------------------------------------------
def live_outputs(transformer: torch.nn.Module) -> torch.nn.Module:
    """Re-draw the layers LongCat initialises to zero (the global AdaLN projection, `norm_out.linear`, `proj_out`)
    with variance 1/fan-in: with them at zero a freshly built DiT predicts exactly 0 for any input."""
    for linear in (transformer.adaln_global_mlp.mlp[-1], transformer.norm_out.linear, transformer.proj_out):
        torch.nn.init.normal_(linear.weight, std=1 / math.sqrt(linear.in_features))
        torch.nn.init.normal_(linear.bias, std=0.02)
    return transformer


def _quiet_decoder(vae: torch.nn.Module, gain: float = 0.1) -> torch.nn.Module:
    """Scale the decoder's last (weight-normed, bias-free) convolution: random weights decode at RMS about 1,
    this brings the tiny model's audio to about 0.1."""
    with torch.no_grad():
        vae.decoder.layers[-2].weight_g.mul_(gain)
    return vae


def build_tiny_pipeline(seed: int = 0) -> DiffusionPipeline:
    """LongCat-AudioDiT-1B, shrunk: a `LongCatAudioDiTPipeline` with random weights, built offline.

    Kept from the 1B checkpoint (configs/longcat_audio_dit_transformer.json): the DiT block (global AdaLN from
    timestep + mean text state, self-attention and text cross-attention with q/k RMSNorm and RoPE, text states
    embedded to dit_dim and run through 4 ConvNeXt-V2 blocks, long skip, latent conditioning input), text width
    dit_dim / 2, ff_mult 4; a UMT5 encoder (gated-GELU); the Wav-VAE at 24 kHz with strides (2, 4, 4, 8, 8) = hop
    2048, Snake activations and shortcut paths, latent scale 0.71; FlowMatchEulerDiscreteScheduler(shift=1,
    invert_sigmas=True) as diffusers' conversion script writes it (the pipeline neither saves nor loads its
    scheduler, an optional `__init__` argument: a loaded pipeline builds this same one). Shrunk: DiT width 32 (4 heads of 8, the 1B
    has 24 of 64), depth 4 (24), latent channels 8 (64), VAE base channels 4 (128), UMT5 width 16 and 2 layers
    (768, 12). The tokenizer is melodia's in-memory unigram T5 tokenizer. 2 guided steps of 2 s take about
    0.25 s on one CPU core.
    """
    from diffusers import LongCatAudioDiTPipeline, LongCatAudioDiTTransformer, LongCatAudioDiTVae
    from transformers import UMT5Config, UMT5EncoderModel

    from probing.models.tiny_parts import seeded, t5_tokenizer

    text_dim, latent_dim = 16, 8
    tokenizer = t5_tokenizer(512)
    text_encoder = seeded(seed, lambda: UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_ff=37, d_kv=8, num_heads=2, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )))
    transformer = seeded(seed, lambda: live_outputs(LongCatAudioDiTTransformer(
        dit_dim=32, dit_depth=4, dit_heads=4, dit_text_dim=text_dim, latent_dim=latent_dim,
    )))
    vae = seeded(seed, lambda: _quiet_decoder(LongCatAudioDiTVae(
        channels=4, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], latent_dim=latent_dim,
        encoder_latent_dim=2 * latent_dim, downsampling_ratio=2048, sample_rate=24000,
    )))
    pipe = LongCatAudioDiTPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                                   scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, invert_sigmas=True))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
