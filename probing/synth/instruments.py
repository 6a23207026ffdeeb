"""Synthesis recipes of the 16 instruments: wavetable, modal (inharmonic) and plucked-string.

Each recipe turns (MIDI pitch, length in samples) into one note's waveform, peak about 1,
with its own attack and decay; `render` adds note-off release and mixes. Wavetables and
the expensive decaying tones (modal, Karplus-Strong) are cached per pitch, so a note costs
a few vector operations over its samples.

Examples:
    >>> import numpy as np
    >>> tone = RECIPES["violin"].tone(69, 1600, 16000, np.random.default_rng(0))
    >>> tone.shape, tone.dtype
    ((1600,), dtype('float32'))
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.signal import lfilter

_TABLE_SIZE = 4096
_REFERENCE_HZ = 261.63  # decay times are given at middle C and scale with 1/sqrt(frequency)


def midi_to_hz(pitch: float) -> float:
    """Equal-tempered frequency of a MIDI pitch (A4 = 69 = 440 Hz)."""
    return 440.0 * 2.0 ** ((pitch - 69) / 12)


def _decay_scale(frequency: float) -> float:
    return float(np.sqrt(_REFERENCE_HZ / frequency))


def _attack(n: int, sr: int, seconds: float) -> np.ndarray:
    """Raised-cosine ramp from 0 to 1 over `seconds`, then 1."""
    ramp = np.minimum(np.arange(n, dtype=np.float32) / max(seconds * sr, 1.0), 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * ramp)


def _colored_noise(n: int, rng: np.random.Generator, pole: float) -> np.ndarray:
    """White noise through a one-pole low-pass (`pole` near 1 = darker), peak about 1."""
    noise = rng.standard_normal(n).astype(np.float32)
    return lfilter([1.0 - pole], [1.0, -pole], noise).astype(np.float32) / (1.0 - pole) ** 0.5 / 3


@dataclass(frozen=True)
class Spectrum:
    """Harmonic amplitudes: k^-rolloff, shaped by even-harmonic weight, formants and a pluck comb."""

    rolloff: float = 1.0
    even: float = 1.0  # weight of even harmonics (clarinet ~0.1)
    formants: tuple[tuple[float, float, float], ...] = ()  # (centre Hz, width Hz, gain)
    pluck: float = 0.0  # pluck/hammer position as a fraction of the string; 0 = none
    partials: tuple[tuple[float, float], ...] = ()  # explicit (ratio, amplitude), ratios in halves

    def table(self, frequency: float, sr: int) -> np.ndarray:
        """One period (of frequency/2 when explicit half-ratio partials are given) as a table."""
        spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=complex)
        if self.partials:
            for ratio, amplitude in self.partials:
                if ratio * frequency < 0.45 * sr:
                    spectrum[round(2 * ratio)] = amplitude
        else:
            k = np.arange(1, max(2, min(60, int(0.45 * sr / frequency))) + 1)
            amplitude = k ** -self.rolloff * np.where(k % 2 == 0, self.even, 1.0)
            for centre, width, gain in self.formants:
                amplitude = amplitude * (1 + gain * np.exp(-0.5 * ((k * frequency - centre) / width) ** 2))
            if self.pluck:
                amplitude = amplitude * (np.abs(np.sin(np.pi * k * self.pluck)) + 0.05)
            spectrum[k] = amplitude
        table = np.fft.irfft(-1j * spectrum, n=_TABLE_SIZE)
        return (table / np.abs(table).max()).astype(np.float32)


@lru_cache(maxsize=2048)
def _cached_table(spectrum: Spectrum, pitch: int, sr: int) -> np.ndarray:
    return spectrum.table(midi_to_hz(pitch), sr)


def _lookup(table: np.ndarray, cycles: np.ndarray) -> np.ndarray:
    """Read a one-period table at phases given in cycles (nearest sample of 4096)."""
    return table[(cycles * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)]


@dataclass(frozen=True)
class Wavetable:
    """A harmonic oscillator: bright-to-dull crossfade, envelope, vibrato, scoop, noise, tremolo."""

    bright: Spectrum
    dull: Spectrum | None = None  # crossfade target; None = constant timbre
    brightness_seconds: float = 0.1  # crossfade time constant
    attack: float = 0.01
    decay: float | None = None  # seconds at middle C; None = sustained
    release: float = 0.1
    vibrato_cents: float = 0.0
    vibrato_hz: float = 5.5
    vibrato_delay: float = 0.2
    scoop_cents: float = 0.0  # start this far off pitch, glide in over 50 ms
    detune_cents: tuple[float, ...] = (0.0,)  # unison oscillators
    noise: float = 0.0  # breath/bow noise level
    noise_pole: float = 0.9
    tremolo_depth: float = 0.0
    tremolo_hz: float = 6.0

    def tone(self, pitch: int, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
        """One note of `n` samples at MIDI `pitch` (without note-off release)."""
        frequency = midi_to_hz(pitch) * 2 ** (rng.normal(0.0, 2.0) / 1200)
        if self.bright.partials:  # explicit partials sit on a table of half the frequency
            frequency /= 2
        t = np.arange(n, dtype=np.float64) / sr
        cents = np.zeros(n)
        if self.vibrato_cents:
            onset = np.clip((t - self.vibrato_delay) / 0.3, 0.0, 1.0)
            cents = cents + self.vibrato_cents * onset * np.sin(
                2 * np.pi * self.vibrato_hz * t + rng.uniform(0, 2 * np.pi))
        if self.scoop_cents:
            cents = cents - self.scoop_cents * np.exp(-t / 0.05)
        base = np.cumsum(2 ** (cents / 1200)) * (frequency / sr) if cents.any() else t * frequency
        bright = _cached_table(self.bright, pitch, sr)
        dull = _cached_table(self.dull, pitch, sr) if self.dull else None
        out = np.zeros(n, dtype=np.float32)
        fade = np.exp(-t / self.brightness_seconds).astype(np.float32) if dull is not None else None
        for detune in self.detune_cents:
            cycles = base * 2 ** (detune / 1200) + rng.random()
            voice = _lookup(bright, cycles)
            if dull is not None:
                voice = fade * voice + (1 - fade) * _lookup(dull, cycles)
            out += voice
        out /= len(self.detune_cents)
        if self.noise:
            out += self.noise * _colored_noise(n, rng, self.noise_pole)
        envelope = _attack(n, sr, self.attack)
        if self.decay is not None:
            envelope *= np.exp(-t / (self.decay * _decay_scale(midi_to_hz(pitch)))).astype(np.float32)
        if self.tremolo_depth:
            envelope *= (1 - self.tremolo_depth * (0.5 + 0.5 * np.sin(2 * np.pi * self.tremolo_hz * t))
                         ).astype(np.float32)
        return out * envelope


def _fit_length(cached: np.ndarray, n: int) -> np.ndarray:
    """A cached decaying tone cut (or zero-padded) to `n` samples."""
    if n <= cached.size:
        return cached[:n]
    return np.concatenate([cached, np.zeros(n - cached.size, dtype=np.float32)])


@dataclass(frozen=True)
class Modal:
    """Struck bars, bells and piano strings: decaying sine modes, cached per pitch."""

    modes: tuple[tuple[float, float, float], ...]  # (frequency ratio, amplitude, decay s at middle C)
    release: float = 0.2
    seconds: float = 2.5  # cached length; the tail beyond is silence
    click: float = 0.0  # mallet/hammer noise level
    tremolo_depth: float = 0.0
    tremolo_hz: float = 5.5

    def tone(self, pitch: int, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
        """One note of `n` samples at MIDI `pitch` (without note-off release)."""
        return _fit_length(_modal_tone(self, pitch, sr), n)


@lru_cache(maxsize=512)
def _modal_tone(recipe: Modal, pitch: int, sr: int) -> np.ndarray:
    frequency = midi_to_hz(pitch)
    t = np.arange(int(recipe.seconds * sr)) / sr
    out = np.zeros(t.size)
    scale = _decay_scale(frequency)
    for ratio, amplitude, decay in recipe.modes:
        if ratio * frequency < 0.45 * sr:
            out += amplitude * np.exp(-t / (decay * scale)) * np.sin(2 * np.pi * ratio * frequency * t)
    if recipe.click:
        noise = _colored_noise(t.size, np.random.default_rng(pitch), 0.5)
        out += recipe.click * noise * np.exp(-t / 0.004)
    if recipe.tremolo_depth:
        out *= 1 - recipe.tremolo_depth * (0.5 + 0.5 * np.sin(2 * np.pi * recipe.tremolo_hz * t))
    out *= _attack(t.size, sr, 0.002)
    return (out / np.abs(out).max()).astype(np.float32)


def _piano_modes(strings: tuple[float, ...] = (-0.7, 0.7), stretch: float = 4e-4,
                 count: int = 14) -> tuple[tuple[float, float, float], ...]:
    """Stretched (inharmonic) partials of detuned unison strings, hammer-struck at 1/7."""
    modes = []
    for k in range(1, count + 1):
        ratio = k * np.sqrt(1 + stretch * k * k)
        amplitude = k ** -1.1 * (abs(np.sin(np.pi * k / 7)) + 0.1) / len(strings)
        for cents in strings:
            modes.append((float(ratio * 2 ** (cents / 1200)), float(amplitude), 1.6 / (1 + 0.35 * (k - 1))))
    return tuple(modes)


@dataclass(frozen=True)
class Plucked:
    """Karplus-Strong string (one `lfilter` call with a fractional-delay loop), cached per pitch."""

    loop_gain: float = 0.996
    excitation_pole: float = 0.0  # low-pass of the noise burst: 0 = bright pick, 0.7 = soft finger
    pluck: float = 0.0  # pick position as a fraction of the string; 0 = none
    release: float = 0.08
    seconds: float = 2.5

    def tone(self, pitch: int, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
        """One note of `n` samples at MIDI `pitch` (without note-off release)."""
        return _fit_length(_plucked_tone(self, pitch, sr), n)


@lru_cache(maxsize=512)
def _plucked_tone(recipe: Plucked, pitch: int, sr: int) -> np.ndarray:
    delay = sr / midi_to_hz(pitch)  # loop = z^-P, two-point average (0.5), all-pass (fraction)
    whole = int(np.floor(delay - 0.6))
    fraction = delay - 0.5 - whole
    c = (1 - fraction) / (1 + fraction)
    burst = np.random.default_rng(pitch).uniform(-1, 1, whole + 1)
    if recipe.excitation_pole:
        burst = lfilter([1 - recipe.excitation_pole], [1, -recipe.excitation_pole], burst)
    if recipe.pluck:
        burst = burst - np.roll(burst, max(1, round(recipe.pluck * whole)))
    excitation = np.zeros(int(recipe.seconds * sr))
    excitation[: burst.size] = burst
    g = recipe.loop_gain / 2
    denominator = np.zeros(whole + 3)
    denominator[:2] = (1.0, c)
    denominator[whole:] -= (g * c, g * (1 + c), g)
    out = lfilter([1.0, c], denominator, excitation)
    return (out / np.abs(out).max()).astype(np.float32)


RECIPES: dict[str, Wavetable | Modal | Plucked] = {
    "piano": Modal(_piano_modes(), release=0.12, seconds=3.0, click=0.05),
    "violin": Wavetable(Spectrum(1.0, formants=((550, 200, 2.0), (3000, 900, 4.0))), attack=0.1,
                        release=0.12, vibrato_cents=25, vibrato_hz=5.8, vibrato_delay=0.12, noise=0.03,
                        noise_pole=0.3),
    "flute": Wavetable(Spectrum(partials=((1, 1.0), (2, 0.3), (3, 0.12), (4, 0.05), (5, 0.02))),
                       attack=0.07, release=0.08, vibrato_cents=12, vibrato_hz=5.0, noise=0.12,
                       noise_pole=0.6),
    "clarinet": Wavetable(Spectrum(1.1, even=0.08), attack=0.04, release=0.06, noise=0.02),
    "organ": Wavetable(Spectrum(partials=((0.5, 0.7), (1, 1.0), (1.5, 0.35), (2, 0.7), (3, 0.45), (4, 0.5),
                                          (8, 0.25))), attack=0.008, release=0.04, tremolo_depth=0.12,
                       tremolo_hz=6.7),
    "trumpet": Wavetable(Spectrum(0.45, formants=((1300, 500, 2.0),)), dull=Spectrum(1.1), brightness_seconds=0.5,
                         attack=0.03, release=0.08, vibrato_cents=10, vibrato_hz=5.2, vibrato_delay=0.3,
                         scoop_cents=60),
    "guitar": Plucked(loop_gain=0.994, excitation_pole=0.1, pluck=0.13, release=0.06),
    "bass": Wavetable(Spectrum(0.9), dull=Spectrum(2.6), brightness_seconds=0.05, attack=0.004, decay=1.0,
                      release=0.05),
    "marimba": Modal(((1, 1.0, 0.45), (3.93, 0.45, 0.1), (9.23, 0.15, 0.03)), release=0.15, seconds=1.5,
                     click=0.3),
    "bells": Modal(((0.5, 0.5, 2.5), (1, 0.8, 1.8), (1.19, 0.6, 1.4), (1.5, 0.4, 1.0), (2.0, 1.0, 1.2),
                    (2.51, 0.45, 0.7), (2.66, 0.35, 0.6), (3.01, 0.3, 0.5), (4.17, 0.25, 0.35)),
                   release=0.8, seconds=3.0, click=0.05),
    "harp": Plucked(loop_gain=0.998, excitation_pole=0.7, pluck=0.5, release=0.4, seconds=3.0),
    "synth-pad": Wavetable(Spectrum(1.7), attack=0.3, release=0.5, detune_cents=(-14.0, 0.0, 14.0),
                           tremolo_depth=0.15, tremolo_hz=0.7),
    "cello": Wavetable(Spectrum(1.25, formants=((250, 120, 3.0), (1000, 400, 1.5))), attack=0.15, release=0.2,
                       vibrato_cents=20, vibrato_hz=4.8, vibrato_delay=0.15, noise=0.06, noise_pole=0.8),
    "saxophone": Wavetable(Spectrum(0.8, even=0.7, formants=((600, 250, 2.5), (1800, 600, 2.0))),
                           attack=0.04, release=0.07, vibrato_cents=18, vibrato_hz=5.0, noise=0.06,
                           noise_pole=0.2),
    "vibraphone": Modal(((1, 1.0, 1.6), (4.0, 0.3, 0.4), (10.0, 0.08, 0.1)), release=0.3, seconds=3.0,
                        click=0.05, tremolo_depth=0.45, tremolo_hz=5.5),
    "harpsichord": Wavetable(Spectrum(0.5, pluck=0.11), dull=Spectrum(1.3, pluck=0.11), brightness_seconds=0.25,
                             attack=0.002, decay=0.9, release=0.03),
}
