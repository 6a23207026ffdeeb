"""Render a `Score` with one instrument: the notes never change, only their sound.

Examples:
    >>> from probing.synth.score import make_score
    >>> wave = render(make_score(0, "waltz", "happy"), "piano")
    >>> wave.shape, wave.dtype, bool(abs(wave).max() <= 0.95)
    ((65536,), dtype('float32'), True)
"""
from __future__ import annotations

import numpy as np

from probing.synth.classes import check_class, class_lists
from probing.synth.instruments import RECIPES
from probing.synth.score import CLIP_SECONDS, SAMPLE_RATE, Score, make_score

_PEAK = 0.95
_NOISE_FLOOR = 10 ** (-66 / 20)  # relative to the peak


def render(score: Score, instrument: str, sr: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Play every note of `score` on `instrument`; float32 mono, `round(score.seconds * sr)` long.

    The peak is `0.95 * loudest velocity`; `seed` varies detuning, vibrato phase, noise and
    per-note gain slightly, never the notes.

    Examples:
        >>> from probing.synth.score import make_score
        >>> a = render(make_score(1, "march", "sad"), "flute", seed=3)
        >>> bool((a == render(make_score(1, "march", "sad"), "flute", seed=3)).all())
        True
    """
    check_class("instrument", instrument)
    if not score.notes:
        raise ValueError("score has no notes; build one with make_score(score_seed, style, mood)")
    recipe = RECIPES[instrument]
    rng = np.random.default_rng([seed, class_lists()["instrument"].index(instrument)])
    total = round(score.seconds * sr)
    out = np.zeros(total, dtype=np.float32)
    release = max(1, round(recipe.release * sr))
    fade_out = np.linspace(1.0, 0.0, release, dtype=np.float32)
    for note in score.notes:
        start = round(note.onset * sr)
        sounding = max(1, round(note.duration * sr))
        length = min(sounding + release, total - start)
        if length <= 0:
            continue
        tone = recipe.tone(note.pitch, length, sr, rng)
        tail = tone[sounding:] * fade_out[: max(0, length - sounding)]
        gain = note.velocity * (1.0 + 0.04 * rng.standard_normal())
        out[start : start + min(sounding, length)] += gain * tone[:sounding]
        out[start + sounding : start + length] += gain * tail
    out += _NOISE_FLOOR * rng.standard_normal(total).astype(np.float32)
    loudest = max(note.velocity for note in score.notes)
    return (out * (_PEAK * loudest / np.abs(out).max())).astype(np.float32)


def render_clip(instrument: str, style: str, mood: str, score_seed: int, sr: int = SAMPLE_RATE,
                seconds: float = CLIP_SECONDS, form: str = "walk") -> np.ndarray:
    """One dataset clip: tune `score_seed` (in `form`) arranged in `style` and `mood`, played on `instrument`.

    Examples:
        >>> render_clip("harp", "arpeggio", "dreamy", score_seed=7).shape
        (65536,)
    """
    check_class("instrument", instrument)
    return render(make_score(score_seed, style, mood, seconds, form), instrument, sr, seed=score_seed)
