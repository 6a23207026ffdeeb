"""Deterministic DDIM inversion and sampling on the adapter protocol, from any point of the schedule.

`t_start` is the fraction of the schedule inverted (1.0: all the way to noise). Inversion uses
`DDIMInverseScheduler` built from the model's own scheduler config (without x0 clipping), so
inverting then sampling the same steps with the same conditioning and guidance 1 returns the latent
up to the model's own consistency between neighbouring timesteps.

Examples:
    >>> z0 = model.encode_audio(wave)
    >>> zt = ddim_invert(model, z0, model.encode_prompt([""], guidance=1.0), steps=50, t_start=0.6)
    >>> z0_again = ddim_sample(model, zt, model.encode_prompt([""], guidance=1.0), steps=50, t_start=0.6)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler
from tqdm import tqdm

from probing.errors import MelodiaError
from probing.models.base import Conditioning, DiffusionModel

# x0 clipping/thresholding (a sampler choice for plain generation) would make the two directions
# differ: inversion and the edit's denoising both run the plain DDIM ODE.
EXACT = {"clip_sample": False, "thresholding": False}

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (index, timestep, latents before the step)


def inverted_steps(steps: int, t_start: float) -> int:
    """How many of `steps` DDIM steps a partial inversion to `t_start` (0, 1] covers."""
    if not 0.0 < t_start <= 1.0:
        raise MelodiaError(f"t_start must be in (0, 1], got {t_start}")
    return max(1, round(steps * t_start))


def _run(model: DiffusionModel, scheduler, timesteps, latents: torch.Tensor, cond: Conditioning, guidance: float,
         on_step: StepCallback | None, desc: str, progress: bool) -> torch.Tensor:
    for index, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        if on_step is not None:
            on_step(index, t, latents)
        with torch.no_grad():
            eps = model.predict_noise(latents, t, cond, guidance)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def ddim_invert(model: DiffusionModel, z0: torch.Tensor, cond: Conditioning, steps: int, t_start: float = 1.0,
                guidance: float = 1.0, on_step: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """z0 -> z at `t_start` of a `steps`-step DDIM schedule (deterministic)."""
    inverse = DDIMInverseScheduler.from_config(model.scheduler.config, **EXACT)
    inverse.set_timesteps(steps, device=z0.device)
    timesteps = inverse.timesteps[: inverted_steps(steps, t_start)]
    return _run(model, inverse, timesteps, z0, cond, guidance, on_step, "inverting", progress)


def ddim_sample(model: DiffusionModel, zt: torch.Tensor, cond: Conditioning, steps: int, t_start: float = 1.0,
                guidance: float = 1.0, on_step: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """z at `t_start` -> z0 with the last `t_start` fraction of a `steps`-step DDIM schedule."""
    scheduler = DDIMScheduler.from_config(model.scheduler.config, **EXACT)
    scheduler.set_timesteps(steps, device=zt.device)
    timesteps = scheduler.timesteps[steps - inverted_steps(steps, t_start):]
    return _run(model, scheduler, timesteps, zt, cond, guidance, on_step, "denoising", progress)
