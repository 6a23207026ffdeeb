"""Audio in and out: load any readable file as validated mono at the model rate; write wav atomically.

Examples:
    >>> wave = load_audio("piano.wav", sample_rate=16000)        # mono float32, validated
    >>> write_wav("out/violin.wav", wave, 16000)                  # temp file + rename: never half-written
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from probing.errors import MelodiaError
from probing.paths import atomic_output

SILENCE_PEAK = 1e-4


def validate_wave(wave: np.ndarray, sample_rate: int, name: str = "audio", min_seconds: float = 0.25,
                  max_seconds: float | None = None) -> np.ndarray:
    """Check a mono waveform (finite, not silent, long enough, not too long); return it as float32."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise MelodiaError(f"{name}: expected mono audio (1-D), got shape {wave.shape}")
    if not np.all(np.isfinite(wave)):
        raise MelodiaError(f"{name}: contains NaN or infinite samples")
    seconds = len(wave) / sample_rate
    if seconds < min_seconds:
        raise MelodiaError(f"{name}: {seconds:.2f} s is too short (at least {min_seconds} s)")
    if max_seconds is not None and seconds > max_seconds:
        raise MelodiaError(f"{name}: {seconds:.1f} s is longer than {max_seconds:.1f} s")
    if np.max(np.abs(wave)) < SILENCE_PEAK:
        raise MelodiaError(f"{name}: is silent (peak below {SILENCE_PEAK})")
    return wave


def read_audio(path: str | Path, **limits) -> tuple[np.ndarray, int]:
    """Read `path` (wav/flac/ogg/mp3...) mixed to mono at its own rate, validated: (wave, rate).

    Cheap (no model needed), so commands check their input before loading a model."""
    path = Path(path)
    if not path.is_file():
        raise MelodiaError(f"{path}: no such file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        wave = data.mean(axis=1)
    except (sf.LibsndfileError, RuntimeError):
        if path.suffix[1:].upper() in sf.available_formats() or path.suffix.lower() in (".wav", ".oga", ".opus"):
            # a format libsndfile reads (wav, flac, ogg, mp3, ...) that it could not: no slow fallback
            raise MelodiaError(f"{path}: not a readable {path.suffix[1:]} file") from None
        import warnings

        import librosa

        try:
            with warnings.catch_warnings():  # "PySoundFile failed. Trying audioread": we say it in one line
                warnings.simplefilter("ignore")
                wave, rate = librosa.load(path, sr=None, mono=True)
        except Exception as error:  # librosa raises many types for unreadable input
            raise MelodiaError(f"{path}: not a readable audio file ({type(error).__name__})") from None
    return validate_wave(wave, rate, name=str(path), **limits), int(rate)  # NaN must not reach a resampler


def resample(wave: np.ndarray, rate: int, sample_rate: int, name: str = "audio", **limits) -> np.ndarray:
    """`wave` at `rate` -> at `sample_rate`, validated again."""
    if rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return validate_wave(wave, sample_rate, name=name, **limits)


def load_audio(path: str | Path, sample_rate: int, **limits) -> np.ndarray:
    """Read `path` (wav/flac/ogg/mp3...), mix to mono, resample to `sample_rate`, validate."""
    wave, rate = read_audio(path, **limits)
    return resample(wave, rate, sample_rate, str(path), **limits)


def write_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM wav through a temporary file in the same folder, then rename."""
    wave = np.asarray(wave, dtype=np.float32)
    if not np.all(np.isfinite(wave)):
        raise MelodiaError(f"refusing to write {path}: the audio contains NaN or infinite samples")
    with atomic_output(path, ".wav") as tmp:
        sf.write(tmp, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return Path(path)
