"""The synthetic dataset's class lists (instrument, style, mood), read from `datasets/synth/`.

Examples:
    >>> from probing.synth.classes import class_lists
    >>> [len(class_lists()[a]) for a in ("instrument", "style", "mood")]
    [16, 11, 8]
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

from probing.paths import datasets_dir

ATTRIBUTES = ("instrument", "style", "mood")


@lru_cache(maxsize=None)
def read_synth_yaml(file_name: str) -> Any:
    """Parse one YAML file of `datasets/synth/` (cached; treat the result as read-only).

    Examples:
        >>> read_synth_yaml("classes.yaml")["mood"][0]["name"]
        'happy'
    """
    with open(datasets_dir() / "synth" / file_name, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def class_lists() -> dict[str, list[str]]:
    """Class names per attribute, in YAML order.

    Examples:
        >>> class_lists()["style"][:3]
        ['waltz', 'march', 'ballad']
    """
    entries = read_synth_yaml("classes.yaml")
    return {attribute: [entry["name"] for entry in entries[attribute]] for attribute in ATTRIBUTES}


def aliases(attribute: str, name: str) -> list[str]:
    """Caption paraphrases of one class (the name itself not included).

    Examples:
        >>> aliases("mood", "sad")
        ['melancholic', 'sorrowful']
    """
    check_class(attribute, name)
    entry = next(e for e in read_synth_yaml("classes.yaml")[attribute] if e["name"] == name)
    return list(entry.get("aliases", []))


def check_class(attribute: str, name: str) -> None:
    """Raise a one-line `ValueError` unless `name` is a class of `attribute`.

    Examples:
        >>> check_class("instrument", "piano")
        >>> check_class("instrument", "kazoo")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ValueError: unknown instrument 'kazoo'; choose one of: piano, violin, ...
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; choose one of: {', '.join(ATTRIBUTES)}")
    names = class_lists()[attribute]
    if name not in names:
        raise ValueError(f"unknown {attribute} {name!r}; choose one of: {', '.join(names)}")
