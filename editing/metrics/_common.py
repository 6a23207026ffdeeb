"""What every metric module shares: audio at the metric's own rate, and the errors for metrics that cannot run.

Examples:
    >>> at_rate(np.zeros(64000), 16000, 48000).shape               # float32 mono, resampled (soxr_hq)
    (192000,)
    >>> raise MissingWeightsError("no LPAPS weights given: pass --lpaps FILE")   # a MetricUnavailableError
    Traceback (most recent call last):
    MissingWeightsError: no LPAPS weights given: pass --lpaps FILE
"""
from __future__ import annotations

import numpy as np

from probing.errors import MelodiaError


class MetricUnavailableError(MelodiaError):
    """A metric cannot score this input here (`score_edit` and `melodia eval` report it as unavailable)."""


class MissingWeightsError(MetricUnavailableError):
    """A learned metric cannot run because its weights are not here."""


def at_rate(wave: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """`wave` (mono, 1-D) as float32 at `rate`; resampled with librosa's default (soxr_hq) when `sr` differs."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise MelodiaError(f"expected mono audio (1-D), got shape {wave.shape}")
    if sr == rate:
        return wave
    import librosa

    return librosa.resample(wave, orig_sr=sr, target_sr=rate)
