"""The adapter protocol: one small class per model family, everything else written once against it.

Examples:
    >>> model = load_model("testbed")               # probing.models.load_model
    >>> cond = model.encode_prompt(["a calm waltz on flute"], guidance=3.0)
    >>> eps = model.predict_noise(torch.randn(1, *model.latent_shape), 500, cond, guidance=3.0)
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

from probing.errors import MelodiaError

ATTENTION_CLASSES = (Attention, AttentionModuleMixin)
CONTEXT_CHUNK = 64  # prompts encoded at once when measuring the longest context


@dataclass(frozen=True)
class QKTap:
    """Where an attention module's projected Q or K appears: channels `channels` (None: all) of `projection`'s output.

    Hooks read (and may replace) exactly those channels; a fused projection (Q, K and V in one
    Linear) gives two taps on the same module.
    """

    projection: torch.nn.Module
    which: str  # "q" | "k"
    channels: slice | None = None


@dataclass
class Conditioning:
    """Denoiser keyword arguments for one batch; under CFG the batch is [uncond, cond]."""

    kwargs: dict[str, Any]
    guided: bool
    prompts: list[str] = field(default_factory=list)


class DiffusionModel(ABC):
    """A diffusers pipeline seen through the few operations melodia needs.

    Subclasses set `family`, `default_edit_layers` and implement the abstract methods; they are
    thin translations of the pipeline's own code, never a re-implementation of the model.
    """

    family: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]
    default_edit_layers: ClassVar[str] = "self:*"
    # "epsilon": a DDPM/DDIM-family scheduler (predict_noise follows its prediction_type);
    # "flow": flow matching, predict_noise returns the velocity dx/dsigma (see probing.models.flow).
    prediction: ClassVar[str] = "epsilon"
    pads_context_per_batch: ClassVar[bool] = False  # see context_tokens
    # True when cross-attention's keys are `text_tokenizer`'s tokens of the prompt, in order from key 0
    # (checked per family; see token_spans). False: word-aligned probe features are unavailable.
    word_aligned_keys: ClassVar[bool] = False
    # fixed-point iterations per inversion step (editing.inversion.ddim_invert, editing.flow.flow_invert):
    # 0 = the explicit step, as the papers invert; each iteration costs one more evaluation per step
    inversion_refinements: ClassVar[int] = 0
    sample_rate: int

    def __init__(self, pipeline: DiffusionPipeline, name: str):
        self.pipeline = pipeline
        self.name = name
        self._check_hookable()

    # ---- the model's parts -------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.pipeline.unet if hasattr(self.pipeline, "unet") else self.pipeline.transformer

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def attention_modules(self) -> dict[str, torch.nn.Module]:
        """Every attention module of the denoiser (both diffusers base classes), by module path."""
        return {path: m for path, m in self.denoiser.named_modules() if isinstance(m, ATTENTION_CLASSES)}

    def position_of(self, path: str) -> str:
        """The attention position (layer) a module belongs to: the `...attentions.N` transformer."""
        parts = path.split(".")
        return ".".join(parts[: parts.index("attentions") + 2])

    def token_grid(self, n_tokens: int, latent_hw: tuple[int, ...]) -> tuple[int, int]:
        """(time, freq) grid of `n_tokens` query tokens, given the denoiser input's spatial shape."""
        if len(latent_hw) == 1:
            return (n_tokens, 1)
        height, width = latent_hw
        factor = max(1, round(math.sqrt(height * width / n_tokens)))
        grid = (math.ceil(height / factor), math.ceil(width / factor))
        return grid if grid[0] * grid[1] == n_tokens else (n_tokens, 1)

    # ---- attention geometry: how each family's processor turns projections into attention ------------
    def qk_taps(self, module: torch.nn.Module) -> list[QKTap]:
        """Where `module`'s Q and K are projected (default: the outputs of `to_q` and `to_k`)."""
        return [QKTap(module.to_q, "q"), QKTap(module.to_k, "k")]

    def attention_kind(self, module: torch.nn.Module, call_kwargs: dict[str, Any]) -> str:
        """"cross" when the call attends to a context (`encoder_hidden_states` or `context`), else "self".

        `call_kwargs` holds every argument of the module's forward but the first, by name."""
        context = call_kwargs.get("encoder_hidden_states", call_kwargs.get("context"))
        return "self" if context is None else "cross"

    def map_mask(self, module: torch.nn.Module, call_kwargs: dict[str, Any], query_len: int, key_len: int,
                 batch: int) -> torch.Tensor | None:
        """The additive mask the processor applies, broadcastable to (batch, heads, query_len, key_len)."""
        mask = call_kwargs.get("attention_mask")
        if mask is None:
            return None
        prepared = module.prepare_attention_mask(mask, key_len, batch)
        return prepared.view(batch, module.heads, -1, prepared.shape[-1])

    def head_signs(self, module: torch.nn.Module) -> torch.Tensor | None:
        """How `heads_qk`'s heads combine into the attention the model applies: None when each head is
        one map; a (2H,) tensor of +1/-1 for differential attention (softmax(Q1K1) - softmax(Q2K2))."""
        return None

    def heads_qk(self, module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                 call_kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected Q/K (B, N, heads*d) -> (B, heads, N, d), exactly as the processor uses them."""
        heads = module.heads
        batch, head_dim = query.shape[0], query.shape[-1] // module.heads
        query = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, key.shape[-1] // head_dim, head_dim).transpose(1, 2)
        if key.shape[1] != heads:  # grouped KV heads: each serves heads // kv_heads query heads
            key = key.repeat_interleave(heads // key.shape[1], dim=1)
        if getattr(module, "norm_q", None) is not None:
            query = module.norm_q(query)
        if getattr(module, "norm_k", None) is not None:
            key = module.norm_k(key)
        return query, key

    # ---- what each family must provide ---------------------------------------------------
    @abstractmethod
    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        """Text -> denoiser kwargs ([uncond, cond] when guidance > 1)."""

    @abstractmethod
    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        """Plain text-to-audio through the pipeline's own `__call__`: mono float32 at `sample_rate`
        (decode=False: the final latents, skipping the decoder)."""

    @abstractmethod
    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        """Mono float32 at `sample_rate` -> latents z0 (batch 1)."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents -> mono float32 waveform at `sample_rate`."""

    @abstractmethod
    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        """Keyword arguments for one denoiser forward at the default clip length (used to measure layers)."""

    def context_tokens(self, prompts: list[str]) -> int:
        """The most context (key) tokens any of `prompts` gives cross-attention; 0 when the layer table's
        dummy forward already holds the maximum (prompts padded to a fixed length, as most pipelines do).

        A family whose pipeline pads the context to the longest prompt of a batch sets
        `pads_context_per_batch`: the prompts are then encoded in chunks (as one batch pads them)."""
        if not self.pads_context_per_batch:
            return 0
        chunks = [prompts[i:i + CONTEXT_CHUNK] for i in range(0, len(prompts), CONTEXT_CHUNK)]
        return max((self.encode_prompt(c, guidance=1.0).kwargs["encoder_hidden_states"].shape[1] for c in chunks),
                   default=0)

    # ---- where the prompt's words sit on the cross-attention key axis ----------------------
    @property
    def text_tokenizer(self):
        """The tokenizer whose tokens are cross-attention's keys (see `word_aligned_keys`)."""
        return getattr(self.pipeline, "tokenizer", None)

    def keys_are_prompt_tokens(self, module) -> bool:
        """Whether cross-attention `module` (a `ModuleInfo`) attends to the prompt's tokens (not, e.g.,
        generated or learned tokens); only then can a word's key columns be read from its maps."""
        return self.word_aligned_keys

    def token_spans(self, prompt: str, char_spans: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]] | None:
        """Key-axis token range [start, stop) of each character span of `prompt`, plus "prompt": every
        real token (special tokens included, padding not). None where the keys are not prompt tokens;
        (-1, -1) for a span the tokenizer cut off.

        >>> from probing.models import load_model; model = load_model("testbed")
        >>> model.token_spans("a sad waltz on violin", {"instrument": (15, 21)})
        {'instrument': (4, 5), 'prompt': (0, 6)}
        """
        tokenizer = self.text_tokenizer
        if not self.word_aligned_keys or tokenizer is None or not getattr(tokenizer, "is_fast", False):
            return None
        limit = getattr(tokenizer, "model_max_length", None)
        encoded = tokenizer(prompt, return_offsets_mapping=True, truncation=limit is not None and limit < 10**6)
        offsets = encoded["offset_mapping"]
        spans = {}
        for name, (start, stop) in char_spans.items():
            inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < stop and b > start]
            spans[name] = (inside[0], inside[-1] + 1) if inside else (-1, -1)
        spans["prompt"] = (0, len(offsets))
        return spans

    def sampling_timesteps(self, steps: int) -> list[float]:
        """The denoiser's timestep argument at each step of a `steps`-step generation."""
        self.scheduler.set_timesteps(steps)
        return [float(t) for t in self.scheduler.timesteps]

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | int, cond: Conditioning) -> torch.Tensor:
        """One denoiser forward for the (already CFG-expanded) batch."""
        return self.denoiser(latents, t, **cond.kwargs, return_dict=False)[0]

    def scale_model_input(self, latents: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The denoiser's input at `t` as the scheduler scales it (identity for DDIM; k-diffusion divides by sigma)."""
        return self.scheduler.scale_model_input(latents, t)

    def predict_noise(self, latents: torch.Tensor, t: torch.Tensor | int, cond: Conditioning,
                      guidance: float) -> torch.Tensor:
        """The model output at `t` with classifier-free guidance applied as the pipeline does."""
        batch = torch.cat([latents, latents]) if cond.guided else latents
        out = self.denoise_call(self.scale_model_input(batch, t), t, cond)
        if not cond.guided:
            return out
        uncond, text = out.chunk(2)
        return uncond + guidance * (text - uncond)

    # ---- safety ---------------------------------------------------------------------------
    def _check_hookable(self) -> None:
        if hasattr(self.denoiser, "_orig_mod"):
            raise MelodiaError(f"{self.name}: the denoiser is torch.compile'd; melodia's per-module hooks would be "
                             "bypassed. Load the model without torch.compile.")
        fused = [p for p, m in self.attention_modules().items() if getattr(m, "fused_projections", False)]
        if fused:
            raise MelodiaError(f"{self.name}: fused QKV projections in {fused[0]} (and {len(fused) - 1} more) bypass "
                             "melodia's hooks; call unfuse_qkv_projections() first.")
