"""Melody kept: the edit's pitch contour scored against the source's, as melody extraction is scored.

The f0 contour of each clip comes from pYIN (Mauch & Dixon 2014, `librosa.pyin`) at 16 kHz with a
10 ms hop over C2-C7; the edit's contour is then scored against the source's with mir_eval's raw
pitch accuracy (voiced source frames where the edit's pitch is within 50 cents) and raw chroma
accuracy (the same, octave errors forgiven). Voicing follows mir_eval: a frame the edit leaves
unvoiced counts as a miss. pYIN is a signal-processing tracker, not a learned one: the learned
trackers that ship their weights (torchcrepe, pesto-pitch) need torchaudio, whose PyPI wheel for
this torch is a CUDA build (docs/install.md). It is exact on the testbed's monophonic synth
melodies and less reliable on dense polyphony, where only the predominant line is followed.

Examples:
    >>> from probing.synth import render_clip
    >>> source = render_clip("flute", "waltz", "calm", score_seed=0)        # 16 kHz
    >>> melody = melody_accuracy(source, source, 16000)
    >>> melody.raw_pitch, melody.raw_chroma      # 1.0 = every voiced source frame kept its pitch
    (1.0, 1.0)
    >>> melody_accuracy(source, render_clip("flute", "waltz", "calm", score_seed=1), 16000).raw_chroma < 0.3
    True
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import librosa
import numpy as np

from editing.metrics._common import MetricUnavailableError, at_rate

PITCH_SAMPLE_RATE = 16_000
PITCH_HOP = 160  # 10 ms, mir_eval's reference hop
PITCH_FRAME = 1024
PITCH_RESOLUTION = 0.25  # semitones per pYIN pitch bin: half the 50-cent tolerance, 12x faster than 0.1
FMIN, FMAX = librosa.note_to_hz("C2"), librosa.note_to_hz("C7")
Contour = tuple[np.ndarray, np.ndarray]  # (frame times in s, f0 in Hz, 0 where unvoiced): `pitch_contour`'s


@dataclass(frozen=True)
class MelodyAccuracy:
    """How much of the source's melody an edit keeps (mir_eval.melody, the source as reference).

    raw_pitch: fraction of voiced source frames where the edit's f0 is within 50 cents (higher is better).
    raw_chroma: the same with octave errors forgiven (>= raw_pitch).
    voiced_frames: voiced frames in the source's contour (10 ms each): what the accuracies average over.
    """

    raw_pitch: float
    raw_chroma: float
    voiced_frames: int


def pitch_contour(wave: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame times in s, f0 in Hz with 0 where unvoiced) of mono `wave`, by pYIN at 16 kHz, 10 ms hop.

    >>> times, f0 = pitch_contour(wave, 16000)
    >>> f0[f0 > 0].mean()        # the mean pitch of the voiced frames
    """
    wave = at_rate(wave, sr, PITCH_SAMPLE_RATE)
    f0, voiced, _ = librosa.pyin(wave, fmin=FMIN, fmax=FMAX, sr=PITCH_SAMPLE_RATE, frame_length=PITCH_FRAME,
                                 hop_length=PITCH_HOP, resolution=PITCH_RESOLUTION, center=True)
    f0 = np.where(voiced & np.isfinite(f0), f0, 0.0)
    return librosa.frames_to_time(np.arange(len(f0)), sr=PITCH_SAMPLE_RATE, hop_length=PITCH_HOP), f0


_REFERENCE_CONTOURS: OrderedDict[tuple[str, int], Contour] = OrderedDict()
REFERENCE_CACHE_SIZE = 8  # a benchmark item's source and ideal, with room for a few items in flight


def reference_contour(wave: np.ndarray, sr: int) -> Contour:
    """`pitch_contour` of a clip that is scored against many edits (a benchmark item's source and ideal edit),
    tracked once: remembered by the clip's content for the last REFERENCE_CACHE_SIZE clips.

    >>> from probing.synth import render_clip
    >>> source = render_clip("flute", "waltz", "calm", score_seed=0)
    >>> reference_contour(source, 16000) is reference_contour(source.copy(), 16000)   # same samples: tracked once
    True
    """
    samples = np.ascontiguousarray(wave, dtype=np.float32)
    key = (hashlib.blake2b(samples.tobytes(), digest_size=16).hexdigest(), sr)
    if key in _REFERENCE_CONTOURS:
        _REFERENCE_CONTOURS.move_to_end(key)
        return _REFERENCE_CONTOURS[key]
    contour = pitch_contour(wave, sr)
    for array in contour:
        array.flags.writeable = False  # shared by every caller that asks for this clip
    _REFERENCE_CONTOURS[key] = contour
    while len(_REFERENCE_CONTOURS) > REFERENCE_CACHE_SIZE:
        _REFERENCE_CONTOURS.popitem(last=False)
    return contour


def melody_accuracy(source: np.ndarray, edited: np.ndarray, sr: int) -> MelodyAccuracy:
    """Raw pitch and raw chroma accuracy of `edited`'s contour against `source`'s (both mono at `sr`).

    Raises:
        MetricUnavailableError: the source has no voiced frame (silence, noise, drums): there is no
            melody to keep.
    """
    return contour_accuracy(pitch_contour(source, sr), pitch_contour(edited, sr))


def contour_accuracy(source: Contour, edited: Contour) -> MelodyAccuracy:
    """`melody_accuracy` on contours already tracked (one clip scored against several references tracks once).

    >>> edited = pitch_contour(edit, 16000)
    >>> contour_accuracy(pitch_contour(source, 16000), edited).raw_chroma
    """
    import mir_eval.melody

    (source_times, source_f0), (edited_times, edited_f0) = source, edited
    voiced = int((source_f0 > 0).sum())
    if voiced == 0:
        raise MetricUnavailableError("the source has no voiced frame (pYIN finds no pitch): no melody to compare")
    with warnings.catch_warnings():  # an edit with no voiced frame is a valid input: it scores 0
        warnings.filterwarnings("ignore", "Estimated melody has no voiced frames", UserWarning)
        contours = mir_eval.melody.to_cent_voicing(source_times, source_f0, edited_times, edited_f0,
                                                   hop=PITCH_HOP / PITCH_SAMPLE_RATE)
        return MelodyAccuracy(float(mir_eval.melody.raw_pitch_accuracy(*contours)),
                              float(mir_eval.melody.raw_chroma_accuracy(*contours)), voiced)
