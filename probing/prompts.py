"""Prompt sets for capture and probing: YAML sets with labels and template ids, or plain text files.

A YAML prompt set names its attributes (class lists), its caption templates (ids kept, so probes
can split by template), and optionally `sample: N` balanced random combinations instead of the
full product. `attributes_from: synth` / `templates_from: synth` reuse the synthetic dataset's
lists. A plain text file is one prompt per line (no labels, no slots).

Each prompt of a YAML set also keeps the character span of every slot word in it (`slot_spans`),
so capture can find the tokens of "violin" wherever the template put it.

Examples:
    >>> prompts = load_prompts(datasets_dir() / "probing" / "testbed.yaml")
    >>> prompts.prompts[0], prompts.labels["instrument"][0], prompts.template_ids[0]
    >>> start, stop = prompts.slot_spans[0]["instrument"]; prompts.prompts[0][start:stop]
"""
from __future__ import annotations

import itertools
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from probing.errors import MelodiaError
from probing.paths import datasets_dir


@dataclass(frozen=True)
class PromptSet:
    """Prompts with per-attribute labels, the template id each prompt came from (-1: none) and, per
    prompt, the character span [start, stop) of each attribute's slot word (empty without templates)."""

    prompts: list[str]
    labels: dict[str, list[str]] = field(default_factory=dict)
    template_ids: list[int] = field(default_factory=list)
    name: str = ""
    slot_spans: list[dict[str, tuple[int, int]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def _synth_lists() -> tuple[dict[str, list[str]], dict[int, str]]:
    from probing.synth import class_lists, templates

    return class_lists(), templates()


def _balanced_combinations(attributes: dict[str, list[str]], n: int, rng: np.random.Generator) -> list[dict]:
    columns = {}
    for name, classes in attributes.items():
        cycle = np.resize(np.arange(len(classes)), n)
        columns[name] = [classes[i] for i in rng.permutation(cycle)]
    return [{name: columns[name][i] for name in attributes} for i in range(n)]


def fill_template(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """`template.format(**values)` and the character span of each filled slot (first occurrence).

    >>> fill_template("a {mood} waltz on {instrument}", {"mood": "sad", "instrument": "violin"})
    ('a sad waltz on violin', {'mood': (2, 5), 'instrument': (15, 21)})
    """
    text, spans = "", {}
    for literal, field_name, spec, conversion in string.Formatter().parse(template):
        text += literal
        if field_name is None:
            continue
        if field_name not in values:
            raise KeyError(field_name)
        value = format(values[field_name], spec or "")
        spans.setdefault(field_name, (len(text), len(text) + len(value)))
        text += value
    return text, spans


def expand_prompt_set(spec: dict, name: str = "") -> PromptSet:
    """A parsed YAML prompt set -> PromptSet (deterministic for its `seed`)."""
    synth_attributes, synth_templates = _synth_lists() if "synth" in (
        spec.get("attributes_from"), spec.get("templates_from")) else ({}, {})
    attributes = synth_attributes if spec.get("attributes_from") == "synth" else spec.get("attributes", {})
    templates = synth_templates if spec.get("templates_from") == "synth" else spec.get("templates", {})
    if not attributes or not templates:
        raise MelodiaError(f"prompt set {name!r} needs 'attributes' (or attributes_from: synth) and 'templates'")
    templates = {int(k): v for k, v in templates.items()}
    rng = np.random.default_rng(spec.get("seed", 0))
    if "sample" in spec:
        combos = _balanced_combinations(attributes, int(spec["sample"]), rng)
        template_ids = [sorted(templates)[i % len(templates)] for i in rng.permutation(len(combos))]
    else:
        product = [dict(zip(attributes, values)) for values in itertools.product(*attributes.values())]
        pairs = [(combo, t) for t in sorted(templates) for combo in product]
        combos, template_ids = [c for c, _ in pairs], [t for _, t in pairs]
    try:
        filled = [fill_template(templates[t], combo) for combo, t in zip(combos, template_ids)]
    except KeyError as missing:
        raise MelodiaError(f"prompt set {name!r}: a template uses {missing} which is not an attribute") from None
    labels = {attribute: [combo[attribute] for combo in combos] for attribute in attributes}
    return PromptSet([text for text, _ in filled], labels, template_ids, spec.get("name", name),
                     [spans for _, spans in filled])


def load_prompts(path: str | Path) -> PromptSet:
    """Read a prompt set (.yaml/.yml) or a plain text file (one prompt per line; # comments skipped)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (datasets_dir() / "probing" / path.name).exists():
        path = datasets_dir() / "probing" / path.name
    if not path.is_file():
        raise MelodiaError(f"prompts file {path} does not exist (give a .yaml prompt set or a .txt file, one "
                           f"prompt per line; shipped sets are in {datasets_dir() / 'probing'})")
    if path.suffix in (".yaml", ".yml"):
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise MelodiaError(f"prompts file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(spec, dict):
            raise MelodiaError(f"prompts file {path} must be a YAML mapping with attributes and templates")
        prompt_set = expand_prompt_set(spec, path.stem)
    else:
        lines = [line.strip() for line in path.read_text().splitlines()]
        prompts = [line for line in lines if line and not line.startswith("#")]
        prompt_set = PromptSet(prompts, {}, [-1] * len(prompts), path.stem)
    if not prompt_set.prompts:
        raise MelodiaError(f"prompts file {path} holds no prompts")
    return prompt_set
