"""Record the source's self-attention Q/K during inversion; inject them while denoising the edit.

Injection replaces the output of `to_q`/`to_k` of the chosen self-attention modules with the
source's Q/K of the same timestep (for both halves of the CFG batch); V comes from the current
pass. The default SDPA processor keeps running: no attention map is materialised.

Examples:
    >>> with AttentionRepository() as repository:
    ...     with record_source_qk(model, modules, repository):
    ...         zt = ddim_invert(model, z0, empty, steps=50, t_start=0.6)
    ...     with inject_source_qk(model, modules, repository):
    ...         z0_edit = ddim_sample(model, zt, target, steps=50, t_start=0.6, guidance=3.5)
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from editing.repository import AttentionRepository
from probing.hooks import AttentionCall, AttentionHooks
from probing.layers import ModuleInfo


@contextmanager
def record_source_qk(model, modules: list[ModuleInfo], repository: AttentionRepository):
    """While active, every call of `modules` stores its Q and K (batch row 0) under its timestep."""
    def store(call: AttentionCall) -> None:
        repository.put(call.timestep, call.path, call.query[:1], call.key[:1])

    with AttentionHooks(model, [m.path for m in modules], on_call=store, expected_per_forward=len(modules)):
        yield


@contextmanager
def inject_source_qk(model, modules: list[ModuleInfo], repository: AttentionRepository):
    """While active, `modules` use the source's Q and K of the matching timestep for every batch row."""
    def replace(call: AttentionCall, which: str, tensor: torch.Tensor) -> torch.Tensor:
        query, key = repository.get(call.timestep, call.path)
        source = query if which == "q" else key
        return source.to(tensor.device, tensor.dtype).expand(tensor.shape[0], *source.shape[1:])

    with AttentionHooks(model, [m.path for m in modules], replace=replace, expected_per_forward=len(modules)):
        yield
