"""The generic adapter: any diffusers pipeline whose denoiser (`unet` or `transformer`) has diffusers
attention modules, for tracing only.

A pipeline class melodia has no adapter for can still be traced: hooks need only the denoiser's
attention modules. What a family adapter knows in advance (the denoiser's inputs, hence the layer
table) is measured from the pipeline's own first denoiser call instead. Cross-attention keys count
as the prompt's tokens (word heat maps) when the pipeline has a fast tokenizer that pads to as
many tokens as the layer has keys (CLIP-style conditioning); generation, inversion and editing
need a family adapter. The measurement is one extra denoiser forward at the first step: a denoiser
that keeps state across calls (a step counter, diffusers' block caches) sees one call more.

Examples:
    >>> with trace(my_pipe) as tc:                 # a pipeline class melodia does not know
    ...     my_pipe("a sad waltz on violin", num_inference_steps=10)
    >>> tc.word_heat_map("violin").values.shape
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probing.errors import MelodiaError
from probing.hooks import bound_arguments
from probing.models.base import Conditioning, DiffusionModel


class GenericModel(DiffusionModel):
    """An unknown pipeline seen through its denoiser alone; see the module docstring."""

    family = "generic"
    pipeline_classes = ()
    word_aligned_keys = True  # narrowed per module by `keys_are_prompt_tokens`

    def __init__(self, pipeline, name: str):
        if not any(isinstance(getattr(pipeline, key, None), torch.nn.Module) for key in ("unet", "transformer")):
            raise MelodiaError(f"{name}: {type(pipeline).__name__} has no `unet` or `transformer` denoiser; melodia "
                               "cannot trace it (supported pipeline classes: see probing.models.ADAPTERS)")
        super().__init__(pipeline, name)
        if not self.attention_modules():
            raise MelodiaError(f"{name}: the denoiser of {type(pipeline).__name__} has no diffusers attention modules")
        self._inputs: dict[str, Any] | None = None

    @property
    def sample_rate(self) -> int:
        raise self._tracing_only("asked for its sample rate (pass sr= to HeatMap.plot)")

    def remember_inputs(self, args: tuple, kwargs: dict) -> None:
        """Keep the arguments of a real denoiser call (by name): the layer table is measured with them."""
        self._inputs = bound_arguments(self.denoiser.forward, args, kwargs)

    @property
    def has_inputs(self) -> bool:
        return self._inputs is not None

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        if self._inputs is None:
            raise MelodiaError(f"{self.name}: the generic adapter learns the denoiser's inputs from the pipeline's "
                               "first call; call the pipeline inside `with trace(...)`")
        return dict(self._inputs)

    def position_of(self, path: str) -> str:
        """`...attentions.N` (UNets), else the path through its first block index (`transformer_blocks.3`)."""
        parts = path.split(".")
        if "attentions" in parts:
            return super().position_of(path)
        index = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts) - 2)
        return ".".join(parts[: index + 1])

    def keys_are_prompt_tokens(self, module) -> bool:
        """Cross-attention whose key count is the tokenizer's padded length (CLIP-style conditioning)."""
        tokenizer = self.text_tokenizer
        return (module.kind == "cross" and tokenizer is not None and getattr(tokenizer, "is_fast", False)
                and module.key_tokens == getattr(tokenizer, "model_max_length", -1))

    def _tracing_only(self, what: str) -> MelodiaError:
        return MelodiaError(f"{self.name}: {type(self.pipeline).__name__} has no melodia adapter, so it can be traced "
                            f"(probing.trace) but not {what}; see docs/flow-models.md for adding a family")

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        raise self._tracing_only("encoded by melodia")

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        raise self._tracing_only("generated from by melodia (call the pipeline itself)")

    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        raise self._tracing_only("used to encode audio")

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        raise self._tracing_only("used to decode latents")
