"""The names of the probing protocols (split protocols, feature families), importable without torch,
so the CLI checks them before loading anything.

Examples:
    >>> SPLITS, FAMILIES["cross"]
    (('template', 'random'), ('flat', 'word', 'keys'))
"""
from __future__ import annotations

SPLITS = ("template", "random")  # folds grouped by prompt template (the honest one), or shuffled prompts
FAMILIES = {"self": ("flat",), "cross": ("flat", "word", "keys")}  # feature families per kind (probing.features)
FEATURE_FAMILIES = tuple(dict.fromkeys(f for kind in FAMILIES.values() for f in kind))  # flat, word, keys
