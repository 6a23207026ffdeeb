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
from probing.layers import LayerTable, ModuleInfo, layer_names, measure_layer_table
from probing.maps import Reduction, additive_mask, attention_reduced, map_grids, reduce_call


_UNFUSED = "unfused"  # a recorded call whose map comes from a second pass over the hooked Q/K


class AttentionRecorder:
    """Records, per selected module and timestep, the reduced map of the prompts' batch rows.

    Under classifier-free guidance (denoiser batch = 2 x prompts) `Reduction.batch="cond"` keeps
    the text-conditioned half. `timesteps` limits recording to those timestep values.

    `one_pass` (default): where a recorded module calls torch's SDPA once, the recorder computes
    that attention itself, output and map from the same probabilities (float32; the output
    differs from SDPA's by float rounding, docs/probing.md), so recording costs the reduction, not a
    second attention. Calls it cannot take (differential attention, dropout, a causal mask, a
    processor without SDPA, a call whose output needs gradients) and every call of a module not
    recorded at that step keep torch's SDPA untouched; their maps come from the hooked Q/K in a
    second pass, as with `one_pass=False`.
    """

    def __init__(self, model, layers: str | Iterable[ModuleInfo] = "*", reduction: Reduction = Reduction(),
                 table: LayerTable | None = None, timesteps: Iterable[float] | None = None, n_prompts: int = 1,
                 one_pass: bool = True):
        self.model = model
        if isinstance(layers, str):
            layers = (table or measure_layer_table(model)).select(layers)
        self.modules = list(layers)
        self.reduction = reduction
        self.keep = None if timesteps is None else {float(t) for t in timesteps}
        self.n_prompts = n_prompts
        self.records: dict[str, dict[float, torch.Tensor]] = {m.path: {} for m in self.modules}
        self.one_pass_calls = 0  # recorded calls whose map came with the output (for tests and benchmarks)
        self._fused: dict[str, torch.Tensor | str] = {}  # path -> map made by `_attend` in the running call
        self._hooks = AttentionHooks(model, [m.path for m in self.modules], on_call=self._record,
                                     expected_per_forward=len(self.modules), attend=self._attend if one_pass else None)

    def _rows(self, batch: int) -> slice:
        guided = batch == 2 * self.n_prompts
        return slice(self.n_prompts, None) if guided and self.reduction.batch == "cond" else slice(None)

    def _recorded(self, call: AttentionCall) -> bool:
        return self.keep is None or call.timestep in self.keep

    def _attend(self, call: AttentionCall, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                sdpa: dict, torch_sdpa) -> torch.Tensor | None:
        """Output and map of one SDPA call in one pass; None (torch's SDPA) where that is not exact.

        Only the recorded batch rows go through the one-pass attention; the others (the unconditional
        half of a CFG batch under batch="cond") stay with torch's SDPA, faster than eager attention."""
        if not self._recorded(call):
            return None
        if call.path in self._fused:  # a second SDPA call in one module forward: map from the hooked Q/K
            self._fused[call.path] = _UNFUSED
            return None
        self._fused[call.path] = _UNFUSED
        extra = {k: v for k, v in sdpa.items() if k not in ("attn_mask", "scale", "enable_gqa")}
        if torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value)):
            return None  # gradients must flow through this attention: torch's SDPA, map from the second pass
        if (query.dim() != 4 or extra != {"dropout_p": 0.0, "is_causal": False} or call.query is None
                or call.key is None or query.shape[2] != call.query.shape[1] or key.shape[2] != call.key.shape[1]
                or self.model.head_signs(call.module) is not None):
            return None
        if sdpa.get("enable_gqa") and key.shape[1] != query.shape[1]:
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
        mask = sdpa.get("attn_mask")
        if mask is not None:
            mask = additive_mask(mask, query.dtype)
            while mask.dim() < 4:
                mask = mask.unsqueeze(0)
        scale = sdpa.get("scale") or query.shape[-1] ** -0.5
        query_grid, key_grid = map_grids(self.model, call, query.shape[2], key.shape[2])
        rows = self._rows(query.shape[0])
        rest = slice(0, rows.start or 0)  # rows is everything, or the cond half [n:] of [uncond, cond]

        def part(x: torch.Tensor | None, where: slice) -> torch.Tensor | None:
            return x if x is None or x.shape[0] == 1 else x[where]  # a batch-1 mask broadcasts

        with torch.no_grad():
            reduced, output = attention_reduced(query[rows], key[rows], scale, part(mask, rows), query_grid,
                                                key_grid, self.reduction, value=value[rows])
            if rest.stop:
                others = torch_sdpa(query[rest], key[rest], value[rest], attn_mask=part(mask, rest), scale=scale)
                output = torch.cat([others, output])
        self._fused[call.path] = reduced.cpu()
        return output

    def _record(self, call: AttentionCall) -> None:
        fused = self._fused.pop(call.path, _UNFUSED)
        if not self._recorded(call):
            return
        if isinstance(fused, torch.Tensor):
            reduced = fused
            self.one_pass_calls += 1
        else:
            with torch.no_grad():
                reduced = reduce_call(self.model, call, self.reduction, self._rows(call.query.shape[0]))
        self.records[call.path][call.timestep] = reduced.to(torch.float16)

    def __enter__(self) -> "AttentionRecorder":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def layer_names(self) -> dict[str, str]:
        """The recorded modules by the layer-spec language's names ("cross:14") -> module path."""
        return dict(zip(layer_names(self.modules), (m.path for m in self.modules)))

    def stacked(self, name: str) -> tuple[list[float], np.ndarray]:
        """(timesteps in recording order, maps (steps, batch', heads', Q', K')) of one module, by module path
        or layer name ("cross:14")."""
        path = name if name in self.records else self.layer_names.get(name)
        if path is None:
            raise KeyError(f"{name!r} was not recorded; recorded: {', '.join(self.layer_names)}")
        by_step = self.records[path]
        if not by_step:
            return [], np.zeros((0,), dtype=np.float16)
        return list(by_step), torch.stack(list(by_step.values())).numpy()
