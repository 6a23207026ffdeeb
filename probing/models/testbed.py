"""Adapter for melodia's own trained testbed (`--model testbed`), a `TestbedPipeline`.

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("testbed")
    >>> wave = model.generate("a calm waltz played on the flute", steps=25, guidance=3.0, seed=0)
    >>> wave.shape, model.sample_rate
    ((65536,), 16000)
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from probing.models.base import Conditioning, DiffusionModel
from probing.testbed.pipeline import MAX_PROMPT_TOKENS
from probing.models.family import Family

FAMILY = Family(name="testbed", adapter="TestbedModel", pipelines=("TestbedPipeline",), order=0)


class TestbedAudio:
    """What both testbed adapters share (a mixin): the mel codec's audio and the pipeline's own sampling."""

    @property
    def sample_rate(self) -> int:
        return self.pipeline.codec.sample_rate

    @property
    def clip_samples(self) -> int:
        return self.pipeline.codec.clip_samples

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                            output_type="np" if decode else "latent").audios[0]
        return out if decode else out.cpu().numpy()

    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        return self.pipeline.encode_audio(torch.as_tensor(wave, dtype=torch.float32).unsqueeze(0))

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return self.pipeline.decode_latents(latents)[0].cpu().numpy().astype(np.float32)


class TestbedModel(TestbedAudio, DiffusionModel):

    __test__ = False  # not a pytest test class, despite the name
    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    default_edit_layers = "self:8-14"  # laid out like AudioLDM 2: same 16 positions
    word_aligned_keys = True  # keys: the T5 states of the prompt's word tokens, then </s> and padding

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.pipeline.codec.latent_shape

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        hidden, mask = self.pipeline.conditioning(list(prompts), guidance, negative)
        return Conditioning({"encoder_hidden_states": hidden, "encoder_attention_mask": mask},
                            guided=guidance > 1.0, prompts=list(prompts))

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        dim = self.pipeline.text_encoder.config.d_model
        return {"sample": torch.randn(batch, *self.latent_shape), "timestep": torch.tensor(500),
                "encoder_hidden_states": torch.randn(batch, MAX_PROMPT_TOKENS, dim),
                "encoder_attention_mask": torch.ones(batch, MAX_PROMPT_TOKENS, dtype=torch.long)}
