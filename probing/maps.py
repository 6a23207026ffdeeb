"""Attention probabilities from hooked Q/K, and the reductions that keep captures small.

Maps are computed in query chunks within a memory budget; keys are pooled inside each chunk,
queries at the end, so the full (heads x N x N) map of a large layer never exists at once.
Shapes: self maps reduce to (batch, heads', Q', Q'), cross maps to (batch, heads', Q', text tokens),
where Q' is the query grid (time x freq) average-pooled to at most `Reduction.grid` and a
self map's key grid is sum-pooled the same way (each row still sums to 1).

Examples:
    >>> reduction = Reduction(heads="mean", grid=(16, 4))
    >>> reduced = reduce_call(model, call, reduction)      # call: a probing.hooks.AttentionCall
    >>> reduced.shape                                       # (batch, 1, Q', K')
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from probing.hooks import AttentionCall


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An attention mask as SDPA adds it to the logits: a boolean mask (True = attend) becomes 0 / -inf.

    A mask that is already additive (floating point) is returned as it is.

        >>> additive_mask(torch.tensor([True, False]))
        tensor([0., -inf])
    """
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


@dataclass(frozen=True)
class Reduction:
    """How a captured map is reduced on the fly (recorded in the store's attributes).

    heads: "mean" over heads, or "all" heads kept.
    grid: the (time, freq) query/key grid is average-pooled to at most this size; None keeps it.
    batch: "cond" keeps the text-conditioned half of a CFG batch, "both" keeps [uncond, cond].
    memory_mb: budget for one chunk of attention logits. Cache-sized chunks are also the fastest:
        a 1024-token, 8-head map takes 29 ms in 1 MB chunks and 137 ms in one 32 MB chunk (1 thread).
    """

    heads: str = "mean"
    grid: tuple[int, int] | None = (16, 4)
    batch: str = "cond"
    memory_mb: float = 2.0

    def __post_init__(self):
        if self.heads not in ("mean", "all"):
            raise ValueError(f"heads must be 'mean' or 'all', got {self.heads!r}")
        if self.batch not in ("cond", "both"):
            raise ValueError(f"batch must be 'cond' or 'both', got {self.batch!r}")

    def to_json(self) -> dict:
        return asdict(self)

    def pooled(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Size of `grid` after pooling."""
        if self.grid is None:
            return grid
        return (min(grid[0], self.grid[0]), min(grid[1], self.grid[1]))


def _pool_grid(x: torch.Tensor, grid: tuple[int, int], out: tuple[int, int], keep_mass: bool) -> torch.Tensor:
    """Pool the last axis of `x` (length grid[0]*grid[1], row-major) to out[0]*out[1].

    keep_mass: scale the average to a sum over each window (key axis: rows keep summing to 1).
    """
    if tuple(grid) == tuple(out):
        return x
    lead = x.shape[:-1]
    pooled = F.adaptive_avg_pool2d(x.reshape(-1, *grid), out).reshape(*lead, out[0] * out[1])
    return pooled * (grid[0] * grid[1] / (out[0] * out[1])) if keep_mass else pooled


def attention_probs_reduced(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None,
                            query_grid: tuple[int, int], key_grid: tuple[int, int] | None,
                            reduction: Reduction, head_signs: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale + mask), reduced; Q/K are (B, H, N, d) and (B, H, M, d).

    key_grid None means keys are text tokens (not pooled). head_signs (H,) of +1/-1 folds the
    heads pairwise into H/2 differential maps, sum_i sign_i * softmax_i, first half with second
    half (a differential map's rows sum to 0). Returns float32 (B, H', Q', K').
    """
    return attention_reduced(query, key, scale, mask, query_grid, key_grid, reduction, head_signs)[0]


def attention_reduced(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None,
                      query_grid: tuple[int, int], key_grid: tuple[int, int] | None, reduction: Reduction,
                      head_signs: torch.Tensor | None = None, value: torch.Tensor | None = None,
                      rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(reduced map of batch `rows`, attention output or None): one pass over the probabilities.

    With `value` (B, H, M, dv) the output softmax(Q K^T * scale + mask) V of every batch row is made
    from the same float32 probabilities as the map, chunk by chunk, and returned in `value`'s dtype:
    recording then costs the reduction, not a second attention. Shapes as `attention_probs_reduced`.
    """
    batch, heads, n_query, _ = query.shape
    n_key = key.shape[2]
    rows_per_chunk = max(1, int(reduction.memory_mb * 2**20) // (4 * batch * heads * n_key))
    key_out = reduction.pooled(key_grid) if key_grid is not None else None
    keys = key.float().transpose(-1, -2)
    values = value.float() if value is not None else None
    chunks, outputs = [], []
    for start in range(0, n_query, rows_per_chunk):
        stop = start + rows_per_chunk
        if values is None:  # the map's rows only
            logits = query[rows, :, start:stop].float() @ keys[rows] * scale
            chunk_mask = mask if mask is None or mask.shape[0] == 1 else mask[rows]  # batch 1: broadcast
        else:  # every row: the output needs them all
            logits = query[:, :, start:stop].float() @ keys * scale
            chunk_mask = mask
        if chunk_mask is not None:
            logits = logits + (chunk_mask if chunk_mask.shape[-2] == 1 else chunk_mask[:, :, start:stop]).float()
        probs = logits.softmax(dim=-1)
        if chunk_mask is not None:  # a row whose every key is masked: zeros, as torch's SDPA gives, not NaN
            probs = probs.nan_to_num_(0.0)
        if values is not None:
            outputs.append(probs @ values)
            probs = probs[rows]
        if head_signs is not None:
            signed = probs * head_signs.to(probs).view(1, -1, 1, 1)
            probs = signed.unflatten(1, (2, -1)).sum(dim=1)
        if reduction.heads == "mean":
            probs = probs.mean(dim=1, keepdim=True)
        if key_grid is not None:
            probs = _pool_grid(probs, key_grid, key_out, keep_mass=True)
        chunks.append(probs)
    probs = torch.cat(chunks, dim=2)  # (B', H', N, K')
    query_out = reduction.pooled(query_grid)
    reduced = _pool_grid(probs.transpose(-1, -2), query_grid, query_out, keep_mass=False).transpose(-1, -2)
    output = torch.cat(outputs, dim=2).to(value.dtype) if value is not None else None
    return reduced, output


def map_grids(model, call: AttentionCall, n_query: int, n_key: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(query grid, key grid or None for text keys) of one call's map with these token counts."""
    query_grid = model.token_grid(n_query, call.latent_hw)
    if call.kind != "self":
        return query_grid, None
    return query_grid, query_grid if n_key == n_query else model.token_grid(n_key, call.latent_hw)


def reduce_call(model, call: AttentionCall, reduction: Reduction, rows: slice = slice(None)) -> torch.Tensor:
    """The reduced attention map of one hooked call for batch `rows`, (B', H', Q', K'), float32 on the CPU."""
    query, key = model.heads_qk(call.module, call.query, call.key, call.call_kwargs)
    mask = model.map_mask(call.module, call.call_kwargs, query.shape[2], key.shape[2], query.shape[0])
    query, key = query[rows], key[rows]
    mask = mask[rows] if mask is not None else None
    query_grid, key_grid = map_grids(model, call, query.shape[2], key.shape[2])
    scale = getattr(call.module, "scale", getattr(call.module, "scaling", query.shape[-1] ** -0.5))
    return attention_probs_reduced(query, key, scale, mask, query_grid, key_grid, reduction,
                                   model.head_signs(call.module)).cpu()
