"""Does an edit keep its source *because of the source's own* Q/K? The injection specificity control.

Per source: invert it to `t_start` (recording its self-attention Q/K), then denoise the target prompt
from the same inverted latent five ways, which differ only in the Q/K the chosen layers are fed:

- `none`: no injection (the edit's own Q/K), the baseline;
- `own`: the source's Q/K of the same timestep (Melodia);
- `reversed`: the source's Q/K, served at the mirrored timestep (the first denoising step gets the Q/K
  recorded nearest the clean end, and so on): the right clip, the wrong times;
- `foreign`: the Q/K another source (the next in the list) recorded at the same timestep: the right
  times, the wrong clip;
- `flat`: zero queries with the source's keys, so every attention row is uniform (each query averages
  every value): no routing at all. How far `flat` moves the edit from `none` is how much the model's
  output depends on where its self-attention routes, the most any injected pattern could move it.

Each edit is scored by chroma similarity to its source, by its latent distance to the source's latent
(relative to the source latent's norm) and by its shift: its latent distance to the `none` edit
(relative to that edit's norm; 0 for `none`). If injection carries the source's structure, `own` keeps
more than `none` and more than `foreign`; an injection switched off gives five identical edits.

Examples:
    >>> from probing.models import load_model
    >>> from probing.synth import render_clip
    >>> sources = [render_clip(i, "waltz", "calm", score_seed=s) for s, i in enumerate(["piano", "harp"])]
    >>> rows = specificity_rows(load_model("testbed"), sources, ["a calm waltz played on the violin"] * 2,
    ...                         t_start=1.0, steps=4, progress=False)
    >>> rows[0]["none_shift"], rows[0]["own_shift"] > 0                 # own Q/K move the edit off `none`
    (0.0, True)
    >>> [d["pair"] for d in specificity_differences(rows) if d["metric"] == "chroma"]
    ['own - none', 'own - foreign', 'own - reversed', 'flat - none']

Measured on 16 sources (benchmarks/injection_specificity.py): the DiT testbed v2 keeps +0.045 chroma
[+0.020, +0.073] with its own Q/K over none at full inversion.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from editing.bench_summary import bootstrap_mean
from editing.editor import Melodia
from editing.flow import ode_samplers
from editing.injection import inject_source_qk, record_source_qk
from editing.metrics.spectral import chroma_similarity
from editing.repository import AttentionRepository
from probing.errors import MelodiaError

CONTROLS = ("none", "own", "reversed", "foreign", "flat")
PAIRS = (("own", "none"), ("own", "foreign"), ("own", "reversed"), ("flat", "none"))
METRICS = ("chroma", "distance", "shift")
SUFFIXES = {"chroma": "", "distance": "_distance", "shift": "_shift"}


class MirroredTimesteps:
    """A read-only view of a repository that serves, for timestep t, what was recorded at the mirrored one."""

    def __init__(self, repository: AttentionRepository):
        held = repository.timesteps()
        self.repository, self.mirror = repository, dict(zip(held, held[::-1]))

    def get(self, timestep: float, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.repository.get(self.mirror[timestep], path)


class FlatQueries:
    """A read-only view of a repository that serves zero queries with its keys: every attention row uniform."""

    def __init__(self, repository: AttentionRepository):
        self.repository = repository

    def get(self, timestep: float, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        query, key = self.repository.get(timestep, path)
        return torch.zeros_like(query), key


def specificity_rows(model, sources: Sequence[np.ndarray], prompts: Sequence[str], t_start: float, steps: int = 25,
                     guidance: float = 3.5, layers: str = "self:*", progress: bool = True) -> list[dict]:
    """One row per source: chroma similarity to the source (`<control>`), relative latent distance to its
    latent (`<control>_distance`) and to the `none` edit (`<control>_shift`) for every control in CONTROLS.
    `sources` are mono waveforms at the model's rate; `prompts[i]` is the target of `sources[i]`; the
    `foreign` Q/K of source i are those of source i + 1 (cyclically), so at least two sources are needed."""
    if len(sources) < 2 or len(sources) != len(prompts):
        raise MelodiaError(f"the specificity control needs two or more sources with one prompt each; got "
                           f"{len(sources)} sources and {len(prompts)} prompts")
    modules = Melodia(model).injected_modules(layers)
    invert, sample = ode_samplers(model)
    empty = model.encode_prompt([""], 1.0)
    latents = [model.encode_audio(wave) for wave in sources]

    def inverted(i: int) -> tuple[torch.Tensor, AttentionRepository]:
        repository = AttentionRepository()
        with record_source_qk(model, modules, repository):
            return invert(model, latents[i], empty, steps, t_start), repository

    # Each source is inverted once: its repository is the `own` of its row and the `foreign` of the row
    # before; the first source's is kept to the end for the last row.
    first = current = following = inverted(0)
    rows = []
    try:
        for i in tqdm(range(len(sources)), desc="specificity control", disable=not progress):
            following = first if i == len(sources) - 1 else inverted(i + 1)
            (zt, own), (_, foreign) = current, following
            target = model.encode_prompt([prompts[i]], guidance)
            edits = {"none": sample(model, zt, target, steps, t_start, guidance=guidance)}
            for control, repository in (("own", own), ("reversed", MirroredTimesteps(own)), ("foreign", foreign),
                                        ("flat", FlatQueries(own))):
                with inject_source_qk(model, modules, repository):
                    edits[control] = sample(model, zt, target, steps, t_start, guidance=guidance)
            if current is not first:
                own.close()
            current = following
            z0, wave = latents[i], sources[i]
            row = {"source": i, "prompt": prompts[i]}
            for control, z in edits.items():
                row[control] = chroma_similarity(wave, model.decode(z)[: len(wave)], model.sample_rate)
                row[f"{control}_distance"] = float((z - z0).norm() / z0.norm())
                row[f"{control}_shift"] = float((z - edits["none"]).norm() / edits["none"].norm())
            rows.append(row)
    finally:  # closing twice is harmless
        for _, repository in (first, current, following):
            repository.close()
    return rows


def specificity_differences(rows: Sequence[dict], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Paired over sources, for each pair in PAIRS and each metric: n, mean of (first - second) and its 95 %
    bootstrap interval. For `distance` a negative difference means closer to the source; for `shift` against
    `none` the difference is the first control's shift itself."""
    rng = np.random.default_rng(seed)
    out = []
    for first, second in PAIRS:
        for metric in METRICS:
            diffs = [row[first + SUFFIXES[metric]] - row[second + SUFFIXES[metric]] for row in rows]
            out.append({"pair": f"{first} - {second}", "metric": metric, **bootstrap_mean(diffs, rng, resamples)})
    return out
