"""Adapter for Stable-Diffusion-style `UNet2DConditionModel` pipelines (`StableDiffusionPipeline`).

These are image pipelines, also when they draw spectrograms (Riffusion-like models): a layer is one
`...attentions.N` transformer (16 layers, each one self- and one cross-attention in SD 1.x), `generate`
returns the image (H, W, 3) as float32 in [0, 1], and there is no audio codec: the spectrogram-to-audio
step of such models is not part of the pipeline, so `encode_audio`/`decode` raise MelodiaError.
Probing and capture (which need only the denoiser) work as for the audio families.

Examples:
    >>> from probing.models import load_model
    >>> model = load_model("tiny-unet")
    >>> image = model.generate("a sad waltz on violin", steps=3, guidance=3.0, seed=0)
    >>> image.shape, image.dtype
    ((128, 128, 3), dtype('float32'))
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from probing.errors import MelodiaError
from probing.models.base import Conditioning, DiffusionModel
from probing.models.family import Family

FAMILY = Family(name="unet", adapter="UNetModel", pipelines=("StableDiffusionPipeline",), tiny="tiny-unet", order=3)


class UNetModel(DiffusionModel):
    """An SD-style text-to-image UNet pipeline; `image_size` (pixels, default the pipeline's) sets the output."""

    family = FAMILY.name
    pipeline_classes = FAMILY.pipelines

    def __init__(self, pipeline: DiffusionPipeline, name: str, image_size: int | None = None):
        super().__init__(pipeline, name)
        default = self.denoiser.config.sample_size * self.pipeline.vae_scale_factor
        self.image_size = int(image_size if image_size is not None else default)

    @property
    def sample_rate(self) -> int:
        raise MelodiaError(self._no_audio())

    def _no_audio(self) -> str:
        return (f"{self.name} is an image pipeline ({type(self.pipeline).__name__}): it has no audio codec, so it "
                "cannot encode or decode audio; use it to generate images and to probe or capture attention")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.pipeline.vae_scale_factor
        return (self.denoiser.config.in_channels, side, side)

    def _guided(self, guidance: float) -> bool:
        return guidance > 1.0 and self.denoiser.config.time_cond_proj_dim is None  # as the pipeline decides

    def encode_prompt(self, prompts: list[str], guidance: float, negative: list[str] | None = None) -> Conditioning:
        guided = self._guided(guidance)
        with torch.no_grad():
            prompt_embeds, negative_embeds = self.pipeline.encode_prompt(list(prompts), self.device, 1, guided,
                                                                         negative_prompt=negative)
        if guided:
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        return Conditioning({"encoder_hidden_states": prompt_embeds}, guided=guided, prompts=list(prompts))

    def generate(self, prompt: str, steps: int, guidance: float, seed: int, decode: bool = True) -> np.ndarray:
        """The image (H, W, 3) in [0, 1] (decode=False: the latents), through the pipeline's `__call__`."""
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(prompt, height=self.image_size, width=self.image_size, num_inference_steps=steps,
                            guidance_scale=guidance, generator=generator,
                            output_type="np" if decode else "latent").images[0]
        return np.asarray(out, dtype=np.float32) if decode else out.cpu().numpy()

    def encode_audio(self, wave: np.ndarray) -> torch.Tensor:
        raise MelodiaError(self._no_audio())

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        raise MelodiaError(self._no_audio())

    def dummy_denoiser_inputs(self, batch: int = 1) -> dict[str, Any]:
        config, device, dtype = self.denoiser.config, self.device, self.dtype
        tokens = getattr(getattr(self.pipeline, "tokenizer", None), "model_max_length", 77)
        return {"sample": torch.randn(batch, *self.latent_shape, device=device, dtype=dtype),
                "timestep": torch.tensor(500),
                "encoder_hidden_states": torch.randn(batch, tokens, config.cross_attention_dim, device=device,
                                                     dtype=dtype)}


# ---- the tiny offline pipeline -----------------------------------------------------------------------------
def build_tiny_pipeline(seed: int = 0):
    """Stable Diffusion 1.x, shrunk: 3 CrossAttn down blocks + DownBlock2D, mid, UpBlock2D + 3 CrossAttn up.

    Kept: the block layout (16 attention positions, each one self- and one cross-attention), 2 layers per
    block, 8 heads, a 4-level VAE (factor 8) with 4 latent channels, CLIP text conditioning, the SD 1.x
    DDIM schedule. Shrunk: widths and depths; the default image is 128 x 128 (latent 16 x 16).
    """
    from probing.models.tiny_parts import clip_tokenizer, seeded
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_dim = 32
    tokenizer = clip_tokenizer(77)
    unet = seeded(seed, lambda: UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32, 48, 48), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        norm_num_groups=8, attention_head_dim=8, cross_attention_dim=text_dim,
    ))
    vae = seeded(seed, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ))
    text_encoder = seeded(seed, lambda: CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=text_dim, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
        set_alpha_to_one=False,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
