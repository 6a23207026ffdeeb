"""Adapter for Stable Audio 3 (`StableAudio3Pipeline`, e.g. `stabilityai/stable-audio-3-medium`).

The denoiser is `StableAudio3DiTModel`, a rectified-flow DiT; a layer is one block (`transformer_blocks.N`):
`self_attn` (`StableAudio3SelfAttention`) then `cross_attn` (`StableAudio3CrossAttention`). Quirks kept here:

- Fused projections. Self-attention projects `to_qkv -> [q1 | q2 | k1 | k2 | v]`, cross-attention
  `to_q -> [q1 | q2]` and `to_kv -> [k1 | k2 | v]`. `qk_taps` hands the hooks channel slices: query = q1|q2,
  key = k1|k2 (the value channels are never touched), so injection swaps exactly the model's Q and K (of the
  memory tokens too: they are rows of the same projections).
- Differential attention: the output is softmax(Q1 K1^T) V - softmax(Q2 K2^T) V. `heads_qk` returns 2H heads,
  [q1 heads, q2 heads] (RMS q/k norm applied; partial RoPE in self-attention), and `head_signs` is +1 for the
  first H and -1 for the second, so `probing.maps` folds them into H differential maps whose rows sum to 0
  (not 1). `heads` in the layer table is H, the number of maps.
- Memory tokens: the DiT prepends `num_memory_tokens` learned tokens (64 in SA3 Medium) to the latent frames, so
  both attentions see M + L query tokens and self-attention M + L keys: rows (and self-attention columns)
  0..M-1 of every map are memory tokens, rows M.. are latent frames in time order (4096 samples = 92.9 ms per
  frame at 44.1 kHz). `token_grid` is (M + L, 1) as for any 1-D latent; a pooled grid therefore mixes the
  memory tokens into the first time bins: slice rows/columns `memory_tokens:` for time-only maps. RoPE positions
  count from the first memory token (the processor rotates the whole sequence).
- Cross-attention keys are the text tokens (T5Gemma, padded to min(model_max_length, 256)) plus ONE duration
  token, the last column. The DiT replaces padded text positions by a learned padding embedding and attends to
  ALL of them unmasked (it drops the mask), so pad columns carry real attention.

Protocol decisions (see `probing.models.flow` for the convention every flow adapter follows):

- Timesteps: the denoiser receives sigma x `scheduler.config.num_train_timesteps`, exactly what the pipeline
  passes (`scheduler.timesteps`). The DiT documents t in [0, 1] (the reference sampler calls it with t = sigma),
  so a converted checkpoint's scheduler has num_train_timesteps = 1, as the tiny model does.
- Schedule: `flow_sigmas` is the pipeline's log-SNR schedule (`logsnr_sigma_schedule(steps, -6.2, 2.0)` through
  the scheduler, shift included, terminal 0 appended), not a linear one.
- Velocity v = dx/dsigma (= noise - x0; the pipeline's x0 = x - sigma v), CFG as the pipeline does it:
  batch [uncond, cond] with the empty prompt (or `negative`) as uncond, v = v_u + g (v_c - v_u), guided only
  when guidance > 1 (the distilled checkpoint bakes CFG in and runs at 1).
- Sampler: with `stochastic_sampling=False` (the non-distilled `-base` checkpoints) `__call__` is plain Euler
  over `flow_sigmas`, reproduced exactly by Euler + `predict_noise`. The distilled checkpoints run the 8-step
  "ping-pong" sampler (`stochastic_sampling=True`): x_next = (1 - sigma') (x - sigma v) + sigma' eps_i, with a
  fresh eps_i drawn from the pipeline's generator at every step (also the last, whose sigma' is 0). That path
  is deterministic given the seed and is reproduced by `ping_pong_step` with the same draws (the tests do), but
  no Euler loop over (x, sigma) can reproduce it: its steps depend on noise that is not a function of x or
  sigma, so `generate` on a ping-pong scheduler differs from the ODE path that inversion and editing integrate.
  `stochastic_sampling` says which one the loaded scheduler runs.

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-stable-audio-3")
    >>> model.clip_seconds = 1.0
    >>> wave = model.generate("a sad waltz on violin", steps=2, guidance=3.0, seed=0)
    >>> wave.shape, model.encode_audio(wave).shape
    ((44100,), torch.Size([1, 8, 11]))
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.transformers.transformer_stable_audio3 import _apply_rotary_partial  # the processors' own
from diffusers.pipelines.stable_audio_3.pipeline_stable_audio_3 import logsnr_sigma_schedule

from probing.models.base import Conditioning, QKTap
from probing.models.flow import FlowModel
from probing.models.family import Family
from probing.maps import additive_mask

FAMILY = Family(name="stable-audio-3", adapter="StableAudio3Model", pipelines=("StableAudio3Pipeline",),
                tiny="tiny-stable-audio-3", reference_config="stable_audio_3_transformer", order=5)

DEFAULT_CLIP_SECONDS = 10.0  # StableAudio3Pipeline.__call__(duration=10.0)
LOGSNR_RANGE = (-6.2, 2.0)  # StableAudio3Pipeline.__call__(logsnr_min=-6.2, logsnr_max=2.0)
MAX_TEXT_TOKENS = 256  # the pipeline caps the tokenizer at 256 (T5Gemma in the reference checkpoint)
DURATION_TOKENS = 1  # the duration embedding, appended to the text tokens as one cross-attention key


class StableAudio3Model(FlowModel):
    """Stable Audio 3: one layer per DiT block; mono in/out (stereo VAE: mono duplicated, output averaged).

    `default_edit_layers` is every self-attention layer: the DiT has no down/mid/up hierarchy (every block sees
    the same memory + latent sequence at one resolution), so the paper's "8-14 of 16 U-Net positions" has no
    structural counterpart, and no layer profile of SA3 exists yet to pick a band; `--layers auto` with a
    profile narrows it.
    """

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    default_edit_layers = "self:*"

    def __init__(self, pipeline: DiffusionPipeline, name: str, clip_seconds: float = DEFAULT_CLIP_SECONDS):
        super().__init__(pipeline, name)
        self.clip_seconds = float(clip_seconds)
        self.logsnr_min, self.logsnr_max = LOGSNR_RANGE

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.pipeline.vae.config.sampling_rate)

    @property
    def clip_samples(self) -> int:
        return int(self.clip_seconds * self.sample_rate)  # the pipeline's waveform_length

    @property
    def latent_length(self) -> int:
        """Latent frames for `clip_seconds`, rounded up as the pipeline does."""
        return math.ceil(self.clip_seconds * self.sample_rate / self.pipeline.vae.downsampling_ratio)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (int(self.denoiser.config.io_channels), self.latent_length)

    @property
    def memory_tokens(self) -> int:
        """Learned tokens prepended to the latent frames: the first rows of every map."""
        return int(self.denoiser.config.num_memory_tokens)

    @property
    def text_tokens(self) -> int:
        """Cross-attention keys: padded text tokens + the duration token."""
        return min(getattr(self.pipeline.tokenizer, "model_max_length", MAX_TEXT_TOKENS),
                   MAX_TEXT_TOKENS) + DURATION_TOKENS

    @property
    def stochastic_sampling(self) -> bool:
        """True when `generate` runs the distilled ping-pong sampler rather than Euler (see the module doc)."""
        return bool(self.scheduler.config.get("stochastic_sampling", False))

    def position_of(self, path: str) -> str:
        """`transformer_blocks.3.cross_attn` -> `transformer_blocks.3`: one layer per DiT block."""
        parts = path.split(".")
        return ".".join(parts[: parts.index("transformer_blocks") + 2])

    # ---- attention geometry -------------------------------------------------------------------------
    def token_grid(self, n_tokens: int, latent_hw: tuple[int, ...]) -> tuple[int, int]:
        """(memory tokens + latent frames, 1): one time axis, memory tokens first (see the module doc)."""
        return (n_tokens, 1)

    def qk_taps(self, module: torch.nn.Module) -> list[QKTap]:
        """Q = q1|q2 and K = k1|k2 channels of the fused projections (V channels untouched)."""
        width = module.heads * module.dim_heads
        groups = 2 if module.use_differential else 1  # q1|q2 (k1|k2), or a single q (k)
        if hasattr(module, "to_qkv"):
            return [QKTap(module.to_qkv, "q", slice(0, groups * width)),
                    QKTap(module.to_qkv, "k", slice(groups * width, 2 * groups * width))]
        return [QKTap(module.to_q, "q"), QKTap(module.to_kv, "k", slice(0, groups * width))]

    def head_signs(self, module: torch.nn.Module) -> torch.Tensor | None:
        """+1 for the q1/k1 heads, -1 for the q2/k2 heads: the map applied is softmax_1 - softmax_2."""
        if not module.use_differential:
            return None
        return torch.cat([torch.ones(module.heads), -torch.ones(module.heads)])

    def heads_qk(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 call_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, G*H*d) -> (B, G*H, N, d) as the processors use them: split into heads ([q1 heads, q2 heads]),
        RMS q/k norm per head, then partial RoPE (self-attention: `rope` covers memory + latent tokens)."""
        query = module.q_norm(query.unflatten(-1, (-1, module.dim_heads)))
        key = module.k_norm(key.unflatten(-1, (-1, module.dim_heads)))
        rope = call_kwargs.get("rope")
        if rope is not None:
            query, key = _apply_rotary_partial(query, rope), _apply_rotary_partial(key, rope)
        return query.transpose(1, 2), key.transpose(1, 2)

    def map_mask(self, module: torch.nn.Module, call_kwargs: dict[str, Any], query_len: int, key_len: int,
                 batch: int) -> torch.Tensor | None:
        """Cross-attention's boolean `context_mask` (True = keep) as an additive (B, 1, 1, M) mask. The DiT itself
        never passes one (it swaps padded tokens for a learned embedding instead), so this is None in the pipeline."""
        mask = call_kwargs.get("context_mask")
        if mask is None:
            return None
        return additive_mask(mask.bool()[:, None, None, :])

    # ---- conditioning and sampling ------------------------------------------------------------------
    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        """The denoiser kwargs exactly as `StableAudio3Pipeline.__call__` builds them (steps 1-2 and 6)."""
        pipe, guided, prompts = self.pipeline, guidance > 1.0, list(prompts)
        with torch.no_grad():
            duration = pipe.encode_duration(self.clip_seconds, self.device, 1, len(prompts))
            text, mask = pipe.prepare_cross_attention(*pipe.encode_prompt(prompts, self.device, 1), duration)
            if guided:
                uncond = list(negative) if negative is not None else [""] * len(prompts)
                uncond_text, uncond_mask = pipe.prepare_cross_attention(
                    *pipe.encode_prompt(uncond, self.device, 1), duration)
                text, mask = torch.cat([uncond_text, text]), torch.cat([uncond_mask, mask])
                duration = torch.cat([duration, duration])
        return Conditioning({"encoder_hidden_states": text, "global_hidden_states": duration,
                             "encoder_attention_mask": mask}, guided=guided, prompts=prompts)

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        """One forward as the pipeline calls it: the timestep expanded to the batch, (B,)."""
        timestep = torch.as_tensor(t, dtype=torch.float32, device=latents.device).reshape(-1)
        timestep = timestep.expand(latents.shape[0]) if timestep.numel() == 1 else timestep
        return self.denoiser(latents, timestep, **cond.kwargs, return_dict=False)[0]

    def flow_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's log-SNR sigmas through a fresh copy of its scheduler (shift applied, 0 appended)."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(sigmas=logsnr_sigma_schedule(steps, self.logsnr_min, self.logsnr_max))
        return scheduler.sigmas.clone()

    @staticmethod
    def ping_pong_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
        """One step of the distilled sampler (`stochastic_sampling=True`): denoise to x0 = x - sigma v, re-noise
        to sigma_next with `noise` (the pipeline draws it from its generator, shape and float32 of `latents`)."""
        x0 = latents.float() - sigma * velocity
        return ((1.0 - sigma_next) * x0 + sigma_next * noise).to(velocity.dtype)

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(prompt, duration=self.clip_seconds, num_inference_steps=steps, guidance_scale=guidance,
                            logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max, generator=generator,
                            output_type="np" if decode else "latent").audios[0]
        return out.mean(axis=0).astype(np.float32) if decode else out.cpu().numpy()

    # ---- audio <-> latents ----------------------------------------------------------------------------
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Mono at `sample_rate` -> both VAE channels -> SAME latents (deterministic), zero-padded or cut to
        `latent_length` frames as the audio-to-audio pipeline's `_encode_reference_audio` does."""
        vae = self.pipeline.vae
        frames = self.latent_length
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32)).flatten()[: frames * vae.downsampling_ratio]
        audio = wave.expand(1, vae.config.audio_channels, -1)
        with torch.no_grad():
            latents = vae.encode(audio.to(self.device, vae.dtype)).latents[..., :frames]
        return torch.nn.functional.pad(latents, (0, frames - latents.shape[-1]))

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> stereo audio cut to `clip_samples` and clamped to [-1, 1] (as `__call__`) -> channel mean."""
        vae = self.pipeline.vae
        with torch.no_grad():
            audio = vae.decode(latents.to(self.device, vae.dtype)).sample[:, :, : self.clip_samples]
        return audio.clamp(-1.0, 1.0)[0].float().mean(dim=0).cpu().numpy()

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        config, device, dtype = self.denoiser.config, self.device, self.dtype
        return {"hidden_states": torch.randn(batch, config.io_channels, self.latent_length, device=device, dtype=dtype),
                "timestep": torch.full((batch,), 0.5, device=device),
                "encoder_hidden_states": torch.randn(batch, self.text_tokens, config.cond_token_dim, device=device,
                                                     dtype=dtype),
                "global_hidden_states": torch.randn(batch, config.global_cond_dim, device=device, dtype=dtype),
                "encoder_attention_mask": torch.ones(batch, self.text_tokens, dtype=torch.long, device=device)}


# ---- the tiny offline pipeline ---------------------------------------------------------------------------
def gemma_tokenizer(model_max_length: int = MAX_TEXT_TOKENS):
    """A `GemmaTokenizer` (byte-fallback BPE, spaces as "▁", <bos> prepended) built in memory from tiny.WORDS.

    Each word of `WORDS` is one token (with and without a leading "▁"); other characters fall back to byte
    tokens, so nothing is lost. Padding is on the right, so text tokens are the first cross-attention keys.
    """
    from transformers import GemmaTokenizer

    from probing.models.tiny_parts import WORDS, bpe_merges

    merges = bpe_merges([list(w) for w in WORDS] + [["▁", *w] for w in WORDS])
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += sorted({c for w in WORDS for c in w} | {"▁"}) + [a + b for a, b in merges]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, padding_side="right",
                          add_bos_token=True)


def _live_branches(vae: torch.nn.Module, qkv_gain: float = 8.0) -> torch.nn.Module:
    """Make a freshly built SAME pass its input through, as a trained one does.

    SAME zero-initialises each transformer branch's output (attention `to_out`, feed-forward `proj_out`): every
    block is then the identity and the VAE decodes the same audio for any latents. And with random q/k at the
    default scale both differential maps are near uniform and cancel (softmax_1 ~ softmax_2), so little passes
    between tokens. Re-drawn here: branch outputs with variance 1/fan-in, and the fused `to_qkv` scaled by
    `qkv_gain` (sharper maps, larger values). Measured on the tiny VAE: decoded audio RMS 0.15, of which 0.07
    follows the latents (without this: 0.14 and 0.001; scaling q/k alone: 0.008).
    """
    from diffusers.models.autoencoders.autoencoder_same import FeedForward, SAMEAttention

    for module in vae.modules():
        if isinstance(module, SAMEAttention):
            torch.nn.init.normal_(module.to_out.weight, std=1 / math.sqrt(module.to_out.in_features))
            with torch.no_grad():
                module.to_qkv.weight *= qkv_gain
        elif isinstance(module, FeedForward):
            torch.nn.init.normal_(module.proj_out.weight, std=1 / math.sqrt(module.proj_out.in_features))
    return vae


def _sharpened(transformer: torch.nn.Module, gamma: float = 2.0) -> torch.nn.Module:
    """Set the DiT's q/k RMS-norm scales to `gamma` (logits x gamma^2), as training sharpens them. At 1 the two maps
    of each differential head are near-identical and cancel, so text barely reaches the latents: two prompts'
    2-step latents differ by RMS 0.016 (of 1.0) at gamma 1, 0.21 at gamma 2."""
    for name, parameter in transformer.named_parameters():
        if name.endswith(("q_norm.gamma", "k_norm.gamma")):
            torch.nn.init.constant_(parameter, gamma)
    return transformer


def build_tiny_pipeline(seed: int = 0):
    """Stable Audio 3 Medium, shrunk: differential DiT with memory tokens, SAME VAE, T5Gemma, duration embedder.

    Kept from `stabilityai/stable-audio-3-medium`: differential self- and cross-attention (fused to_qkv / to_kv),
    RMS q/k norm, partial RoPE over half of each head, learned memory tokens, AdaLN from duration + timestep,
    the duration token appended to the text, a SAME autoencoder (patch 256 x one stride-16 transformer
    resampling block = hop 4096, differential attention, sinusoidal decoder FFN, 44.1 kHz stereo), a T5Gemma
    encoder (alternating sliding/full attention) behind a Gemma tokenizer capped at 256 tokens, and the shared
    conditioning width (text = cross = global = duration = 16 here, 768 in the real model). Scheduler:
    `FlowMatchEulerDiscreteScheduler(num_train_timesteps=1)` (t = sigma in [0, 1]) with deterministic Euler, the
    `-base` checkpoints' sampler; the distilled ping-pong one is the same config with stochastic_sampling=True.
    Shrunk: widths, depths (4 DiT blocks of 4 heads x 8), 4 memory tokens, 8 latent channels. Random weights,
    made to pass signal as trained ones do (`_sharpened`, `_live_branches`).
    """
    from diffusers import (AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel,
                           StableAudio3Pipeline)
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    from probing.models.tiny_parts import seeded

    cond_dim, latent_channels = 16, 8
    tokenizer = gemma_tokenizer()
    transformer = seeded(seed, lambda: _sharpened(StableAudio3DiTModel(
        io_channels=latent_channels, patch_size=1, embed_dim=32, depth=4, num_heads=4, cond_token_dim=cond_dim,
        global_cond_dim=cond_dim, local_add_cond_dim=latent_channels + 1, timestep_features_dim=16, ff_mult=4.0,
        num_memory_tokens=4, use_differential_attention=True,
    )))
    vae = seeded(seed, lambda: _live_branches(AutoencoderSAME(
        audio_channels=2, patch_size=256, encoder_channels=8, encoder_c_mults=(2,), encoder_strides=(16,),
        encoder_transformer_depths=(2,), latent_dim=latent_channels, use_differential_attention=True, dim_heads=8,
        ff_mult=3, sliding_window=1, encoder_sinusoidal_blocks=(0,), decoder_sinusoidal_blocks=(1,),
        sampling_rate=44100,
    )))
    module = T5GemmaModuleConfig(
        vocab_size=len(tokenizer), hidden_size=cond_dim, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8,
        max_position_embeddings=MAX_TEXT_TOKENS, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
    ).to_dict()
    text_encoder = seeded(seed, lambda: T5GemmaEncoderModel(T5GemmaConfig(
        encoder=module, decoder=module, is_encoder_decoder=False, vocab_size=len(tokenizer),
    )))
    duration_embedder = seeded(seed, lambda: StableAudio3DurationEmbedder(output_dim=cond_dim, fourier_dim=16))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, stochastic_sampling=False)
    pipe = StableAudio3Pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                duration_embedder=duration_embedder, transformer=transformer, scheduler=scheduler)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them
    return pipe
