"""Adapter for melodia's flow-matching DiT testbed (`--model testbed-dit`), a `TestbedDiTPipeline`.

A layer is one `LongCatAudioDiTTransformer` block (`blocks.N`: `self_attn`, then `cross_attn` to
the caption tokens); the attention geometry (RoPE, pre-split q/k norms, masks) is LongCat-AudioDiT's.
The denoiser's timestep is sigma itself (1 = noise), as in LongCat's pipeline.

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("testbed-dit")
    >>> wave = model.generate("a calm waltz played on the flute", steps=25, guidance=3.0, seed=0)
    >>> wave.shape, model.sample_rate
    ((65536,), 16000)
"""
from __future__ import annotations

from typing import Any

import torch

from probing.layers import band_by_depth
from probing.models.base import Conditioning
from probing.models.flow import FlowModel
from probing.models.longcat import AudioDiTAttentionGeometry
from probing.models.testbed import TestbedAudio
from probing.testbed.dit import sigma_schedule
from probing.testbed.pipeline import MAX_PROMPT_TOKENS
from probing.models.family import Family

FAMILY = Family(name="testbed-dit", adapter="TestbedDiTModel", pipelines=("TestbedDiTPipeline",), order=0)


class TestbedDiTModel(TestbedAudio, AudioDiTAttentionGeometry, FlowModel):

    __test__ = False  # not a pytest test class, despite the name
    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines
    word_aligned_keys = True  # keys: the T5 states of the prompt's word tokens, then </s> and padding

    @property
    def default_edit_layers(self) -> str:  # type: ignore[override]
        """The later-middle blocks, as AudioLDM 2's 8-14 of 16 (`band_by_depth`): self:3-5 of 6 blocks."""
        return band_by_depth(int(self.denoiser.config.dit_depth))

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.pipeline.latent_shape

    def flow_sigmas(self, steps: int) -> torch.Tensor:
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(sigmas=sigma_schedule(steps))
        return scheduler.sigmas.clone()

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """sigma as the pipeline computes it: its scheduler timestep (sigma x 1000) / 1000."""
        scale = self.scheduler.config.num_train_timesteps
        return (torch.as_tensor(sigma, dtype=torch.float32) * scale) / scale

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        hidden, mask = self.pipeline.conditioning(list(prompts), guidance, negative)
        return Conditioning({"encoder_hidden_states": hidden, "encoder_attention_mask": mask.bool()},
                            guided=guidance > 1.0, prompts=list(prompts))

    def denoise_call(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning) -> torch.Tensor:
        timestep = torch.as_tensor(t, dtype=latents.dtype, device=latents.device).expand(latents.shape[0])
        return self.denoiser(hidden_states=latents, timestep=timestep, **cond.kwargs, return_dict=False)[0]

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        dim = self.pipeline.text_encoder.config.d_model
        return {"hidden_states": torch.randn(batch, *self.latent_shape), "timestep": torch.full((batch,), 0.5),
                "encoder_hidden_states": torch.randn(batch, MAX_PROMPT_TOKENS, dim),
                "encoder_attention_mask": torch.ones(batch, MAX_PROMPT_TOKENS, dtype=torch.bool)}
