"""Two one-step checks of a denoiser on clean latents, independent of any sampler.

- `denoising_error`: noise a clean latent to a level, ask the denoiser for its clean estimate, and
  return that estimate's error as a fraction of the error of reading the noisy input as clean
  (1: the denoiser removes nothing; 0: it removes all of it). Levels are flow sigmas; a DDPM model is
  asked at the timestep of the same signal-to-noise ratio, so both families are read on one scale.
- `prompt_reading`: a diffusion classifier (Li et al. 2023). For a clip, which of several prompts makes
  the denoiser's clean estimate closest to the clip? It shows whether the text reaches the
  prediction at all, however the samples turn out. `reading_accuracy` scores it over labelled clips.

A model can read its prompt well and still denoise little (the DiT testbed v1: 32/32 instruments
read, yet its one-step estimate keeps 80-90 % of the noise, and its samples stay noisy).

Examples:
    >>> model = load_model("testbed")
    >>> z0 = model.encode_audio(render_clip("violin", "waltz", "calm", 0))
    >>> denoising_error(model, z0, ["a calm waltz played on the violin"])   # {0.05: ..., 0.2: ..., 0.5: ...}
    >>> reading_accuracy(model, z0, ["violin"], instruments, lambda c, i: f"a calm waltz played on the {c}")
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from editing.inversion import noise_estimate
from probing.models.base import Conditioning, DiffusionModel
from probing.models.flow import FlowModel

SIGMAS = (0.05, 0.2, 0.5)


def _ddpm_timestep(model: DiffusionModel, sigma: float) -> int:
    """The training timestep whose signal-to-noise ratio a / (1 - a) is closest to the flow's ((1 - s) / s)^2."""
    alphas = model.scheduler.alphas_cumprod.double()
    target = np.log(((1 - sigma) / sigma) ** 2)
    return int(torch.argmin((torch.log(alphas / (1 - alphas)) - target).abs()))


@torch.no_grad()
def clean_estimates(model: DiffusionModel, z0: torch.Tensor, noise: torch.Tensor, cond: Conditioning,
                    sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the denoiser's clean estimate, the noisy input read as clean) for `z0` noised by `noise` to `sigma`.

    `z0`, `noise` and `cond` (`model.encode_prompt(prompts, 1.0)`: no guidance) share the batch.
    """
    if isinstance(model, FlowModel):
        xt = model.noised(z0, noise, sigma)
        velocity = model.predict_noise(xt, model.timestep_for(sigma), cond, 1.0)
        return xt - sigma * velocity, xt / (1 - sigma)
    t = _ddpm_timestep(model, sigma)
    alpha_bar = model.scheduler.alphas_cumprod[t].to(z0.dtype)
    xt = alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise
    eps = noise_estimate(model.scheduler, model.predict_noise(xt, t, cond, 1.0), t, xt)
    return (xt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt(), xt / alpha_bar.sqrt()


def _noise(z0: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(z0)


def denoising_error(model: DiffusionModel, z0: torch.Tensor, prompts: Sequence[str],
                    sigmas: Sequence[float] = SIGMAS, seed: int = 0) -> dict[float, float]:
    """Per flow sigma: RMS error of the one-step clean estimate / RMS error of the noisy input read as clean."""
    cond, out = model.encode_prompt(list(prompts), 1.0), {}
    for n, sigma in enumerate(sigmas):
        estimate, naive = clean_estimates(model, z0, _noise(z0, seed + n), cond, sigma)
        out[float(sigma)] = float((estimate - z0).pow(2).mean().sqrt() / (naive - z0).pow(2).mean().sqrt())
    return out


def prompt_reading(model: DiffusionModel, z0: torch.Tensor, candidates: Sequence[Sequence[str]],
                   sigmas: Sequence[float] = SIGMAS, seed: int = 0) -> np.ndarray:
    """For each clip (row of `z0`), the index of the candidate prompt whose clean estimate is closest to it.

    `candidates[i]` are clip i's prompts (the same number for every clip); every candidate sees the same noise.
    """
    encoded: dict[tuple[str, ...], Conditioning] = {}
    picks = []
    for i, prompts in enumerate(candidates):
        key = tuple(prompts)
        if key not in encoded:
            encoded[key] = model.encode_prompt(list(key), 1.0)
        clip = z0[i: i + 1].expand(len(prompts), *z0.shape[1:])
        error = torch.zeros(len(prompts))
        for n, sigma in enumerate(sigmas):
            noise = _noise(z0[i: i + 1], seed + 1000 * i + n).expand_as(clip)
            estimate, _ = clean_estimates(model, clip, noise, encoded[key], sigma)
            error += (estimate - clip).pow(2).flatten(1).mean(dim=1).cpu()
        picks.append(int(torch.argmin(error)))
    return np.array(picks)


def reading_accuracy(model: DiffusionModel, z0: torch.Tensor, truth: Sequence[str], classes: Sequence[str],
                     prompt: Callable[[str, int], str], seed: int = 0) -> float:
    """Fraction of clips (rows of `z0`, labelled `truth`) whose own class wins `prompt_reading` among all
    `classes`; `prompt(c, i)` is clip i's caption naming class c (chance: 1 / len(classes))."""
    candidates = [[prompt(c, i) for c in classes] for i in range(len(truth))]
    picks = prompt_reading(model, z0, candidates, seed=seed)
    return float(np.mean([classes[k] == label for k, label in zip(picks, truth)]))
