"""Adapter for ACE-Step 1.5 (`AceStepPipeline`, e.g. `ACE-Step/acestep-v15-sft-diffusers`) and its tiny model.

Layers: one per DiT block (`layers.N`, 24 in the 2B checkpoints), each a `self_attn` and a `cross_attn`
(`AceStepAttention`: grouped KV heads, 16 query / 8 KV in the real model; RMS norms on per-head Q and K).
Self-attention rotates Q/K with RoPE after the norms (hooks see Q/K before both: `heads_qk` applies them);
layers alternate sliding-window (odd layer numbers: |i - j| <= sliding_window, 128 tokens in the real model)
and full attention. Cross-attention has no RoPE and no mask, even over padded prompts: the DiT never receives
the condition encoder's padding mask (upstream behaviour, kept).

Tokens: the DiT patchifies the 25 Hz latent sequence (48 kHz audio / VAE hop 1920) by 2, so self-attention
sees ceil(frames / 2) tokens, 12.5 per second. Cross-attention attends to the condition encoder's packed
sequence: lyric tokens, one timbre token, the prompt's tokens (Qwen3 hidden states of the pipeline's prompt
template), valid tokens first.

Sampler: the pipeline's own Euler over `_get_timestep_schedule` (shift 3) with the DiT's output as
dx/dsigma, the melodia convention as it is; the denoiser's timestep is sigma itself (scheduler with
num_train_timesteps = 1). Guidance: not plain CFG but the pipeline's APG (`normalized_guidance` with
momentum -0.75, norm threshold 2.5, eta 0, on pred_cond), whose momentum carries over steps:
`predict_noise` keeps it in the `AceStepConditioning` it is given and restarts it whenever the timestep
does not decrease from the previous guided call (a new trajectory). Turbo checkpoints ignore guidance, as
the pipeline does. Batch order: the pipeline stacks [cond, null]; melodia's batch is [uncond, cond] (the
learned null embedding first), which gives the same rows (the tests check it bit for bit).

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-ace-step")
    >>> model.clip_seconds = 2.0
    >>> model.generate("a sad waltz on violin", steps=2, guidance=7.0, seed=0).shape
    (96000,)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.ace_step_transformer import _create_4d_mask

from probing.errors import MelodiaError
from probing.layers import band_by_depth
from probing.models.base import Conditioning
from probing.models.flow import FlowModel
from probing.models.family import Family

FAMILY = Family(name="ace-step", adapter="AceStepModel", pipelines=("AceStepPipeline",),
                tiny="tiny-ace-step", reference_config="ace_step_transformer", order=4)

# AceStepPipeline.__call__'s constants: APG (step 10), the text2music defaults and the reference-audio length.
APG_MOMENTUM, APG_NORM_THRESHOLD, APG_ETA = -0.75, 2.5, 0.0
DEFAULT_SHIFT = 3.0
TIMBRE_SECONDS = 30  # the silence latent handed to the timbre encoder when there is no reference audio
DEFAULT_CLIP_SECONDS = 10.0  # melodia's edit window; the pipeline itself defaults to 60 s


@dataclass
class AceStepConditioning(Conditioning):
    """Denoiser kwargs plus the APG momentum of the trajectory sampled with them (None until guided use)."""

    momentum: MomentumBuffer | None = None
    last_timestep: float | None = None


class AceStepModel(FlowModel):
    """ACE-Step 1.5 text2music: empty lyrics, no reference audio, no metadata (the pipeline's defaults).

    `default_edit_layers` = "self:11-21" (`band_by_depth`): the paper's AudioLDM 2 band (positions 8-14 of 16,
    depth 7/16 to 14/16) mapped to the same depth of 24 isotropic blocks (layers 11-21: 6 sliding-window and 5 full
    self-attentions). A guess by depth, not a measurement on ACE-Step: probe and pass --layers auto.
    """

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    pads_context_per_batch = True  # text + lyrics + timbre, packed and padded to a batch's longest

    @property
    def default_edit_layers(self) -> str:  # type: ignore[override]  # by depth, see the class docstring
        return band_by_depth(int(self.denoiser.config.num_hidden_layers))

    def __init__(self, pipeline: DiffusionPipeline, name: str, clip_seconds: float | None = None):
        super().__init__(pipeline, name)
        self.clip_seconds = float(clip_seconds if clip_seconds is not None else DEFAULT_CLIP_SECONDS)
        self.shift = DEFAULT_SHIFT
        self.lyrics, self.vocal_language = "", "en"

    # ---- geometry ----------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.sample_rate)

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate / self.pipeline.latents_per_second)

    @property
    def latent_frames(self) -> int:
        """Latent length of a `clip_seconds` generation (the pipeline's ceil(duration x 25))."""
        return math.ceil(self.clip_seconds * self.pipeline.latents_per_second)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.latent_frames, int(self.denoiser.config.audio_acoustic_hidden_dim))

    @property
    def window_samples(self) -> int:
        """Samples under the latent window (what the VAE encodes and decodes)."""
        return self.latent_frames * self.hop_length

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    def position_of(self, path: str) -> str:
        """`layers.3.cross_attn` -> `layers.3`: one layer per DiT block."""
        parts = path.split(".")
        return ".".join(parts[: parts.index("layers") + 2])

    # ---- attention geometry --------------------------------------------------------------------
    @staticmethod
    def _is_cross(module: torch.nn.Module, call_kwargs: dict[str, Any]) -> bool:
        return module.is_cross_attention and call_kwargs.get("encoder_hidden_states") is not None

    def attention_kind(self, module: torch.nn.Module, call_kwargs: dict[str, Any]) -> str:
        return "cross" if self._is_cross(module, call_kwargs) else "self"

    def heads_qk(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 call_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """As `AceStepAttnProcessor2_0`: per-head split, RMS norms, RoPE (self only, on (B, N, H, d)), then
        (B, H, N, d) with each KV head repeated for its query heads (SDPA's enable_gqa)."""
        query = module.norm_q(query.unflatten(-1, (module.heads, module.head_dim)))
        key = module.norm_k(key.unflatten(-1, (module.kv_heads, module.head_dim)))
        rotary = call_kwargs.get("image_rotary_emb")
        if not self._is_cross(module, call_kwargs) and rotary is not None:
            query = apply_rotary_emb(query, rotary, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
            key = apply_rotary_emb(key, rotary, use_real=True, use_real_unbind_dim=-2, sequence_dim=1)
        key = key.transpose(1, 2).repeat_interleave(module.heads // module.kv_heads, dim=1)
        return query.transpose(1, 2), key

    def map_mask(self, module: torch.nn.Module, call_kwargs: dict[str, Any], query_len: int, key_len: int,
                 batch: int) -> torch.Tensor | None:
        """The additive mask SDPA got: the DiT's banded (1, 1, N, N) mask on sliding-window layers (0 kept,
        dtype min masked), nothing on full and cross-attention layers. Under a flash backend the DiT builds
        no dense mask and the processor passes the window instead; the same band is rebuilt then."""
        mask = call_kwargs.get("attention_mask")
        window = getattr(module, "sliding_window", None)
        if mask is None and window is not None and not self._is_cross(module, call_kwargs):
            mask = _create_4d_mask(key_len, torch.float32, self.device, sliding_window=window,
                                   is_sliding_window=True, is_causal=False)
        if mask is None:
            return None
        return mask.expand(batch, -1, query_len, key_len)

    # ---- conditioning --------------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str], guidance: float,
                      negative: list[str] | None = None) -> AceStepConditioning:
        """`encoder_hidden_states` and `context_latents` as `AceStepPipeline.__call__` builds them (steps 1-7)
        for text2music at `clip_seconds`; under guidance [null condition embedding, prompt]."""
        if negative is not None:
            raise MelodiaError(f"{self.name}: ACE-Step takes no negative prompt (its unconditional half is the "
                               "learned null condition embedding); pass none")
        pipe, prompts, device, dtype = self.pipeline, list(prompts), self.device, self.dtype
        batch, guided = len(prompts), guidance > 1.0 and not pipe.is_turbo
        with torch.no_grad():
            text, text_mask, lyrics, lyrics_mask = pipe.encode_prompt(
                prompts, [self.lyrics] * batch, device, vocal_language=self.vocal_language,
                audio_duration=self.clip_seconds, instruction=pipe._get_task_instruction("text2music"))
            src_latents, frames = pipe.prepare_src_latents(device, dtype, batch, latent_length=self.latent_frames)
            silence = pipe.condition_encoder.silence_latent
            timbre = silence[:, : math.ceil(TIMBRE_SECONDS * pipe.latents_per_second)].to(device, dtype)
            context, _ = pipe.condition_encoder(
                text_hidden_states=text, text_attention_mask=text_mask, lyric_hidden_states=lyrics,
                lyric_attention_mask=lyrics_mask,
                refer_audio_acoustic_hidden_states_packed=timbre.expand(batch, -1, -1).contiguous(),
                refer_audio_order_mask=torch.arange(batch, device=device, dtype=torch.long))
            chunk_mask = pipe._build_chunk_mask("text2music", frames, batch, device, dtype, src_latents.shape[-1])
        context_latents = torch.cat([src_latents, chunk_mask], dim=-1)
        if guided:
            null = pipe.condition_encoder.null_condition_emb.to(device=context.device, dtype=context.dtype)
            context = torch.cat([null.expand_as(context), context])
            context_latents = torch.cat([context_latents, context_latents])
        return AceStepConditioning({"encoder_hidden_states": context, "context_latents": context_latents},
                                   guided=guided, prompts=prompts)

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        """The DiT as the pipeline calls it: timestep = timestep_r = t for every row (no mean-flow offset)."""
        timestep = torch.full((latents.shape[0],), float(t), device=latents.device, dtype=self.dtype)
        return self.denoiser(hidden_states=latents, timestep=timestep, timestep_r=timestep, **cond.kwargs,
                             return_dict=False)[0]

    # ---- sampling ------------------------------------------------------------------------------
    def flow_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's shifted linear schedule as its scheduler holds it (float32, terminal 0 appended)."""
        schedule = self.pipeline._get_timestep_schedule(num_inference_steps=steps, shift=self.shift,
                                                        dtype=torch.float32)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(sigmas=schedule.tolist())
        return scheduler.sigmas

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                      guidance: float) -> torch.Tensor:
        """dx/dsigma at `t`; guided: the pipeline's APG, pred_cond + (guidance - 1) x the momentum-averaged,
        norm-clipped (per channel, over time) component of cond - uncond orthogonal to pred_cond."""
        if not cond.guided:
            return self.denoise_call(latents, t, cond)
        uncond, text = self.denoise_call(torch.cat([latents, latents]), t, cond).chunk(2)
        state = cond if isinstance(cond, AceStepConditioning) else AceStepConditioning({}, True)
        if state.momentum is None or state.last_timestep is None or float(t) >= state.last_timestep:
            state.momentum = MomentumBuffer(momentum=APG_MOMENTUM)  # a new trajectory
        state.last_timestep = float(t)
        return normalized_guidance(pred_cond=text, pred_uncond=uncond, guidance_scale=guidance - 1.0,
                                   momentum_buffer=state.momentum, eta=APG_ETA, norm_threshold=APG_NORM_THRESHOLD,
                                   use_original_formulation=True, norm_dim=(1,))

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        out = self.pipeline(prompt, lyrics=self.lyrics, audio_duration=self.clip_seconds,
                            vocal_language=self.vocal_language, num_inference_steps=steps, guidance_scale=guidance,
                            shift=self.shift, generator=torch.Generator().manual_seed(seed),
                            output_type="np" if decode else "latent").audios[0]
        if not decode:
            return out.cpu().numpy()
        return out.mean(axis=0)[: self.clip_samples].astype(np.float32)

    # ---- audio <-> latents -----------------------------------------------------------------------
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Mono -> both VAE channels, zero-padded (or cut) to the window -> posterior mode, (1, frames, C).
        (The pipeline's source-audio path samples the posterior; the mode is deterministic.)"""
        vae = self.pipeline.vae
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).flatten()[: self.window_samples]
        audio = torch.zeros(1, vae.config.audio_channels, self.window_samples)
        audio[:, :, : wave.shape[0]] = wave
        with torch.no_grad():
            latents = vae.encode(audio.to(self.device, vae.dtype)).latent_dist.mode()
        return latents.transpose(1, 2).to(self.dtype)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """The pipeline's step 11: VAE decode, peak > 1 divided out, peak normalised to -1 dBFS; then the
        channel mean, cut to `clip_samples`."""
        vae = self.pipeline.vae
        with torch.no_grad():
            audio = vae.decode(latents.transpose(1, 2).to(vae.dtype)).sample.float()
        audio = audio / audio.abs().amax(dim=[1, 2], keepdim=True).clamp(min=1.0)
        audio = audio * (10.0 ** (-1.0 / 20.0) / audio.abs().amax(dim=[1, 2], keepdim=True).clamp(min=1e-6))
        return audio[0].mean(dim=0)[: self.clip_samples].cpu().numpy()

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        """A noise latent at `clip_seconds` with the real conditioning of an empty caption, repeated."""
        cond = self.encode_prompt([""] * batch, guidance=1.0)
        latents = torch.randn(batch, *self.latent_shape, device=self.device, dtype=self.dtype)
        timestep = torch.full((batch,), 0.5, device=self.device, dtype=self.dtype)
        return {"hidden_states": latents, "timestep": timestep, "timestep_r": timestep, **cond.kwargs}


# ---- the tiny model ---------------------------------------------------------------------------------
# Words of the pipeline's prompt template (SFT_GEN_PROMPT, the text2music instruction, the metadata and
# lyrics headers): one token each, as in Qwen's vocabulary, so the template does not swamp the caption.
TEMPLATE_WORDS = ("Instruction", "Caption", "Metas", "Fill", "audio", "semantic", "mask", "based", "given",
                  "conditions", "bpm", "timesignature", "keyscale", "duration", "seconds", "Languages", "Lyric",
                  "en")


def qwen_tokenizer():
    """A byte-level BPE `Qwen2Tokenizer` (Qwen3-Embedding's), built in memory: music and template words are
    one token each (with or without a leading space), other text falls back to bytes; <|endoftext|> pads."""
    from transformers import Qwen2Tokenizer

    from probing.models.tiny_parts import WORDS, bpe_merges, byte_alphabet

    words = sorted(set(WORDS) | set(TEMPLATE_WORDS))
    merges = bpe_merges([list(w) for w in words] + [["Ġ", *w] for w in words])  # "Ġ": a leading space
    tokens = byte_alphabet() + [a + b for a, b in merges] + ["<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return Qwen2Tokenizer(vocab=vocab, merges=merges)


def build_tiny_pipeline(seed: int = 0):
    """ACE-Step 1.5 (2B SFT), shrunk: a real `AceStepPipeline` with random weights, built offline.

    Kept from `ACE-Step/acestep-v15-sft-diffusers` (configs/ace_step_transformer.json): 24 DiT blocks
    alternating sliding-window / full self-attention, each with cross-attention; 2:1 grouped KV heads in
    every attention; RoPE theta 1e6; patch 2; DiT input = [silence source latents, chunk mask, noise]
    (3 x the latent channels); the condition encoder's lyric and timbre encoders and packing; a learned
    null condition for APG guidance (not turbo); a Qwen3 text encoder with a byte-level BPE tokenizer; a
    stereo 48 kHz Oobleck VAE with strides (2, 4, 4, 6, 10) (25 latents per second); the silence latent is
    this VAE's encoding of silence, as the real one is the real VAE's; the scheduler. Shrunk: widths,
    head dim 8, latent channels (8), lyric/timbre/text encoder depths (2 each) and the sliding window (8
    tokens, 0.64 s, so that it masks short test clips; the real 128 tokens span 10.24 s). Without the
    optional audio tokenizer/detokenizer (cover task only).
    """
    from diffusers import AceStepPipeline, AceStepTransformer1DModel, AutoencoderOobleck
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    from probing.models.tiny_parts import seeded

    text_dim, width, head_dim, latent_channels, window, blocks = 16, 32, 8, 8, 8, 24
    attention = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, rope_theta=1e6)
    tokenizer = qwen_tokenizer()
    transformer = seeded(seed, lambda: AceStepTransformer1DModel(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=blocks, in_channels=3 * latent_channels,
        audio_acoustic_hidden_dim=latent_channels, patch_size=2, sliding_window=window,
        layer_types=["sliding_attention", "full_attention"] * (blocks // 2), encoder_hidden_size=width,
        is_turbo=False, **attention,
    ))
    condition_encoder = seeded(seed, lambda: AceStepConditionEncoder(
        hidden_size=width, intermediate_size=2 * width, text_hidden_dim=text_dim, timbre_hidden_dim=latent_channels,
        num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2, sliding_window=window, **attention,
    ))
    text_encoder = seeded(seed, lambda: Qwen3Model(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=37, num_hidden_layers=2,
        max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id, **attention,
    )))
    vae = seeded(seed, lambda: AutoencoderOobleck(
        encoder_hidden_size=2 * latent_channels, downsampling_ratios=[2, 4, 4, 6, 10],
        channel_multiples=[1, 2, 4, 8, 16], decoder_channels=4, decoder_input_channels=latent_channels,
        audio_channels=2, sampling_rate=48000,
    ))
    hop = math.prod(vae.config.downsampling_ratios)
    with torch.no_grad():  # the encoding of silence away from the edges, for every frame of the buffer
        silence = vae.encode(torch.zeros(1, 2, 16 * hop)).latent_dist.mode()[:, :, 8]
        condition_encoder.silence_latent.copy_(silence[:, None, :].expand_as(condition_encoder.silence_latent))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)  # as the real checkpoints
    pipe = AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                           condition_encoder=condition_encoder, scheduler=scheduler)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe
