"""`trace`: record a pipeline's attention while you call it as usual, then read it by layer name or by word.

The notebook way in (after DAAM's `trace(pipe)`): hand it the diffusers pipeline you already hold
(or a melodia model, or a model name), call the pipeline inside the block, then read the maps by
the names of the layer-spec language or as a word's heat map over the music's time x frequency
grid: the word's key columns (its tokens, from the model's own tokenizer) summed, averaged over
heads, steps and every cross-attention layer whose keys are the prompt's tokens, each layer's grid
resized to the finest one.

Examples:
    >>> with trace(pipe) as tc:
    ...     audio = pipe("a sad waltz played on the violin", num_inference_steps=10).audios[0]
    >>> tc.word_heat_map("violin").plot(audio, sr=16000)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from probing.errors import MelodiaError
from probing.layers import LayerTable
from probing.maps import Reduction
from probing.recorder import AttentionRecorder

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from probing.models.base import DiffusionModel


@dataclass(frozen=True)
class LayerMaps:
    """One module's recorded maps: (steps, queries, keys), averaged over heads, the prompt's half of CFG.

    grid: (time, freq) cells of the query axis (queries = time x freq, time-major).
    """

    name: str
    path: str
    timesteps: list[float]
    maps: np.ndarray
    grid: tuple[int, int]


@dataclass(frozen=True)
class HeatMap:
    """Where in the music a word is attended: `values` (time, freq) cells, time over the whole clip.

    >>> heat = tc.word_heat_map("violin")
    >>> heat.values.shape, heat.layers     # ((64, 8), ['cross:1', ...])
    """

    word: str
    prompt: str
    values: np.ndarray
    layers: list[str]

    def plot(self, wave: np.ndarray | None = None, sr: int | None = None, ax=None, path: str | Path | None = None):
        """The heat map over time (x) and frequency cell (y); with `wave`, over its log-mel spectrogram."""
        from probing.plots import pyplot, write_figure

        plt = pyplot()
        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(8, 3), layout="constrained")
        heat = self.values.T / max(float(self.values.max()), 1e-12)
        if wave is not None:
            import librosa

            if sr is None:
                raise MelodiaError("HeatMap.plot(wave) needs the wave's sample rate: sr=...")
            mel = librosa.power_to_db(librosa.feature.melspectrogram(y=np.asarray(wave, np.float32), sr=sr, n_mels=64))
            ax.imshow(mel, origin="lower", aspect="auto", cmap="gray", extent=[0, 1, 0, 1])
            ax.imshow(heat, origin="lower", aspect="auto", cmap="magma", alpha=0.6, extent=[0, 1, 0, 1])
        else:
            ax.imshow(heat, origin="lower", aspect="auto", cmap="magma", extent=[0, 1, 0, 1])
        ax.set_xlabel("time (fraction of the clip)")
        ax.set_ylabel("frequency (low to high)")
        ax.set_title(f"'{self.word}' in '{self.prompt}' ({len(self.layers)} layers)")
        if figure is not None and path is not None:
            write_figure(figure, path)
        return ax


class Trace:
    """What `trace` returns: a context manager that records while the pipeline runs (the last call of the block
    is kept). See the module docstring."""

    def __init__(self, model: DiffusionPipeline | DiffusionModel | str, layers: str = "cross:*",
                 reduction: Reduction = Reduction(grid=None)):
        from probing.models import adapter_for, load_model

        if isinstance(model, (str, Path)):
            self.model = load_model(model)
        else:  # a pipeline of a class melodia has no adapter for gets the generic one (tracing only)
            self.model = model if hasattr(model, "attention_modules") else adapter_for(model, generic=True)
        self.layers, self.reduction = layers, reduction
        self.prompts: list[str] = []
        self.table: LayerTable | None = None
        self.recorder: AttentionRecorder | None = None
        self._class: type | None = None
        self._first_call = None
        if getattr(self.model, "has_inputs", True):  # else the table is measured at the pipeline's first call
            self._start_recorder()

    def _start_recorder(self) -> None:
        from probing.layers import measure_layer_table

        self.table = measure_layer_table(self.model)
        self.recorder = AttentionRecorder(self.model, layers=self.table.select(self.layers), reduction=self.reduction,
                                          n_prompts=max(1, len(self.prompts)))

    def _on_first_denoiser_call(self, module, args, kwargs) -> None:
        """Generic adapter: measure the layer table with the pipeline's own inputs, then record this very call."""
        self._first_call.remove()
        self._first_call = None
        self.model.remember_inputs(args, kwargs)
        self._start_recorder()
        self.recorder.__enter__()
        self.recorder._hooks._denoiser_pre(module, args, kwargs)  # this call's timestep: its pre-hooks already ran

    # ---- recording -------------------------------------------------------------------------------
    def __enter__(self) -> Trace:
        pipeline, trace = self.model.pipeline, self
        self._class = type(pipeline)

        def call(pipe, *args, **kwargs):  # notes the prompt (every diffusers pipeline's first argument)
            prompt = kwargs.get("prompt", args[0] if args else None)
            if prompt is not None:
                trace.prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if trace.recorder is not None:
                trace.recorder.n_prompts = max(1, len(trace.prompts))
                trace.recorder.records = {path: {} for path in trace.recorder.records}  # the last call is kept
            return trace._class.__call__(pipe, *args, **kwargs)

        # the same class with a __call__ that notes the prompt: a dunder cannot be patched on the instance
        pipeline.__class__ = type(self._class.__name__, (self._class,), {"__call__": call})
        try:
            if self.recorder is not None:
                self.recorder.__enter__()
            else:
                self._first_call = self.model.denoiser.register_forward_pre_hook(self._on_first_denoiser_call,
                                                                                 with_kwargs=True)
        except BaseException:
            pipeline.__class__ = self._class
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._first_call is not None:
                self._first_call.remove()
                self._first_call = None
            if self.recorder is not None:
                self.recorder.__exit__(*exc)
        finally:
            self.model.pipeline.__class__ = self._class

    # ---- reading -------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """The recorded modules by name: "cross:14" (or "cross:14/<alias>" where a layer holds several)."""
        if self.recorder is None:
            raise MelodiaError("nothing was recorded: call the pipeline inside `with trace(...)`")
        return list(self.recorder.layer_names)

    def __getitem__(self, name: str) -> LayerMaps:
        """The maps of one recorded module by name (see `layer_names`) or module path."""
        for known, module in zip(self.layer_names, self.recorder.modules):
            if name in (known, module.path):
                timesteps, maps = self.recorder.stacked(module.path)
                if not timesteps:
                    raise MelodiaError(f"nothing was recorded for {name}: call the pipeline inside `with trace(...)`")
                rows = maps[:, -1].astype(np.float32).mean(axis=1)  # the prompt's half, heads averaged
                grid = _grid(rows.shape[1], self.recorder.reduction.pooled(module.grid))
                return LayerMaps(name, module.path, timesteps, rows, grid)
        raise MelodiaError(f"no recorded layer {name!r}; recorded: {', '.join(self.layer_names)}")

    def word_heat_map(self, word: str, layers: str | None = None) -> HeatMap:
        """The heat map of `word` (as it appears in the prompt, case-insensitive) over time x frequency.

        Raises:
            MelodiaError: nothing was recorded, the word is not in the prompt, or no recorded layer
                attends to the prompt's own tokens.
        """
        if not self.prompts or self.recorder is None:
            raise MelodiaError("nothing was recorded: call the pipeline with a prompt inside `with trace(...)`")
        if len(self.prompts) > 1:
            raise MelodiaError(f"the pipeline was called with {len(self.prompts)} prompts; trace one at a time")
        prompt = self.prompts[0]
        found = re.search(rf"\b{re.escape(word)}\b", prompt, flags=re.IGNORECASE)
        if found is None:
            raise MelodiaError(f"{word!r} is not a word of the prompt {prompt!r}")
        spans = self.model.token_spans(prompt, {"word": found.span()})
        if spans is None or spans["word"][0] < 0:
            raise MelodiaError(f"{self.model.name}: cross-attention keys are not the prompt's tokens here; "
                               "no word heat map (see docs/probing.md, word-aligned features)")
        start, stop = spans["word"]
        chosen = {m.path for m in self.table.select(layers)} if layers else None
        modules = [m for m in self.recorder.modules if m.kind == "cross" and self.model.keys_are_prompt_tokens(m)
                   and (chosen is None or m.path in chosen)]
        if not modules:
            raise MelodiaError("no recorded cross-attention layer attends to the prompt's tokens "
                               f"(recorded: {', '.join(self.layer_names)})")
        heats = []
        for module in modules:
            layer = self[module.path]  # maps (steps, queries, keys)
            heats.append(layer.maps[:, :, start:stop].sum(axis=2).mean(axis=0).reshape(layer.grid))
        finest = max((h.shape for h in heats), key=lambda s: s[0] * s[1])
        values = np.mean([_resized(h, finest) for h in heats], axis=0)
        names = dict(zip((m.path for m in self.recorder.modules), self.layer_names))  # as `tc[...]` names them
        return HeatMap(word, prompt, values, [names[m.path] for m in modules])


def _grid(queries: int, measured: tuple[int, int]) -> tuple[int, int]:
    """The (time, freq) grid of `queries` cells: the layer table's frequency cells (after the reduction's
    pooling), time from the call's length (the table was measured on the model's default clip; the
    user's call may be longer or shorter)."""
    freq = measured[1]
    return (queries // freq, freq) if queries % freq == 0 else (queries, 1)


def _resized(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-cell upsampling of a (time, freq) grid to `shape` (grids differ by whole factors)."""
    rows = np.arange(shape[0]) * values.shape[0] // shape[0]
    cols = np.arange(shape[1]) * values.shape[1] // shape[1]
    return values[np.ix_(rows, cols)]


def trace(pipe_or_model: DiffusionPipeline | DiffusionModel | str, layers: str = "cross:*",
          reduction: Reduction = Reduction(grid=None)) -> Trace:
    """Record a pipeline's attention while it runs (see the module docstring).

    Args:
        pipe_or_model: a diffusers pipeline object (its adapter is chosen by class), a melodia model,
            or a model name / folder / hub id.
        layers: a layer spec of what to record (default every cross-attention).
        reduction: how each map is reduced while recording (default: heads averaged, full grid).
    """
    return Trace(pipe_or_model, layers, reduction)
