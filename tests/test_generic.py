"""The generic adapter: a pipeline class melodia has never seen is traced from its own first call."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline

from probing.errors import MelodiaError
from probing.models import adapter_for
from probing.models.tiny import build_tiny
from probing.tracing import trace

PROMPT = "a sad waltz played on violin"


class SpectrogramPainter(DiffusionPipeline):
    """A pipeline class no adapter knows: a text-conditioned UNet denoising a latent 'spectrogram'."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, prompt: str, num_inference_steps: int = 3, guidance_scale: float = 3.0):
        tokens = [self.tokenizer(p, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids for p in ("", prompt)]
        context = self.text_encoder(torch.cat(tokens))[0]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.scheduler.timesteps:
            uncond, cond = self.unet(torch.cat([latents] * 2), t, encoder_hidden_states=context).sample.chunk(2)
            latents = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents).prev_sample
        return latents


@pytest.fixture(scope="module")
def painter() -> SpectrogramPainter:
    parts = build_tiny("tiny-unet").components
    return SpectrogramPainter(parts["unet"], parts["text_encoder"], parts["tokenizer"],
                              DDIMScheduler.from_config(parts["scheduler"].config))


def test_an_unknown_pipeline_gives_a_word_heat_map_in_a_few_lines(painter):
    with trace(painter) as tc:
        latents = painter(PROMPT, num_inference_steps=3)
    heat = tc.word_heat_map("violin")
    assert type(painter).__name__ == "SpectrogramPainter" and latents.shape == (1, 4, 16, 16)
    assert tc.model.family == "generic" and len(tc.layer_names) == 16  # SD-style: 16 cross-attention layers
    assert heat.values.shape == (16, 16) and len(heat.layers) == 16 and np.isfinite(heat.values).all()
    layer = tc["cross:1"]
    assert len(layer.timesteps) == 3 and layer.timesteps[0] == float(painter.scheduler.timesteps[0])  # first call too
    np.testing.assert_allclose(layer.maps.sum(axis=2), 1.0, atol=2e-3)
    column = painter.tokenizer(PROMPT)["input_ids"].index(painter.tokenizer.convert_tokens_to_ids("violin</w>"))
    expected = layer.maps[:, :, column].mean(axis=0).reshape(layer.grid)
    np.testing.assert_allclose(tc.word_heat_map("violin", layers="cross:1").values, expected, rtol=1e-6)


def test_tracing_leaves_the_unknown_pipelines_output_as_it_was(painter):
    before = painter(PROMPT)
    with trace(painter):
        during = painter(PROMPT)
    assert type(painter).__name__ == "SpectrogramPainter"
    torch.testing.assert_close(during, before, atol=1e-4, rtol=0)  # one-pass attention: float rounding only


def test_a_subclass_of_a_known_pipeline_keeps_its_familys_adapter():
    class MyStableDiffusion(type(build_tiny("tiny-unet"))):
        pass

    pipe = MyStableDiffusion(**build_tiny("tiny-unet").components)
    assert adapter_for(pipe).family == "unet"


def test_the_generic_adapter_says_what_it_cannot_do(painter):
    model = adapter_for(painter, generic=True)
    with pytest.raises(MelodiaError, match="traced .* but not generated"):
        model.generate(PROMPT, 3, 3.0, 0)
    with pytest.raises(MelodiaError, match="not supported"):
        adapter_for(painter)  # without generic=True an unknown class is refused, naming the supported ones
    with trace(painter) as tc:
        pass
    with pytest.raises(MelodiaError, match="nothing was recorded: call the pipeline"):
        tc.word_heat_map("violin")


def test_arguments_are_bound_by_name_whatever_the_catch_all_is_called():
    from probing.hooks import bound_arguments

    def forward(sample, timestep, encoder_hidden_states=None, **extra):
        return sample

    assert bound_arguments(forward, (1, 2), {"encoder_hidden_states": 3, "cross": 4}) == {
        "sample": 1, "timestep": 2, "encoder_hidden_states": 3, "cross": 4}
