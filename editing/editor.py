"""Melodia: edit music with a text prompt while the source's structure stays (training-free).

The source is DDIM-inverted with the empty prompt to `t_start` while the chosen self-attention
layers' Q/K are stored; the edit denoises from there with the target prompt only, the chosen
layers using the source's Q/K of the same timestep and their own V. `method="ddim"` is the same
call without injection (inversion + regeneration), the baseline every edit is compared with.

Examples:
    >>> editor = Melodia(load_model("testbed"))
    >>> result = editor.edit(wave, "a happy waltz played on the violin", layers="self:8-14", t_start=0.6)
    >>> result.audio.shape, result.sample_rate
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from editing.audio import validate_wave
from editing.injection import inject_source_qk, record_source_qk
from editing.inversion import ddim_invert, ddim_sample, inverted_steps
from editing.repository import AttentionRepository, predicted_bytes
from probing.errors import MelodiaError
from probing.layers import LayerTable, ModuleInfo, measure_layer_table

METHODS = ("melodia", "ddim")


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


@dataclass
class EditResult:
    """The edited audio with the settings, the injected modules and timings (seconds)."""

    audio: np.ndarray
    sample_rate: int
    settings: EditSettings
    injected: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    repository_bytes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready settings, injected modules, timings, repository sizes and package versions."""
        return {"versions": _versions(), "settings": asdict(self.settings), "sample_rate": self.sample_rate, "injected_modules": self.injected,
                "timings_s": self.timings, "repository_bytes": self.repository_bytes}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("melodia", "torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found


class Melodia:
    """The editor for one model (any adapter: testbed, AudioLDM 2, ...)."""

    def __init__(self, model, memory_budget_mb: float = 1024.0):
        if not hasattr(model.scheduler, "alphas_cumprod"):
            raise MelodiaError(f"{model.name}: its {type(model.scheduler).__name__} is not a DDPM/DDIM-family "
                               "scheduler, so DDIM inversion does not apply (flow-matching and k-diffusion "
                               "models are not supported by the editor yet)")
        self.model = model
        self.memory_budget_mb = memory_budget_mb
        self._table: LayerTable | None = None

    @property
    def table(self) -> LayerTable:
        if self._table is None:
            self._table = measure_layer_table(self.model)
        return self._table

    def injected_modules(self, layers: str | None) -> list[ModuleInfo]:
        """Self-attention modules a layer spec selects ('auto': the family's documented default)."""
        if layers in (None, "none"):
            return []
        spec = self.model.default_edit_layers if layers == "auto" else layers
        selected = self.table.select(spec)
        modules = [m for m in selected if m.kind == "self"]
        if selected and not modules:
            raise MelodiaError(f"layer spec {spec!r} selects only cross-attention; Melodia injects self-attention "
                               "(e.g. self:8-14)")
        return modules

    def _window(self, wave: np.ndarray) -> tuple[np.ndarray, int]:
        window = getattr(self.model, "clip_samples", None)
        if window is None:
            return wave, len(wave)
        if len(wave) > window:
            raise MelodiaError(f"source is {len(wave) / self.model.sample_rate:.2f} s, longer than the model's "
                               f"{window / self.model.sample_rate:.2f} s window")
        return np.pad(wave, (0, window - len(wave))), len(wave)

    def edit(self, wave: np.ndarray, target_prompt: str, method: str = "melodia", layers: str | None = "auto",
             t_start: float = 0.6, steps: int = 50, guidance: float = 3.5, seed: int = 0,
             progress: bool = False) -> EditResult:
        """Edit mono `wave` (at the model's rate) towards `target_prompt`."""
        if method not in METHODS:
            raise MelodiaError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        settings = EditSettings(target_prompt, method, layers if method == "melodia" else "none", t_start, steps,
                                guidance, seed)
        inverted_steps(steps, t_start)  # validates t_start before any work
        modules = self.injected_modules(settings.layers)
        wave = validate_wave(wave, self.model.sample_rate, name="source")
        padded, length = self._window(wave)
        torch.manual_seed(seed)
        timings, start = {}, time.perf_counter()
        with torch.no_grad():
            z0 = self.model.encode_audio(padded)
            empty = self.model.encode_prompt([""], guidance=1.0)
            target = self.model.encode_prompt([target_prompt], guidance=guidance)
        timings["encode"] = time.perf_counter() - start
        with AttentionRepository(self.memory_budget_mb) as repository:
            start = time.perf_counter()
            with record_source_qk(self.model, modules, repository):
                zt = ddim_invert(self.model, z0, empty, steps, t_start, progress=progress)
            timings["invert"] = time.perf_counter() - start
            start = time.perf_counter()
            with inject_source_qk(self.model, modules, repository):
                z_edit = ddim_sample(self.model, zt, target, steps, t_start, guidance, progress=progress)
            timings["denoise"] = time.perf_counter() - start
            sizes = {"predicted": predicted_bytes(self.model, modules, inverted_steps(steps, t_start)),
                     "measured": repository.nbytes}
        start = time.perf_counter()
        audio = self.model.decode(z_edit)[:length]
        timings["decode"] = time.perf_counter() - start
        return EditResult(audio, self.model.sample_rate, settings, [m.path for m in modules], timings, sizes)
