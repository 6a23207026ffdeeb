"""Melodia: edit music with a text prompt while the source's structure stays (training-free).

The source is inverted with the empty prompt to `t_start` (DDIM inversion on DDPM-family models,
the Euler ODE inversion of `editing.flow` on flow-matching models) while the chosen self-attention
layers' Q/K are stored; the edit denoises from there with the target prompt only, the chosen
layers using the source's Q/K of the same timestep and their own V. `method="inversion"` is the
same call without injection (inversion + regeneration; `ddim` is its name on DDIM models), the
baseline every edit is compared with; `sdedit` and, by family, `ddpm-friendly` (`editing.baselines`)
or `flowedit` (`editing.flow`) are the others. A source longer than the model's window is edited
in overlapping windows joined by crossfades (`editing.windows`).

Examples:
    >>> editor = Melodia(load_model("testbed"))
    >>> result = editor.edit(wave, "a happy waltz played on the violin", layers="self:8-14", t_start=0.6)
    >>> result.audio.shape, result.sample_rate
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch

from editing.audio import validate_wave
from editing.baselines import NoiseMaps, ddpm_noise_maps, ddpm_sample, sdedit_noise
from editing.flow import flow_sdedit_noise, flowedit, ode_samplers
from editing.injection import inject_source_qk, record_source_qk
from editing.inversion import inverted_steps, progress_label
from editing.methods import (INVERTING_METHODS, MAX_SOURCE_SECONDS, METHODS, METHODS_BY_PREDICTION, ODE_PREDICTIONS,
                             SOURCE_PROMPT_METHODS, WINDOW_OVERLAP, check_refinements)
from editing.repository import AttentionRepository, predicted_bytes
from editing.windows import join_windows, seam_flux_ratio, seam_positions, window_spans
from probing.errors import MelodiaError
from probing.layers import LayerTable, ModuleInfo, layer_names, measure_layer_table
from probing.profile import LayerProfile
from probing.models.base import Conditioning


@dataclass(frozen=True)
class EditSettings:
    """Everything that determines an edit (written to the JSON sidecar)."""

    target_prompt: str
    method: str = "melodia"
    layers: str = "auto"
    t_start: float = 0.6
    steps: int = 50
    guidance: float = 3.5
    seed: int = 0
    windows: bool = True
    source_prompt: str = ""  # ddpm-friendly / flowedit only: the prompt (and guidance) the source is seen with
    source_guidance: float = 1.0
    # fixed-point iterations per inversion step (melodia, inversion/ddim); None: the model's (0 = plain DDIM)
    inversion_refinements: int | None = None


@dataclass
class EditResult:
    """The edited audio with the settings, the injected band (spec, names, module paths), timings (seconds)
    and the seam report.

    `seams`: sample positions of the crossfade centres (empty for a source within one window);
    `seam_flux_ratio` and `source_seam_flux_ratio`: `editing.windows.seam_flux_ratio` of the edit
    and of the source at the same crossfades (None without seams).
    """

    audio: np.ndarray
    sample_rate: int
    settings: EditSettings
    injected: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    repository_bytes: dict[str, int] = field(default_factory=dict)
    seams: list[int] = field(default_factory=list)
    seam_flux_ratio: float | None = None
    source_seam_flux_ratio: float | None = None
    layers: str = "none"  # the injected band as a layer spec ("auto" resolved, e.g. "self:8-14")
    injected_layers: list[str] = field(default_factory=list)  # the injected modules by name ("self:8", ...)
    inversion_refinements: int | None = None  # fixed-point iterations per inversion step (None: not inverted)

    def summary(self) -> dict:
        """JSON-ready settings, injected modules, timings, repository sizes, seam report and package versions."""
        return {"versions": _versions(), "settings": asdict(self.settings), "sample_rate": self.sample_rate,
                "layers": self.layers, "injected_layers": self.injected_layers,
                "inversion_refinements": self.inversion_refinements,
                "injected_modules": self.injected, "timings_s": self.timings,
                "repository_bytes": self.repository_bytes,
                "seams": {"positions": self.seams, "flux_ratio": self.seam_flux_ratio,
                          "source_flux_ratio": self.source_seam_flux_ratio}}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("melodia", "torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


@contextmanager
def _timed(timings: dict[str, float], phase: str):
    """Add the seconds the block takes to `timings[phase]` (phases recur once per window)."""
    start = time.perf_counter()
    yield
    timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


class Melodia:
    """The editor for one model (any adapter: testbed, AudioLDM 2, ...)."""

    def __init__(self, model, memory_budget_mb: float = 1024.0, profile: LayerProfile | None = None,
                 require_baseline: bool = True):
        self.flow = model.prediction in ODE_PREDICTIONS  # Euler over sigmas (editing.flow), else DDIM
        if not self.flow and not hasattr(model.scheduler, "alphas_cumprod"):
            raise MelodiaError(f"{model.name}: its {type(model.scheduler).__name__} is neither a DDPM/DDIM-family "
                               "nor a flow-matching scheduler, so neither DDIM nor flow inversion applies "
                               "(k-diffusion samplers are not supported by the editor)")
        self.model = model
        self.memory_budget_mb = memory_budget_mb
        self.profile = profile
        self.require_baseline = require_baseline  # see LayerProfile.select_edit_layers
        self._table: LayerTable | None = None

    @property
    def table(self) -> LayerTable:
        if self._table is None:
            self._table = measure_layer_table(self.model)
        return self._table

    def auto_layers(self) -> str:
        """What layers="auto" means: the profile's selection, else the family's documented default."""
        if self.profile is None:
            return self.model.default_edit_layers
        if self.profile.n_layers != self.table.n_layers:
            raise MelodiaError(f"the layer profile is of {self.profile.model!r} with {self.profile.n_layers} layers, "
                               f"but {self.model.name} has {self.table.n_layers}; probe this model's captures")
        return self.profile.select_edit_layers(require_baseline=self.require_baseline).spec

    def injected_modules(self, layers: str | None) -> list[ModuleInfo]:
        """Self-attention modules a layer spec selects ('auto': see `auto_layers`)."""
        if layers in (None, "none"):
            return []
        spec = self.auto_layers() if layers == "auto" else layers
        selected = self.table.select(spec)
        modules = [m for m in selected if m.kind == "self"]
        if selected and not modules:
            raise MelodiaError(f"layer spec {spec!r} selects only cross-attention; Melodia injects self-attention "
                               "(e.g. self:8-14)")
        return modules

    def _spans(self, length: int, windows: bool) -> list[tuple[int, int]]:
        """The windows a `length`-sample source is edited in (one span when it fits the model's window)."""
        window = getattr(self.model, "clip_samples", None)
        if window is None or length <= window:
            return [(0, length)]
        if not windows:
            rate = self.model.sample_rate
            raise MelodiaError(f"source is {length / rate:.2f} s, longer than the model's {window / rate:.2f} s "
                               "window, and windowed editing is off; allow it (windows=True, CLI: without "
                               "--no-windows) or cut the source")
        return window_spans(length, window, round(window * WINDOW_OVERLAP))

    def _pad(self, wave: np.ndarray) -> np.ndarray:
        window = getattr(self.model, "clip_samples", None)
        return wave if window is None else np.pad(wave, (0, window - len(wave)))

    def edit(self, wave: np.ndarray, target: str | EditSettings | None = None, *, progress: bool = False,
             **settings) -> EditResult:
        """Edit mono `wave` (at the model's rate) towards `target`: a prompt with `EditSettings` fields as
        keywords, or an `EditSettings` (keywords then override its fields). The method is one of METHODS
        that applies to the model (METHODS_BY_PREDICTION).

        A source longer than the model's window is edited in windows overlapping by WINDOW_OVERLAP,
        each with the same settings and seed, joined by crossfades; `windows=False` refuses it instead.
        `source_prompt` / `source_guidance` describe the source for ddpm-friendly's noise extraction
        (Manor & Michaeli) and FlowEdit's source velocity; Melodia and the other methods never need
        a source description.

        Examples:
            >>> editor.edit(piano, "a violin melody", t_start=0.5).audio
            >>> settings = EditSettings("a violin melody", layers="self:8-14", steps=25)
            >>> editor.edit(piano, settings)                      # the same settings object the CLI and bench use
        """
        unknown = sorted(set(settings) - {f.name for f in fields(EditSettings)})
        if unknown:
            raise TypeError(f"edit() got unknown settings {unknown}; EditSettings has "
                            f"{', '.join(f.name for f in fields(EditSettings))}")
        if target is None:
            if "target_prompt" not in settings:
                raise TypeError("edit() needs a target: a prompt, an EditSettings, or target_prompt=")
            target = settings.pop("target_prompt")
        if not isinstance(target, (str, EditSettings)):
            raise TypeError(f"edit() target must be a prompt (str) or an EditSettings, not {type(target).__name__}")
        base = target if isinstance(target, EditSettings) else EditSettings(target)
        chosen = replace(base, **settings)
        return self._edit(wave, chosen, progress)

    def _edit(self, wave: np.ndarray, chosen: EditSettings, progress: bool) -> EditResult:
        method, layers, t_start, steps = chosen.method, chosen.layers, chosen.t_start, chosen.steps
        windows, source_prompt, source_guidance = chosen.windows, chosen.source_prompt, chosen.source_guidance
        if method not in METHODS:
            raise MelodiaError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        runs = METHODS_BY_PREDICTION[self.model.prediction]
        if method not in runs:
            kinds = {"flow": "a flow-matching", "edm": "an EDM (k-diffusion)"}
            kind = kinds.get(self.model.prediction, "a DDPM-family")
            raise MelodiaError(f"method {method!r} does not apply to {self.model.name} ({kind} model); "
                               f"choose one of {', '.join(runs)}")
        if method not in SOURCE_PROMPT_METHODS and (source_prompt or source_guidance != 1.0):
            raise MelodiaError(f"a source prompt / source guidance is used by {' and '.join(SOURCE_PROMPT_METHODS)} "
                               f"only, not by {method}")
        settings = replace(chosen, layers=layers if method == "melodia" else "none")
        refine = self._refinements(chosen)
        run = replace(settings, inversion_refinements=refine)  # as given in the result; resolved beside it
        inverted_steps(steps, t_start)  # validates t_start before any work
        resolved = self.auto_layers() if settings.layers == "auto" else settings.layers  # the profile asked once
        modules = self.injected_modules(resolved)
        wave = validate_wave(wave, self.model.sample_rate, name="source", max_seconds=MAX_SOURCE_SECONDS)
        spans = self._spans(len(wave), windows)
        timings: dict[str, float] = {}
        with _timed(timings, "encode"), torch.no_grad():
            source = self.model.encode_prompt([source_prompt], guidance=source_guidance)
            target = self.model.encode_prompt([chosen.target_prompt], guidance=chosen.guidance)
        edited = []
        label = f"{method} {resolved}" if method == "melodia" else method
        for index, (a, b) in enumerate(spans):
            with progress_label(label + (f", window {index + 1}/{len(spans)}" if len(spans) > 1 else "")):
                edited.append(self._edit_window(wave[a:b], run, modules, source, target, timings, progress))
        audio = join_windows([piece for piece, _ in edited], spans)
        sizes = {"predicted": predicted_bytes(self.model, modules, inverted_steps(steps, t_start)),
                 "measured": max(measured for _, measured in edited)}  # per window: one repository at a time
        rate = self.model.sample_rate
        return EditResult(audio, rate, settings, [m.path for m in modules], timings, sizes, seam_positions(spans),
                          seam_flux_ratio(audio, rate, spans), seam_flux_ratio(wave, rate, spans),
                          resolved if modules else "none", layer_names(modules), refine)

    def _edit_window(self, wave: np.ndarray, settings: EditSettings, modules: list[ModuleInfo], source: Conditioning,
                     target: Conditioning, timings: dict[str, float], progress: bool) -> tuple[np.ndarray, int]:
        """Edit one window (padded to the model's window, cut back): the audio and the repository's bytes."""
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        with _timed(timings, "encode"), torch.no_grad():
            z0 = self.model.encode_audio(self._pad(wave))
        with AttentionRepository(self.memory_budget_mb) as repository:
            with _timed(timings, "invert"):
                start = self._invert(settings, z0, source, modules, repository, generator, progress)
            with _timed(timings, "denoise"):
                z_edit = self._denoise(settings, start, source, target, modules, repository, generator, progress)
            measured = repository.nbytes
        with _timed(timings, "decode"):
            audio = self.model.decode(z_edit)[: len(wave)]
        return audio, measured

    def _refinements(self, s: EditSettings) -> int | None:
        """The inversion's fixed-point iterations per step for `s` (the model's by default; None: no inversion)."""
        check_refinements(s.method, s.inversion_refinements)
        if s.method not in INVERTING_METHODS:
            return None
        return self.model.inversion_refinements if s.inversion_refinements is None else s.inversion_refinements

    def _invert(self, s: EditSettings, z0: torch.Tensor, source: Conditioning, modules: list[ModuleInfo],
                repository: AttentionRepository, generator: torch.Generator,
                progress: bool) -> torch.Tensor | NoiseMaps:
        """The source latent -> where `method` starts denoising (a latent, or NoiseMaps for ddpm-friendly)."""
        if s.method == "sdedit":
            noise = flow_sdedit_noise if self.flow else sdedit_noise
            return noise(self.model, z0, s.steps, s.t_start, generator)
        if s.method == "ddpm-friendly":
            return ddpm_noise_maps(self.model, z0, source, s.steps, s.t_start, generator, s.source_guidance,
                                   progress=progress)
        if s.method == "flowedit":  # inversion-free: it starts from the source latent itself
            return z0
        invert, _ = ode_samplers(self.model)
        with record_source_qk(self.model, modules, repository):  # source is the empty prompt here
            return invert(self.model, z0, source, s.steps, s.t_start, progress=progress, refine=s.inversion_refinements)

    def _denoise(self, s: EditSettings, start: torch.Tensor | NoiseMaps, source: Conditioning, target: Conditioning,
                 modules: list[ModuleInfo], repository: AttentionRepository, generator: torch.Generator,
                 progress: bool) -> torch.Tensor:
        """Denoise from `start` with the target prompt (melodia: injecting the recorded Q/K)."""
        if s.method == "ddpm-friendly":
            return ddpm_sample(self.model, start, target, s.steps, s.t_start, s.guidance, progress=progress)
        if s.method == "flowedit":
            return flowedit(self.model, start, source, target, s.steps, s.t_start, s.guidance, s.source_guidance,
                            generator, progress)
        _, sample = ode_samplers(self.model)
        with inject_source_qk(self.model, modules, repository):
            return sample(self.model, start, target, s.steps, s.t_start, s.guidance, progress=progress)
