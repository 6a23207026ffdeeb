"""Long audio: overlapping windows, a power-preserving crossfade to join them, and a seam report.

A source longer than the model's window is cut into windows that overlap by `overlap` samples
(the last one may be shorter), each is edited alone, and the edits are joined with a raised-cosine
crossfade scaled for the correlation of the two pieces in their overlap: for identical pieces the
weights sum to 1 (joining the unedited windows gives the source back exactly); for uncorrelated
ones (separately decoded windows rarely share their phase) they are equal-power, so the level does
not dip by 3 dB mid-seam. `seam_flux_ratio` says whether the joins show: the mean log-mel spectral
flux of the frames inside the crossfades over the mean flux of all other frames (about 1: no seam).

Examples:
    >>> spans = window_spans(len(wave), window=65536, overlap=16384)   # [(0, 65536), (49152, 114688), ...]
    >>> joined = join_windows([wave[a:b] for a, b in spans], spans)    # == wave
    >>> seam_flux_ratio(joined, 16000, spans), seam_positions(spans)
"""
from __future__ import annotations

import math

import numpy as np

from editing.metrics.spectral import LOG_MEL_HOP, log_mel
from probing.errors import MelodiaError



def window_spans(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) of the windows covering `length` samples; consecutive windows share `overlap` samples.

    One span when the audio fits one window; otherwise every window is `window` long but the last,
    which stops at `length` and still holds a whole overlap.
    """
    if not 0 < overlap < window:
        raise MelodiaError(f"window overlap must be in (0, {window}) samples, got {overlap}")
    if length <= window:
        return [(0, length)]
    hop = window - overlap
    count = math.ceil((length - overlap) / hop)
    return [(i * hop, min(i * hop + window, length)) for i in range(count)]


def overlaps(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, stop) of the crossfade between each pair of consecutive spans."""
    return [(following[0], previous[1]) for previous, following in zip(spans, spans[1:])]


def seam_positions(spans: list[tuple[int, int]]) -> list[int]:
    """The sample at the middle of each crossfade, where both windows weigh the same."""
    return [(start + stop) // 2 for start, stop in overlaps(spans)]


def crossfade(length: int, correlation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Raised-cosine (fade_out, fade_in) of `length` samples that keep the power of two pieces of this correlation.

    At every sample out^2 + in^2 + 2 * correlation * out * in == 1: correlation 1 gives out + in == 1
    (a linear-sum crossfade), correlation 0 an equal-power one (out^2 + in^2 == 1).
    """
    fade_in = np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length) ** 2
    fade_out = 1.0 - fade_in
    gain = 1.0 / np.sqrt(fade_out**2 + fade_in**2 + 2.0 * correlation * fade_out * fade_in)
    return fade_out * gain, fade_in * gain


def overlap_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two equally long pieces, clipped to [0, 1] (1 when either is silent)."""
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.clip(np.dot(a, b) / norms, 0.0, 1.0)) if norms > 0 else 1.0


def join_windows(pieces: list[np.ndarray], spans: list[tuple[int, int]]) -> np.ndarray:
    """Overlap-add `pieces` (one per span, as long as it) with `crossfade`s: a 1-D array of the total length.

    Each crossfade is scaled for the `overlap_correlation` of the two pieces over their overlap.
    """
    if [len(p) for p in pieces] != [stop - start for start, stop in spans]:
        raise ValueError("each piece must be as long as its span")
    joined = np.zeros(spans[-1][1], dtype=np.float32)
    gains = [np.ones(len(p)) for p in pieces]
    for i, (start, stop) in enumerate(overlaps(spans)):
        width = stop - start
        fade_out, fade_in = crossfade(width, overlap_correlation(pieces[i][-width:], pieces[i + 1][:width]))
        gains[i][-width:] *= fade_out
        gains[i + 1][:width] *= fade_in
    for piece, gain, (start, stop) in zip(pieces, gains, spans):
        joined[start:stop] += piece * gain
    return joined


def spectral_flux(wave: np.ndarray, sr: int) -> np.ndarray:
    """Mean |change| of the log-mel spectrum over the bands, from each frame to the next."""
    return np.abs(np.diff(log_mel(wave, sr), axis=1)).mean(axis=0)


def seam_flux_ratio(wave: np.ndarray, sr: int, spans: list[tuple[int, int]]) -> float | None:
    """Mean spectral flux of the frames inside the crossfades / mean flux of the other frames (None: no seam).

    Frame k's flux is the change from frame k to k+1, placed at sample (k + 1/2) * hop.
    """
    fades = overlaps(spans)
    if not fades:
        return None
    flux = spectral_flux(wave, sr)
    centres = (np.arange(len(flux)) + 0.5) * LOG_MEL_HOP
    at_seam = np.zeros(len(flux), dtype=bool)
    for start, stop in fades:
        at_seam |= (centres >= start) & (centres < stop)
    elsewhere = flux[~at_seam]
    if not elsewhere.size or elsewhere.mean() == 0:
        return float("nan")
    return float(flux[at_seam].mean() / elsewhere.mean())
