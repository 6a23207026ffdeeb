"""Scores of the synthetic dataset: the melody comes from `score_seed`, the rest from style and mood.

The melody is a walk over scale degrees drawn only from `score_seed` (never two equal degrees
in a row); the style sets rhythm, articulation, metre and accompaniment; the mood sets mode,
tempo, register and dynamics. So one `score_seed` is one tune, arrangeable every which way.
The tune's `form` says whether it repeats itself: "walk" never does (the v1/v2 testbeds' data);
"aaba" builds it from two-note motifs in the pattern A A B A, C C D C, ..., so a clip repeats the
pitches it played a moment ago, as music does (the rhythm repeats with them where the style's
rhythm cycle is one or two notes long: staccato, swing, waltz, arpeggio, chorale, lullaby). Slow
arrangements hold few notes in 4 s: about one clip in seven has fewer than four, so no full repeat.

Examples:
    >>> score = make_score(3, "waltz", "sad")
    >>> score.melody_degrees()[:3] == make_score(3, "swing", "happy").melody_degrees()[:3]
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from math import ceil

import numpy as np

from probing.synth.classes import check_class

SAMPLE_RATE = 16000
CLIP_SECONDS = 4.096  # 65536 samples at 16 kHz

IONIAN = (0, 2, 4, 5, 7, 9, 11)
AEOLIAN = (0, 2, 3, 5, 7, 8, 10)
FORMS = ("walk", "aaba")
MOTIF_NOTES = 2  # notes per motif of the "aaba" form: the shortest motif, so most clips hold a repeat


@dataclass(frozen=True)
class Note:
    """One note: MIDI `pitch`, `onset` and `duration` in seconds, `velocity` in (0, 1]."""

    pitch: int
    onset: float
    duration: float
    velocity: float
    part: str = "melody"  # "melody" or "accompaniment"
    restrike: bool = False  # a tremolo stroke after a melody note's first


@dataclass(frozen=True)
class Score:
    """A clip's notes plus how they were made; render it with any instrument."""

    notes: tuple[Note, ...]
    seconds: float
    tempo_bpm: float
    meter: int
    style: str
    mood: str
    score_seed: int
    tonic: int = 60
    mode: tuple[int, ...] = IONIAN
    form: str = "walk"

    def melody(self) -> tuple[Note, ...]:
        """The melody notes in onset order (tremolo re-strikes included)."""
        return tuple(note for note in self.notes if note.part == "melody")

    def melody_degrees(self) -> list[int]:
        """Scale degrees of the melody's notes (tremolo re-strikes not counted): identical for every style and mood."""
        return [pitch_to_degree(note.pitch, self.tonic, self.mode) for note in self.melody() if not note.restrike]


@dataclass(frozen=True)
class _Mood:
    mode: tuple[int, ...]
    tempo_range: tuple[float, float]
    tonic: int  # lowest tonic; the key adds 0-4 semitones
    velocity: float


@dataclass(frozen=True)
class _Style:
    meter: int
    rhythm: tuple[float, ...]  # melody durations in beats, one bar, cycled
    articulation: float  # sounding fraction of each melody duration
    accompaniment: str
    tempo_factor: float = 1.0
    velocity_factor: float = 1.0
    offbeat_accent: bool = False
    restrike: bool = False  # tremolo: every melody note re-struck every 75 ms


_MOODS = {
    "happy": _Mood(IONIAN, (112, 132), 62, 0.75),
    "sad": _Mood(AEOLIAN, (64, 76), 55, 0.5),
    "tense": _Mood((0, 1, 3, 5, 7, 8, 10), (100, 120), 57, 0.7),
    "calm": _Mood((0, 2, 4, 5, 7, 9, 10), (66, 80), 60, 0.4),
    "energetic": _Mood((0, 2, 3, 5, 7, 9, 10), (144, 168), 64, 0.9),
    "dreamy": _Mood((0, 2, 4, 6, 7, 9, 11), (72, 88), 67, 0.45),
    "dark": _Mood((0, 2, 3, 5, 7, 8, 11), (64, 84), 45, 0.65),
    "triumphant": _Mood(IONIAN, (100, 116), 58, 0.95),
}

_STYLES = {
    "waltz": _Style(3, (2, 1), 0.85, "oom-pah-pah"),
    "march": _Style(4, (1, 0.75, 0.25, 1, 1), 0.6, "march", tempo_factor=1.05),
    "ballad": _Style(4, (1.5, 0.5, 2), 1.05, "sustained", tempo_factor=0.85),
    "staccato": _Style(4, (0.5,) * 8, 0.2, "pulse"),
    "arpeggio": _Style(4, (2, 2), 0.9, "broken-chord"),
    "syncopated": _Style(4, (0.75, 0.75, 1, 0.5, 1), 0.7, "offbeat"),
    "chorale": _Style(4, (2,), 0.97, "block"),
    "lullaby": _Style(3, (1, 2), 0.95, "rocking", tempo_factor=0.8, velocity_factor=0.7),
    "swing": _Style(4, (2 / 3, 1 / 3) * 4, 0.8, "walking", offbeat_accent=True),
    "ostinato": _Style(4, (2, 1, 1), 0.9, "ostinato"),
    "tremolo": _Style(4, (1, 1, 2), 1.0, "sustained", restrike=True),
}

_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3), (5, 3, 0, 4), (0, 3, 0, 4))
_TREMOLO_STROKE_SECONDS = 0.075
_ACCOMPANIMENT_VELOCITY = 0.55


def degree_to_pitch(degree: int, tonic: int, mode: tuple[int, ...]) -> int:
    """MIDI pitch of a scale degree (0 = tonic; negative goes down; 7 steps = one octave)."""
    octave, step = divmod(degree, len(mode))
    return tonic + 12 * octave + mode[step]


def pitch_to_degree(pitch: int, tonic: int, mode: tuple[int, ...]) -> int:
    """Inverse of `degree_to_pitch` for in-mode pitches."""
    octave, semitone = divmod(pitch - tonic, 12)
    return octave * len(mode) + mode.index(semitone)


def check_form(form: str) -> None:
    """Raise a one-line `ValueError` unless `form` is a tune form (`FORMS`).

    Examples:
        >>> check_form("aaba")
        >>> check_form("rondo")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: unknown tune form 'rondo'; choose one of: walk, aaba
    """
    if form not in FORMS:
        raise ValueError(f"unknown tune form {form!r}; choose one of: {', '.join(FORMS)}")


def melody_degrees(score_seed: int, count: int, form: str = "walk") -> list[int]:
    """The first `count` melody degrees of a tune in `form` (see `FORMS`).

    "walk": a bounded walk, never repeating a degree. "aaba": consecutive two-note stretches of that
    walk as motifs A, B, C, D, ... played A A B A C C D C ... (a motif may end on the next one's
    first degree: a repeated note).

    Examples:
        >>> melody_degrees(0, 8) == melody_degrees(0, 20)[:8]
        True
        >>> a_b = melody_degrees(0, 4); melody_degrees(0, 8, "aaba") == a_b[:2] * 2 + a_b[2:] + a_b[:2]
        True
    """
    check_form(form)
    if form == "aaba":
        sections = ceil(count / (4 * MOTIF_NOTES))
        walk = melody_degrees(score_seed, 2 * MOTIF_NOTES * sections)
        out = []
        for start in range(0, len(walk), 2 * MOTIF_NOTES):
            a, b = walk[start:start + MOTIF_NOTES], walk[start + MOTIF_NOTES:start + 2 * MOTIF_NOTES]
            out += a + a + b + a
        return out[:count]
    rng = np.random.default_rng([score_seed, 0])
    steps = np.array([-3, -2, -1, 1, 2, 3, 4, -4])
    weights = np.array([0.08, 0.2, 0.22, 0.22, 0.16, 0.06, 0.03, 0.03])
    degrees = [int(rng.integers(0, 5))]
    while len(degrees) < count:  # blocks of 64 keep every prefix identical
        for step in rng.choice(steps, size=64, p=weights):
            nxt = degrees[-1] + int(step)
            if not -2 <= nxt <= 9:
                nxt = degrees[-1] - int(step)
            degrees.append(nxt)
    return degrees[:count]


def make_score(score_seed: int, style: str, mood: str, seconds: float = CLIP_SECONDS,
               form: str = "walk") -> Score:
    """Arrange tune `score_seed` (in `form`, see `FORMS`) in a style and mood, `seconds` long.

    Examples:
        >>> score = make_score(0, "chorale", "dark")
        >>> score.meter, score.notes[0].onset
        (4, 0.0)
    """
    check_class("style", style)
    check_class("mood", mood)
    mood_spec, style_spec = _MOODS[mood], _STYLES[style]
    arrangement = np.random.default_rng([score_seed, 1]).random(3)
    low, high = mood_spec.tempo_range
    tempo = float((low + (high - low) * arrangement[0]) * style_spec.tempo_factor)
    tonic = mood_spec.tonic + int(arrangement[1] * 5)
    progression = _PROGRESSIONS[int(arrangement[2] * len(_PROGRESSIONS))]
    beat = 60.0 / tempo
    velocity = mood_spec.velocity * style_spec.velocity_factor
    jitter = np.random.default_rng([score_seed, 2])

    def note(degree: int, start_beat: float, beats: float, level: float, part: str, restrike: bool = False) -> Note:
        loud = level * velocity * (1.0 + 0.06 * float(jitter.standard_normal()))
        return Note(degree_to_pitch(degree, tonic, mood_spec.mode), round(start_beat * beat, 6),
                    round(beats * beat, 6), float(np.clip(loud, 0.05, 1.0)), part, restrike)

    total_beats = seconds / beat
    melody = _melody(score_seed, style_spec, total_beats, form)
    notes = []
    for degree, start, length in melody:
        accent = _accent(start, style_spec)
        if style_spec.restrike:
            strokes = max(1, round(length * beat / _TREMOLO_STROKE_SECONDS))
            for k in range(strokes):
                notes.append(note(degree, start + k * length / strokes, 0.8 * length / strokes,
                                  accent * (0.85 + 0.15 * (k == 0)), "melody", restrike=k > 0))
        else:
            notes.append(note(degree, start, length * style_spec.articulation, accent, "melody"))
    for degree, start, length in _accompaniment(style_spec, progression, melody, total_beats):
        notes.append(note(degree, start, length, _ACCOMPANIMENT_VELOCITY * _accent(start, style_spec),
                          "accompaniment"))
    notes = [n for n in notes if n.onset < seconds]
    notes.sort(key=lambda n: (n.onset, n.part != "melody", n.pitch))
    return Score(tuple(notes), float(seconds), tempo, style_spec.meter, style, mood,
                 int(score_seed), tonic, mood_spec.mode, form)


def _melody(score_seed: int, style: _Style, total_beats: float, form: str) -> list[tuple[int, float, float]]:
    """(degree, start beat, length in beats) of each melody note up to `total_beats`."""
    count = ceil(total_beats / min(style.rhythm)) + 1
    events, start = [], 0.0
    for index, degree in enumerate(melody_degrees(score_seed, count, form)):
        if start >= total_beats:
            break
        length = style.rhythm[index % len(style.rhythm)]
        events.append((degree, start, length))
        start += length
    return events


def _accent(start_beat: float, style: _Style) -> float:
    """Metric accent: strong downbeats, or (swing) pushed offbeats."""
    position = start_beat % style.meter
    if style.offbeat_accent:
        return 1.0 if position % 1 > 0.1 else 0.8
    return 1.0 if position < 1e-6 else (0.9 if abs(position % 2) < 1e-6 else 0.8)


def _accompaniment(style: _Style, progression: tuple[int, ...],
                   melody: list[tuple[int, float, float]],
                   total_beats: float) -> list[tuple[int, float, float]]:
    """(degree, start beat, length in beats) of the accompaniment for the style's texture."""
    if style.accompaniment == "block":
        return [(degree - offset, start, length * style.articulation)
                for degree, start, length in melody for offset in (2, 4, 11)]
    events = []
    for bar in range(ceil(total_beats / style.meter)):
        root = progression[bar % len(progression)] - 7  # an octave below the tonic
        events += [(degree, bar * style.meter + start, length)
                   for degree, start, length in _bar_pattern(style, root)]
    return events


def _bar_pattern(style: _Style, root: int) -> list[tuple[int, float, float]]:
    """One bar of accompaniment as (degree, start beat within the bar, length in beats)."""
    triad = (root + 2, root + 4)
    kind, meter = style.accompaniment, style.meter
    if kind == "oom-pah-pah":
        return [(root - 7, 0, 0.9)] + [(d, b, 0.45) for b in (1, 2) for d in triad]
    if kind == "march":
        return [(root - 7, b, 0.5) for b in (0, 2)] + [(d, b, 0.35) for b in (1, 3) for d in triad]
    if kind == "sustained":
        return [(d, 0, meter * 0.98) for d in (root - 7, root, *triad)]
    if kind == "pulse":
        return [(root - 7, b, 0.25) for b in range(meter)]
    if kind == "broken-chord":
        figure = (root - 7, root, root + 2, root + 4, root + 7, root + 4, root + 2, root)
        return [(d, 0.5 * i, 0.45) for i, d in enumerate(figure)]
    if kind == "offbeat":
        return [(root - 7, 0, 0.7), (root - 7, 2.5, 0.5)] + [
            (d, b, 0.3) for b in (0.5, 1.5, 2.5, 3.5) for d in triad]
    if kind == "rocking":
        return [(root - 7, 0, 1.4), (root - 3, 1.5, 1.4)]
    if kind == "walking":
        return [(root - 7 + step, b, 0.9) for b, step in enumerate((0, 2, 4, 5))]
    if kind == "ostinato":
        return [(d, 0.5 * i, 0.3) for i, d in enumerate((-7, -3, 0, -3) * 2)]
    raise ValueError(f"unknown accompaniment {kind!r}")
