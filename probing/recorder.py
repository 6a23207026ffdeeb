"""AttentionRecorder: one context manager that records reduced attention maps while a model runs.

Examples:
    >>> with AttentionRecorder(model, layers="cross:*") as recorder:
    ...     model.generate("a sad waltz on violin", steps=10, guidance=3.0, seed=0)
    >>> timesteps, maps = recorder.stacked("up_blocks.0.attentions.0.transformer_blocks.0.attn2")
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from probing.hooks import AttentionCall, AttentionHooks
from probing.layers import LayerTable, ModuleInfo, measure_layer_table
from probing.maps import Reduction, reduce_call


class AttentionRecorder:
    """Records, per selected module and timestep, the reduced map of the prompts' batch rows.

    Under classifier-free guidance (denoiser batch = 2 x prompts) `Reduction.batch="cond"` keeps
    the text-conditioned half. `timesteps` limits recording to those timestep values.
    """

    def __init__(self, model, layers: str | Iterable[ModuleInfo] = "*", reduction: Reduction = Reduction(),
                 table: LayerTable | None = None, timesteps: Iterable[float] | None = None, n_prompts: int = 1):
        self.model = model
        if isinstance(layers, str):
            layers = (table or measure_layer_table(model)).select(layers)
        self.modules = list(layers)
        self.reduction = reduction
        self.keep = None if timesteps is None else {float(t) for t in timesteps}
        self.n_prompts = n_prompts
        self.records: dict[str, dict[float, torch.Tensor]] = {m.path: {} for m in self.modules}
        self._hooks = AttentionHooks(model, [m.path for m in self.modules], on_call=self._record,
                                     expected_per_forward=len(self.modules))

    def _rows(self, batch: int) -> slice:
        guided = batch == 2 * self.n_prompts
        return slice(self.n_prompts, None) if guided and self.reduction.batch == "cond" else slice(None)

    def _record(self, call: AttentionCall) -> None:
        if self.keep is not None and call.timestep not in self.keep:
            return
        with torch.no_grad():
            reduced = reduce_call(self.model, call, self.reduction, self._rows(call.query.shape[0]))
        self.records[call.path][call.timestep] = reduced.to(torch.float16)

    def __enter__(self) -> "AttentionRecorder":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def stacked(self, path: str) -> tuple[list[float], np.ndarray]:
        """(timesteps in recording order, maps (steps, batch', heads', Q', K')) of one module."""
        by_step = self.records[path]
        if not by_step:
            return [], np.zeros((0,), dtype=np.float16)
        return list(by_step), torch.stack(list(by_step.values())).numpy()
