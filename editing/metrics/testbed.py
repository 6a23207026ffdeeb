"""Testbed metrics, where the synthesizer gives the truth: an independent classifier and the ideal edit.

Adherence by the attribute classifier of `probing.synth.classifier` (librosa features, fitted on
synthesizer renders, never on model output): an independent judge of "is it a violin now?" that
needs no downloaded weights; meaningful on testbed-like synthetic clips only. Distance to the
ideal edit: the same score rendered with the target attributes (`melodia synth`), compared with
`log_mel_distance` and `chroma_similarity`.

Examples:
    >>> from probing.synth import render_clip
    >>> ideal = render_clip("violin", "waltz", "calm", score_seed=0)         # the source's tune on the violin
    >>> classifier_adherence([ideal], 16000, "violin").probability > 0.5    # P(violin) by the classifier
    True
    >>> ideal_edit_distance(ideal, ideal, 16000)
    {'log_mel_distance': 0.0, 'chroma_similarity': 1.0...}
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from editing.metrics._common import MetricUnavailableError
from editing.metrics.spectral import chroma_similarity, log_mel_distance
from probing.errors import MelodiaError

if TYPE_CHECKING:
    from probing.synth.classifier import AttributeClassifier

# The classifier's rhythm features span 48 onset hops of 512 samples at 16 kHz (1.54 s); its
# training clips are 4.1 s long.
MIN_CLASSIFIER_SECONDS = 2.0


@dataclass(frozen=True)
class ClassifierAdherence:
    """How well clips match a target class, by the independent attribute classifier.

    probability: mean probability of the target class over the clips (higher is better).
    accuracy: fraction of clips whose most probable class is the target.
    predicted: the most probable class of each clip.
    """

    attribute: str
    target: str
    probability: float
    accuracy: float
    predicted: tuple[str, ...]


def classifier_adherence(waves: Sequence[np.ndarray], sr: int, target: str, attribute: str = "instrument",
                         classifier: AttributeClassifier | None = None) -> ClassifierAdherence:
    """Probability of, and accuracy on, the target class of `attribute` for the clips.

    Args:
        waves: mono clips at `sr` (the classifier resamples to 16 kHz).
        target: a class of `attribute`, e.g. "violin" (see `melodia synth --list`).
        attribute: "instrument", "style" or "mood".
        classifier: an `AttributeClassifier`; default the shipped one.

    Raises:
        MetricUnavailableError: a clip is shorter than 2 s.
    """
    from probing.synth.classifier import default_classifier

    classifier = classifier or default_classifier()
    if attribute not in classifier.attributes:
        raise MelodiaError(f"the classifier has no {attribute!r} head; "
                           f"choose one of: {', '.join(classifier.attributes)}")
    classes = classifier.heads[attribute].classes
    if target not in classes:
        raise MelodiaError(f"unknown {attribute} {target!r}; choose one of: {', '.join(classes)}")
    if not waves:
        raise MelodiaError("classifier adherence needs at least one clip")
    if min(len(w) for w in waves) < MIN_CLASSIFIER_SECONDS * sr:
        raise MetricUnavailableError(f"the testbed classifier needs clips of at least {MIN_CLASSIFIER_SECONDS} s "
                                     "(it is fitted on 4.1 s synthesizer clips)")
    probabilities = [classifier.predict_proba(w, sr, attribute) for w in waves]
    predicted = tuple(max(p, key=p.__getitem__) for p in probabilities)
    return ClassifierAdherence(attribute, target, float(np.mean([p[target] for p in probabilities])),
                               float(np.mean([name == target for name in predicted])), predicted)


def prompt_targets(prompt: str, classifier=None) -> dict[str, str]:
    """The testbed classes a prompt names: attribute -> class, where exactly one class is named.

    Examples:
        >>> prompt_targets("a sad waltz played on the violin")
        {'instrument': 'violin', 'style': 'waltz', 'mood': 'sad'}
    """
    from probing.synth.classifier import default_classifier

    classifier = classifier or default_classifier()
    targets = {}
    for attribute in classifier.attributes:
        named = [name for name in classifier.heads[attribute].classes if _names(prompt, name)]
        if len(named) == 1:
            targets[attribute] = named[0]
    return targets


def _names(prompt: str, class_name: str) -> bool:
    """Whether `prompt` names the class as a word ("synth-pad" also as "synth pad"), any case."""
    pattern = "[- ]".join(map(re.escape, class_name.split("-")))
    return re.search(rf"\b{pattern}\b", prompt, flags=re.IGNORECASE) is not None


def ideal_edit_distance(edited: np.ndarray, ideal: np.ndarray, sr: int) -> dict[str, float]:
    """Distance of an edit to the ground-truth ideal edit: log-mel distance (lower) and chroma similarity (higher)."""
    return {"log_mel_distance": log_mel_distance(edited, ideal, sr),
            "chroma_similarity": chroma_similarity(edited, ideal, sr)}
