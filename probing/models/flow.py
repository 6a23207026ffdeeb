"""The ODE-in-sigma side of the adapter protocol (ACE-Step, Stable Audio 3, LongCat, the DiT testbed;
Stable Audio Open's EDM parametrisation through the same interface, `prediction = "edm"`).

A flow model's sampler integrates dx/dsigma from sigma = 1 (noise) to 0 (data) with Euler steps:
x_next = x + (sigma_next - sigma) * v, the `FlowMatchEulerDiscreteScheduler` convention. An adapter
gives the pipeline's exact sigma schedule (`flow_sigmas`, shift included), the timestep value its
denoiser receives at a sigma (`timestep_for`) and `predict_noise`, which returns v with the
pipeline's own classifier-free guidance, in that sign convention whatever the family's own. Euler
over these three reproduces the pipeline's `__call__` (each family's tests check it).

A k-diffusion/EDM model (x = x0 + sigma eps, sigma from sigma_max down to 0; Stable Audio Open) has
the same probability-flow ODE form with dx/dsigma = (x - D(x, sigma)) / sigma, D the preconditioned
denoiser; its adapter returns that derivative from `predict_noise` and its own `noised` path, and
the editor's Euler inversion and sampling run unchanged (`prediction = "edm"`).

Examples:
    >>> model = load_model("testbed-dit")
    >>> sigmas = model.flow_sigmas(25)                                   # 26 values, 1.0 ... 0.0
    >>> v = model.predict_noise(x, model.timestep_for(sigmas[0]), cond, guidance=3.0)
"""
from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch

from probing.models.base import DiffusionModel


class FlowModel(DiffusionModel):
    """A `DiffusionModel` whose scheduler is a flow-matching Euler sampler."""

    prediction: ClassVar[str] = "flow"

    @abstractmethod
    def flow_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's sigmas for a `steps`-step generation: `steps + 1` values, descending, the last 0."""

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The denoiser's timestep argument at `sigma` (default: sigma x num_train_timesteps, as
        `FlowMatchEulerDiscreteScheduler.timesteps`)."""
        return torch.as_tensor(sigma, dtype=torch.float32) * self.scheduler.config.num_train_timesteps

    def sampling_timesteps(self, steps: int) -> list[float]:
        return [float(self.timestep_for(s)) for s in self.flow_sigmas(steps)[:-1]]

    def scale_model_input(self, latents: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Flow-matching pipelines feed the latents unscaled."""
        return latents

    def noised(self, z0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        """The latent at `sigma` on the path from `z0` to `noise` (rectified flow: (1 - sigma) z0 + sigma noise)."""
        return (1 - sigma) * z0 + sigma * noise
