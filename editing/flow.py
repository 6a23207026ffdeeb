"""Editing on flow-matching models: ODE inversion, partial sampling, SDEdit and FlowEdit.

A flow model (`probing.models.flow.FlowModel`) samples with Euler steps x_next = x + (s_next - s) v
over its sigmas s_0 = 1 > ... > s_N = 0. The partial schedule of an edit is the last
`inverted_steps(steps, t_start)` steps, starting at s_k. Inversion runs the same Euler steps
backwards, from the source latent at sigma 0 up to s_k, evaluating v at the *destination* sigma
of each step, the flow analogue of DDIM inversion: inversion and sampling then visit the same
timesteps (so the attention repository's keys match), and inverting then sampling with the same
conditioning returns the latent up to the change of v over one step (with `refine` fixed-point
iterations per step, up to their convergence: Stable Audio Open's default, see `flow_invert`).

FlowEdit (Kulikov et al., ICCV 2025) is inversion-free: from z_edit = source latent, each step
draws z_src = (1 - s) x_src + s eps, moves z_tar = z_edit + z_src - x_src and adds
(s_next - s) (v_target(z_tar) - v_source(z_src)) to z_edit.

Examples:
    >>> empty = model.encode_prompt([""], guidance=1.0)
    >>> zt = flow_invert(model, z0, empty, steps=25, t_start=0.6)
    >>> z0_again = flow_sample(model, zt, empty, steps=25, t_start=0.6)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from editing.baselines import cpu_randn
from editing.methods import ODE_PREDICTIONS
from editing.inversion import (StepCallback, ddim_invert, ddim_sample, fixed_point_step, inverted_steps, labelled,
                               run_steps)
from probing.models.base import Conditioning, DiffusionModel
from probing.models.flow import FlowModel


def partial_sigmas(model: FlowModel, steps: int, t_start: float) -> torch.Tensor:
    """The sigmas an edit denoises through: the last `inverted_steps(steps, t_start)` steps + the final 0."""
    sigmas = model.flow_sigmas(steps).to(torch.float32)
    return sigmas[steps - inverted_steps(steps, t_start):]


def _euler(sigmas: torch.Tensor):
    """The Euler step from sigmas[i] to sigmas[i + 1] (either direction)."""
    def step(index: int, v: torch.Tensor, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return latents + (sigmas[index + 1] - sigmas[index]).to(latents.dtype) * v
    return step


def flow_invert(model: FlowModel, z0: torch.Tensor, cond: Conditioning, steps: int, t_start: float = 1.0,
                guidance: float = 1.0, on_step: StepCallback | None = None, progress: bool = False,
                refine: int | None = None) -> torch.Tensor:
    """z0 -> z at sigma s_k, the start of the last `t_start` of a `steps`-step schedule (deterministic).

    `refine` fixed-point iterations per step (default: the model's `inversion_refinements`) re-evaluate
    the derivative at the step's own result, converging to the latent that the sampler's Euler step
    maps back exactly (`editing.inversion.fixed_point_step`); the source Q/K recorded at a timestep are
    then the last evaluation's.
    """
    sigmas = partial_sigmas(model, steps, t_start).flip(0)  # 0 = s_N < ... < s_k
    timesteps = torch.stack([model.timestep_for(s) for s in sigmas[1:]])  # each step's destination
    euler = _euler(sigmas)

    def step(index: int, v: torch.Tensor, t: torch.Tensor, at: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        return euler(index, v, t, origin)  # a velocity needs no conversion: where it was evaluated does not enter

    return run_steps(model, timesteps, z0, cond, guidance, fixed_point_step(model, cond, guidance, refine, step),
                     on_step, "inverting", progress)


def flow_sample(model: FlowModel, zt: torch.Tensor, cond: Conditioning, steps: int, t_start: float = 1.0,
                guidance: float = 1.0, on_step: StepCallback | None = None, progress: bool = False) -> torch.Tensor:
    """z at s_k -> z0 with the last `t_start` fraction of a `steps`-step Euler schedule."""
    sigmas = partial_sigmas(model, steps, t_start)
    timesteps = torch.stack([model.timestep_for(s) for s in sigmas[:-1]])
    return run_steps(model, timesteps, zt, cond, guidance, _euler(sigmas), on_step, "denoising", progress)


def flow_sdedit_noise(model: FlowModel, z0: torch.Tensor, steps: int, t_start: float,
                      generator: torch.Generator) -> torch.Tensor:
    """SDEdit's start on the model's path at s_k: (1 - s_k) z0 + s_k eps (rectified flow), z0 + s_k eps (EDM)."""
    sigma = partial_sigmas(model, steps, t_start)[0].to(z0.dtype)
    return model.noised(z0, cpu_randn(z0, generator), sigma)


def flowedit(model: FlowModel, z0: torch.Tensor, source: Conditioning, target: Conditioning, steps: int,
             t_start: float, guidance: float, source_guidance: float, generator: torch.Generator,
             progress: bool = False) -> torch.Tensor:
    """FlowEdit from the source latent `z0` over the last `t_start` of the schedule (one noise draw per step)."""
    sigmas = partial_sigmas(model, steps, t_start)
    z_edit = z0
    for index in tqdm(range(len(sigmas) - 1), desc=labelled("denoising"), disable=not progress, leave=False):
        sigma, t = sigmas[index].to(z0.dtype), model.timestep_for(sigmas[index])
        z_source = model.noised(z0, cpu_randn(z0, generator), sigma)
        z_target = z_source + (z_edit - z0)  # exactly z_source while the edit has not moved
        with torch.no_grad():
            delta = (model.predict_noise(z_target, t, target, guidance)
                     - model.predict_noise(z_source, t, source, source_guidance))
        z_edit = z_edit + (sigmas[index + 1].to(z0.dtype) - sigma) * delta
    return z_edit


def ode_samplers(model: DiffusionModel) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The deterministic (invert, sample) pair of a model's kind: Euler over its sigmas (flow, EDM), or DDIM.

    Both take (model, latents, cond, steps, t_start, guidance=1.0, on_step=None, progress=False); the inverter
    also `refine` (fixed-point iterations per step, default the model's `inversion_refinements`).
    """
    return (flow_invert, flow_sample) if model.prediction in ODE_PREDICTIONS else (ddim_invert, ddim_sample)
