"""Captions of the synthetic dataset: templates from `datasets/synth/templates.yaml`, filled in.

Examples:
    >>> caption("violin", "waltz", "sad", template_id=0)
    'a sad waltz played on the violin'
"""
from __future__ import annotations

import re

import numpy as np

from probing.synth.classes import aliases, check_class, read_synth_yaml

_A_BEFORE_VOWEL = re.compile(r"\ba (?=[aeiou])")
_AN_BEFORE_CONSONANT = re.compile(r"\ban (?=[b-df-hj-np-tv-z])")


def templates() -> dict[int, str]:
    """Template id -> text with `{instrument}`, `{style}` and `{mood}` slots.

    Examples:
        >>> templates()[1]
        '{instrument}, {mood}, {style}'
    """
    return {int(key): str(text) for key, text in read_synth_yaml("templates.yaml")["templates"].items()}


def caption(instrument: str, style: str, mood: str, template_id: int,
            alias_rng: np.random.Generator | None = None) -> str:
    """Fill template `template_id`; with `alias_rng`, each slot may take a paraphrase instead.

    Examples:
        >>> caption("organ", "march", "energetic", 2)
        'march melody on the organ in an energetic mood'
    """
    known = templates()
    if template_id not in known:
        raise ValueError(f"unknown template id {template_id!r}; choose one of: {', '.join(map(str, known))}")
    words = {}
    for attribute, name in (("instrument", instrument), ("style", style), ("mood", mood)):
        check_class(attribute, name)
        choices = [name] + (aliases(attribute, name) if alias_rng is not None else [])
        words[attribute] = choices[int(alias_rng.integers(len(choices)))] if alias_rng is not None else name
    return _fix_articles(known[template_id].format(**words))


def _fix_articles(text: str) -> str:
    """'a' before a vowel becomes 'an', and 'an' before a consonant becomes 'a'."""
    text = _A_BEFORE_VOWEL.sub("an ", text)
    return _AN_BEFORE_CONSONANT.sub("a ", text)
