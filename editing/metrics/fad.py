"""Frechet distance between two sets of embeddings (FAD when the embeddings are of audio clips).

Reference: the Frechet distance of Gaussians fitted to embedding sets, as in FID (Heusel et al.
2017) and FAD (Kilgour et al., "Frechet Audio Distance", Interspeech 2019); default embeddings here
are CLAP audio embeddings (as in Gui et al., "Adapting Frechet Audio Distance", ICASSP 2024).

Examples:
    >>> frechet_distance(np.random.randn(500, 8), np.random.randn(500, 8) + 1.0)     # about 8
    >>> frechet_audio_distance(real_clips, edited_clips, 16000, embed=load_clap("clap/").audio_embeddings)
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import linalg

from probing.errors import MelodiaError

Embed = Callable[[Sequence[np.ndarray], int], np.ndarray]
_COVARIANCE_OFFSET = 1e-6
_IMAGINARY_TOLERANCE = 1e-3


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance of Gaussians fitted to the rows of `x` and of `y`.

    d^2 = |mu_x - mu_y|^2 + tr(S_x + S_y - 2 (S_x S_y)^(1/2)), with sample means and covariances
    (ddof 1). If the square root is not finite, `1e-6 * I` is added to both covariances; an
    imaginary part from numerical error is dropped when the diagonal's is below 1e-3, else an error.

    Args:
        x: embeddings, shape (clips, dim), at least 2 clips.
        y: embeddings, shape (clips, dim), the same dim.

    Returns:
        The squared Frechet distance (>= 0 up to rounding); 0 for identical sets.
    """
    x, y = _rows(x, "first"), _rows(y, "second")
    if x.shape[1] != y.shape[1]:
        raise MelodiaError(f"embedding sizes differ: {x.shape[1]} and {y.shape[1]}")
    cov_x, cov_y = (np.atleast_2d(np.cov(e, rowvar=False)) for e in (x, y))
    root = linalg.sqrtm(cov_x @ cov_y)
    if not np.isfinite(root).all():
        offset = _COVARIANCE_OFFSET * np.eye(cov_x.shape[0])
        root = linalg.sqrtm((cov_x + offset) @ (cov_y + offset))
    if np.iscomplexobj(root):
        imaginary = float(np.abs(np.diagonal(root).imag).max())
        if imaginary > _IMAGINARY_TOLERANCE:
            raise MelodiaError(f"Frechet distance: the covariance square root has an imaginary part of "
                               f"{imaginary:.3g}; use more clips than embedding dimensions")
        root = root.real
    mean_gap = x.mean(axis=0) - y.mean(axis=0)
    return float(mean_gap @ mean_gap + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(root))


def _rows(embeddings: np.ndarray, name: str) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise MelodiaError(f"Frechet distance: the {name} set must be (clips, dim) with at least 2 clips, "
                           f"got shape {embeddings.shape}")
    return embeddings


def frechet_audio_distance(reference: Sequence[np.ndarray], edited: Sequence[np.ndarray], sr: int,
                           embed: Embed | None = None) -> float:
    """FAD between two sets of clips: the Frechet distance of their embeddings (lower: closer sets).

    Args:
        reference: mono clips at `sr` (e.g. the sources, or real recordings of the target).
        edited: mono clips at `sr`.
        embed: clips, sr -> (clips, dim) array; default CLAP audio embeddings of
            `laion/larger_clap_music` (`load_clap().audio_embeddings`).
    """
    if embed is None:
        from editing.metrics.clap import load_clap

        embed = load_clap().audio_embeddings
    return frechet_distance(embed(reference, sr), embed(edited, sr))
