"""ASB and AMB: the Melodia paper's balance scores, comparing several edit methods at once.

Reference: Melodia (AAAI 2026, arXiv 2511.08252). ASB (adherence-structure balance) is the harmonic
mean of CLAP and LPAPS, AMB (adherence-musicality balance) the harmonic mean of CLAP and Chroma.
The paper summary does not state the normalisation; min-max across the compared methods (the best
method 1, the worst 0; LPAPS reversed, lower is better) reproduces every ASB of its layer ablation
to two decimals (tests/test_metrics.py), which ratio-to-best or raw values cannot (they never give
the table's zeros). The scores are relative: adding a method to the table changes the others.

Examples:
    >>> adherence_structure_balance(clap=[0.34, 0.34, 0.35, 0.42, 0.39], lpaps=[4.39, 2.65, 2.96, 3.49, 3.93]).round(3)
    array([0.   , 0.   , 0.217, 0.682, 0.372])
    >>> adherence_musicality_balance(clap=[0.34, 0.42], chroma=[0.5, 0.7])
    array([0., 1.])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from probing.errors import MelodiaError


def min_max_normalise(values: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Rescale one metric across methods to [0, 1]: the best method 1, the worst 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.isfinite(values).all():
        raise MelodiaError(f"balance scores compare at least 2 methods with finite values, got {values.tolist()}")
    spread = values.max() - values.min()
    if spread == 0:
        raise MelodiaError("balance scores need methods that differ: every method has the same value")
    scaled = (values - values.min()) / spread
    return scaled if higher_is_better else 1 - scaled


def harmonic_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise 2ab / (a + b) of non-negative arrays, 0 where both are 0."""
    total = a + b
    return np.divide(2 * a * b, total, out=np.zeros_like(total), where=total > 0)


def adherence_structure_balance(clap: Sequence[float], lpaps: Sequence[float]) -> np.ndarray:
    """ASB per method: harmonic mean of min-max normalised CLAP (higher better) and LPAPS (lower better).

    Args:
        clap: one CLAP score per method (mean over the benchmark's edits).
        lpaps: one LPAPS distance per method, same order.

    Returns:
        One score per method in [0, 1]; 1 only for a method best at both.
    """
    _same_length(clap, lpaps)
    return harmonic_mean(min_max_normalise(clap), min_max_normalise(lpaps, higher_is_better=False))


def adherence_musicality_balance(clap: Sequence[float], chroma: Sequence[float]) -> np.ndarray:
    """AMB per method: harmonic mean of min-max normalised CLAP and Chroma similarity (both higher better)."""
    _same_length(clap, chroma)
    return harmonic_mean(min_max_normalise(clap), min_max_normalise(chroma))


def _same_length(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise MelodiaError(f"balance scores need one value per method in both lists: got {len(a)} and {len(b)}")
