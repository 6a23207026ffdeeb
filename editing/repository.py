"""AttentionRepository: the source's self-attention Q and K per (timestep, module), in memory or on disk.

Filled during DDIM inversion of the source, read during the edit's denoising at the matching
timestep. Only Q and K of the chosen modules are kept (never full maps), for the batch row of the
source (batch 1). Past `memory_budget_mb` further steps spill to safetensors files in a temporary
folder, removed when the repository is closed.

Examples:
    >>> repository = AttentionRepository(memory_budget_mb=512)
    >>> repository.put(901.0, "up_blocks.0.attentions.0.transformer_blocks.0.attn1", q, k)
    >>> q, k = repository.get(901.0, "up_blocks.0.attentions.0.transformer_blocks.0.attn1")
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def predicted_bytes(model, modules, steps: int) -> int:
    """Repository size for `steps` inverted steps of `modules` (probing.layers.ModuleInfo): Q and K, batch 1."""
    attention = model.attention_modules()

    def width(path: str, which: str) -> int:  # channels of the Q or K tap(s): fused projections hold a slice
        taps = [t for t in model.qk_taps(attention[path]) if t.which == which]
        return sum(len(range(t.projection.out_features)[t.channels or slice(None)]) for t in taps)

    per_step = sum(m.query_tokens * width(m.path, "q") + m.key_tokens * width(m.path, "k") for m in modules)
    return per_step * steps * torch.finfo(model.dtype).bits // 8


class AttentionRepository:
    """Source Q/K keyed by (timestep, module path)."""

    def __init__(self, memory_budget_mb: float = 1024.0):
        self.budget = int(memory_budget_mb * 2**20)
        self.memory: dict[tuple[float, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.on_disk: dict[float, Path] = {}
        self.memory_bytes = 0
        self._spill: Path | None = None
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_step: float | None = None

    def put(self, timestep: float, path: str, query: torch.Tensor, key: torch.Tensor) -> None:
        """Store a copy of the source Q/K of `path` at `timestep` (in memory while the budget allows)."""
        size = (query.numel() + key.numel()) * query.element_size()
        replaced = self.memory.pop((timestep, path), None)  # a refined inversion step records again: last wins
        if replaced is not None:
            self.memory_bytes -= sum(t.numel() * t.element_size() for t in replaced)
        if self.memory_bytes + size <= self.budget and not self.on_disk:
            self.memory[(timestep, path)] = (query.detach().clone(), key.detach().clone())
            self.memory_bytes += size
            return
        if self._pending_step is not None and self._pending_step != timestep:
            self._flush()
        self._pending_step = timestep
        self._pending[f"{path}|q"] = query.detach().contiguous().clone()
        self._pending[f"{path}|k"] = key.detach().contiguous().clone()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="melodia-repository-"))
        file = self._spill / f"step_{len(self.on_disk):04d}.safetensors"
        save_file(self._pending, file)
        self.on_disk[self._pending_step] = file
        self._pending, self._pending_step = {}, None

    def get(self, timestep: float, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The source (Q, K) of `path` at `timestep`; KeyError naming the mismatch if absent."""
        if (timestep, path) in self.memory:
            return self.memory[(timestep, path)]
        if self._pending_step == timestep:
            return self._pending[f"{path}|q"], self._pending[f"{path}|k"]
        if timestep not in self.on_disk:
            raise KeyError(f"no source Q/K for timestep {timestep} of {path}: was the source inverted with the "
                           "same steps and t_start?")
        step = load_file(self.on_disk[timestep])
        return step[f"{path}|q"], step[f"{path}|k"]

    def timesteps(self) -> list[float]:
        """Timesteps held, ascending."""
        return sorted({t for t, _ in self.memory} | set(self.on_disk) | (
            {self._pending_step} if self._pending_step is not None else set()))

    @property
    def nbytes(self) -> int:
        """Bytes held: memory plus spilled files."""
        pending = sum(t.numel() * t.element_size() for t in self._pending.values())
        return self.memory_bytes + pending + sum(f.stat().st_size for f in self.on_disk.values())

    def close(self) -> None:
        """Drop everything, including the spill folder."""
        self.memory.clear()
        self._pending.clear()
        self.on_disk.clear()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __enter__(self) -> "AttentionRepository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
