"""Score one edit with every metric that can run; a metric that cannot says why instead of a number.

Examples:
    >>> from probing.synth import render_clip
    >>> source = render_clip("flute", "waltz", "calm", score_seed=0)        # 16 kHz
    >>> ideal = render_clip("violin", "waltz", "calm", score_seed=0)         # the ideal edit, scored as one
    >>> scores = score_edit(source, ideal, 16000, "violin", ideal=ideal)     # lpaps="lpaps.pth" with weights
    >>> scores["chroma"]
    {'value': 0.9..., 'higher_is_better': True, 'compares': 'source, edited'}
    >>> scores["fad"]["unavailable"]
    'FAD compares two sets of clips (many edits): editing.metrics.frechet_audio_distance'
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from editing.metrics._common import MetricUnavailableError
from editing.metrics.clap import DEFAULT_CLAP, ClapEmbedder, load_clap
from editing.metrics.lpaps import LPAPSNet, lpaps_distance
from editing.metrics.melody import Contour, contour_accuracy, pitch_contour, reference_contour
from editing.metrics.spectral import chroma_similarity
from editing.metrics.testbed import classifier_adherence, ideal_edit_distance, prompt_targets

if TYPE_CHECKING:
    from probing.synth.classifier import AttributeClassifier

SET_METRICS = {
    "fad": "FAD compares two sets of clips (many edits): editing.metrics.frechet_audio_distance",
    "asb": "ASB ranks several methods (min-max normalised CLAP and LPAPS across them): "
           "editing.metrics.adherence_structure_balance",
    "amb": "AMB ranks several methods (min-max normalised CLAP and Chroma across them): "
           "editing.metrics.adherence_musicality_balance",
}


def score_edit(source: np.ndarray, edited: np.ndarray, sr: int, prompt: str, *,
               clap: ClapEmbedder | str | Path = DEFAULT_CLAP, lpaps: LPAPSNet | str | Path | None = None,
               ideal: np.ndarray | None = None, classifier: AttributeClassifier | None = None) -> dict[str, dict]:
    """Every per-edit metric of the suite for one (source, edited, prompt) triple.

    Args:
        source: the source clip, mono at `sr`.
        edited: the edited clip, mono at `sr`.
        sr: their sample rate.
        prompt: the target prompt of the edit.
        clap: a loaded CLAP, or a checkpoint id/folder (unavailable when it is not here).
        lpaps: a network from `load_lpaps`, or its weights file; None: LPAPS unavailable.
        ideal: the ground-truth edit (testbed), or None.
        classifier: the attribute classifier; default the shipped one.

    Returns:
        metric name -> {"value", "higher_is_better", "compares", ...} or {"unavailable": reason}.
        Names: clap, lpaps, chroma, melody_raw_pitch, melody_raw_chroma, fad, asb, amb,
        classifier_<attribute> (one per attribute the prompt names, else "classifier"),
        ideal_log_mel_distance, ideal_chroma_similarity, ideal_melody_raw_pitch, ideal_melody_raw_chroma.
    """
    edited_contour = pitch_contour(edited, sr)  # tracked once, scored against the source and the ideal
    scores = {
        "clap": _attempt(lambda: _clap_score(clap, edited, sr, prompt)),
        "lpaps": _attempt(lambda: _value(lpaps_distance(source, edited, sr, lpaps), False, "source, edited")),
        "chroma": _value(chroma_similarity(source, edited, sr), True, "source, edited"),
        **_melody_scores(source, edited_contour, sr, "source, edited", ""),
        **{name: {"unavailable": reason} for name, reason in SET_METRICS.items()},
        **_classifier_scores(edited, sr, prompt, classifier),
    }
    if ideal is None:
        unavailable = {"unavailable": "no ideal edit given (testbed: render it with melodia synth, same score seed)"}
        scores.update(dict.fromkeys(("ideal_log_mel_distance", "ideal_chroma_similarity", "ideal_melody_raw_pitch",
                                     "ideal_melody_raw_chroma"), unavailable))
    else:
        distance = ideal_edit_distance(edited, ideal, sr)
        scores["ideal_log_mel_distance"] = _value(distance["log_mel_distance"], False, "edited, ideal")
        scores["ideal_chroma_similarity"] = _value(distance["chroma_similarity"], True, "edited, ideal")
        scores.update(_melody_scores(ideal, edited_contour, sr, "ideal, edited", "ideal_"))
    return scores


def _melody_scores(reference: np.ndarray, edited: Contour, sr: int, compares: str, prefix: str) -> dict[str, dict]:
    """<prefix>melody_raw_pitch and <prefix>melody_raw_chroma of the edit's contour against `reference`'s."""
    try:
        melody = contour_accuracy(reference_contour(reference, sr), edited)  # one track per item, not per edit
    except MetricUnavailableError as error:
        return dict.fromkeys((f"{prefix}melody_raw_pitch", f"{prefix}melody_raw_chroma"), {"unavailable": str(error)})
    frames = {"voiced_frames": melody.voiced_frames}
    return {f"{prefix}melody_raw_pitch": _value(melody.raw_pitch, True, compares, **frames),
            f"{prefix}melody_raw_chroma": _value(melody.raw_chroma, True, compares, **frames)}


def _attempt(score: Callable[[], dict]) -> dict:
    """The metric's result, or {"unavailable": why} when it cannot run here."""
    try:
        return score()
    except MetricUnavailableError as error:
        return {"unavailable": str(error)}


def _clap_score(clap: ClapEmbedder | str | Path, edited: np.ndarray, sr: int, prompt: str) -> dict:
    embedder = clap if isinstance(clap, ClapEmbedder) else load_clap(clap)
    return _value(float(embedder.score([edited], sr, [prompt])[0]), True, "edited, prompt", checkpoint=embedder.name)


def _classifier_scores(edited: np.ndarray, sr: int, prompt: str, classifier) -> dict[str, dict]:
    from probing.synth.classifier import default_classifier

    classifier = classifier or default_classifier()
    targets = prompt_targets(prompt, classifier)
    if not targets:
        return {"classifier": {"unavailable": "the prompt names no testbed instrument, style or mood "
                                              "(see melodia synth --list)"}}
    return {f"classifier_{attribute}": _attempt(lambda: _classifier_score(edited, sr, target, attribute, classifier))
            for attribute, target in targets.items()}


def _classifier_score(edited: np.ndarray, sr: int, target: str, attribute: str, classifier) -> dict:
    adherence = classifier_adherence([edited], sr, target, attribute, classifier)
    return _value(adherence.probability, True, "edited, prompt", target=target, predicted=adherence.predicted[0])


def _value(value: float, higher_is_better: bool, compares: str, **extra) -> dict:
    return {"value": value, "higher_is_better": higher_is_better, "compares": compares, **extra}
