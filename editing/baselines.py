"""The editing baselines Melodia is compared with: SDEdit and edit-friendly DDPM inversion.

SDEdit (Meng et al., ICLR 2022) noises the source latent to `t_start` with q(z_t | z0) and
denoises it with the target prompt by the same partial DDIM sampler as Melodia. Edit-friendly DDPM
inversion (Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024; for audio: Manor & Michaeli, ICML
2024) draws an independent x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps_t for every timestep, extracts
the noise maps z_t = (x_{t-1} - mu_t(x_t)) / sigma_t with the source prompt, and regenerates with the
target prompt from x_{t_start} with the same maps (the DDPM sampler: `DDIMScheduler.step` at eta=1,
which honours the scheduler's prediction_type). With the source's prompt and guidance, the
regeneration returns the source latent up to float error.

Examples:
    >>> maps = ddpm_noise_maps(model, z0, model.encode_prompt([""], 1.0), steps=50, t_start=0.6, generator=g)
    >>> z_edit = ddpm_sample(model, maps, model.encode_prompt(["a violin waltz"], 3.5), 50, 0.6, guidance=3.5)
    >>> z_sdedit = ddim_sample(model, sdedit_noise(model, z0, 50, 0.6, g), target, 50, 0.6, guidance=3.5)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler

from editing.inversion import StepCallback, partial_schedule, run_steps
from probing.models.base import Conditioning, DiffusionModel

DDPM_ETA = 1.0  # DDIM at eta=1 is the DDPM posterior step


@dataclass
class NoiseMaps:
    """What edit-friendly DDPM inversion extracts: the start latent x_{t_start} and one map per step.

    `noise[i]` is the map of the i-th denoising step (same shape as the latent, batch 1).
    """

    start: torch.Tensor
    noise: list[torch.Tensor]


def cpu_randn(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped like `like`, drawn on the CPU (the same on every device)."""
    return torch.randn(like.shape, generator=generator).to(like.device, like.dtype)


def _posterior_std(scheduler: DDIMScheduler, t: torch.Tensor) -> torch.Tensor:
    """sigma_t of `scheduler.step` at eta=1: the DDPM posterior std between `t` and its previous timestep."""
    previous = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return DDPM_ETA * scheduler._get_variance(t, previous) ** 0.5


def sdedit_noise(model: DiffusionModel, z0: torch.Tensor, steps: int, t_start: float,
                 generator: torch.Generator) -> torch.Tensor:
    """z0 -> z_t at the first timestep of the partial schedule, by q(z_t | z0) with seeded noise.

    Shapes: z0 and the result are (1, C, H, W) latents.
    """
    scheduler, timesteps = partial_schedule(model, steps, t_start)
    return scheduler.add_noise(z0, cpu_randn(z0, generator), timesteps[:1])


def ddpm_noise_maps(model: DiffusionModel, z0: torch.Tensor, source: Conditioning, steps: int, t_start: float,
                    generator: torch.Generator, guidance: float = 1.0, progress: bool = False) -> NoiseMaps:
    """Edit-friendly DDPM inversion of z0 over the last `t_start` of a `steps`-step schedule.

    Each noisy latent x_t is drawn independently from q(x_t | z0); the map of step t is
    (x_{t-1} - mu_t(x_t)) / sigma_t under the `source` conditioning at `guidance`. The next step
    runs on mu_t + sigma_t z_t exactly as `ddpm_sample` will compute it, so float error does not
    accumulate. A step with sigma_t = 0 (a final step to alpha 1) gets a zero map.
    """
    scheduler, timesteps = partial_schedule(model, steps, t_start)
    noisy = [scheduler.add_noise(z0, cpu_randn(z0, generator), t[None]) for t in timesteps]
    following = noisy[1:] + [z0]  # the latent each step should reach
    noise: list[torch.Tensor] = []

    def extract(index: int, eps: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        mean = scheduler.step(eps, t, latents, eta=DDPM_ETA, variance_noise=torch.zeros_like(latents)).prev_sample
        std = _posterior_std(scheduler, t)
        noise.append((following[index] - mean) / std if std > 0 else torch.zeros_like(mean))
        return scheduler.step(eps, t, latents, eta=DDPM_ETA, variance_noise=noise[-1]).prev_sample

    run_steps(model, timesteps, noisy[0], source, guidance, extract, desc="extracting noise", progress=progress)
    return NoiseMaps(noisy[0], noise)


def ddpm_sample(model: DiffusionModel, maps: NoiseMaps, target: Conditioning, steps: int, t_start: float,
                guidance: float = 1.0, on_step: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Regenerate from `maps.start` with the `target` conditioning, each DDPM step using its extracted noise map.

    With the source's conditioning and guidance it passes through the independently drawn x_t of
    `ddpm_noise_maps` (up to float error) and ends at the source latent.
    """
    scheduler, timesteps = partial_schedule(model, steps, t_start)

    def step(index: int, eps: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return scheduler.step(eps, t, latents, eta=DDPM_ETA, variance_noise=maps.noise[index]).prev_sample

    return run_steps(model, timesteps, maps.start, target, guidance, step, on_step, progress=progress)
