"""LayerProfile: what every attention layer encodes, as versioned JSON, and the editor's layer choice.

A profile holds one cross-validated `ProbeScore` per (attribute, target, feature family, probe
kind, split): targets are "self:L" / "cross:L" (layer L's maps) and "text" (the prompt embedding
alone), plus the same probes on a randomly initialised denoiser's maps when that baseline was
captured. `select_edit_layers` turns it into the self-attention band Melodia injects, with the
reasons; it refuses a profile without the random-denoiser baseline unless told otherwise.

Schema (version 2): {"format": "melodia.layer_profile", "version": 2, "model", "n_layers",
"attributes": {name: [classes]}, "settings": {...}, "scores": [ProbeScore...],
"random_denoiser": [ProbeScore...]}; a ProbeScore is {"attribute", "target", "probe", "accuracy",
"ci": [lo, hi], "control", "control_chance", "chance", "n_prompts", "n_groups", "features",
"split"}. Accuracies are balanced accuracies. Version 1 profiles (one family, template split) load.

Examples:
    >>> profile = build_profile(open_capture("maps.zarr"))
    >>> profile.save("profile.json")
    >>> print(LayerProfile.load("profile.json").select_edit_layers().explain())
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probing.errors import MelodiaError
from probing.features import layer_features, text_features, word_features_unavailable
from probing.paths import write_json
from probing.probes import ProbeScore, ProbeSettings, probe_features
from probing.protocols import SPLITS
from probing.store import CaptureStore

PROFILE_FORMAT = "melodia.layer_profile"
PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)
DEFAULT_BAND_FRACTION = 7 / 16  # AudioLDM 2's documented default, self:8-14 of 16 layers


@dataclass(frozen=True)
class LayerSelection:
    """The self-attention layers to inject, as a layer spec, with the rule's reasons."""

    spec: str
    layers: tuple[int, ...]
    reasons: tuple[str, ...]

    def explain(self) -> str:
        return f"selected {self.spec}\n" + "\n".join(f"  - {r}" for r in self.reasons)


@dataclass
class LayerProfile:
    """Probe scores of every layer x kind x attribute of one model (see the module docstring)."""

    model: str
    n_layers: int
    attributes: dict[str, list[str]]
    scores: list[ProbeScore]
    random_denoiser: list[ProbeScore] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    # ---- reading ---------------------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        """The split protocols the profile holds, the honest one ("template") first."""
        return [s for s in SPLITS if any(score.split == s for score in self.scores)]

    @property
    def has_baseline(self) -> bool:
        return bool(self.random_denoiser)

    def families(self, kind: str) -> list[str]:
        """Feature families probed for `kind` ("self"/"cross"/"text")."""
        found = {s.features for s in self.scores if s.target.startswith(f"{kind}:") or s.target == kind}
        return [f for f in ("flat", "word", "keys", "embedding") if f in found]

    def primary_family(self, kind: str) -> str:
        """The family a headline number uses: word-aligned maps for cross-attention when the store had
        token spans, else the position-free key summary; the flattened maps for self-attention."""
        families = self.families(kind)
        for family in (("word", "keys", "flat") if kind == "cross" else ("flat",)):
            if family in families:
                return family
        return "flat"

    def score(self, attribute: str, target: str, probe: str = "mlp", random_denoiser: bool = False,
              features: str | None = None, split: str = "template") -> ProbeScore | None:
        """The score of one probe (family default: `primary_family`), or None when it was not run."""
        pool = self.random_denoiser if random_denoiser else self.scores
        family = features or ("embedding" if target == "text" else self.primary_family(target.split(":")[0]))
        return next((s for s in pool if (s.attribute, s.target, s.probe, s.features, s.split)
                     == (attribute, target, probe, family, split)), None)

    def curve(self, attribute: str, kind: str, probe: str = "mlp", random_denoiser: bool = False,
              value: str = "accuracy", features: str | None = None, split: str = "template") -> np.ndarray:
        """`value` ("accuracy", "control", "ci_low", "ci_high") per layer 1..n_layers (NaN where not probed)."""
        out = np.full(self.n_layers, np.nan)
        for layer in range(1, self.n_layers + 1):
            s = self.score(attribute, f"{kind}:{layer}", probe, random_denoiser, features, split)
            if s is not None:
                out[layer - 1] = {"accuracy": s.accuracy, "control": s.control, "ci_low": s.ci[0],
                                  "ci_high": s.ci[1]}[value]
        return out

    def decodability(self, kind: str = "self", probe: str = "mlp", above_random: bool = True) -> np.ndarray:
        """Per layer, the most decodable attribute's accuracy rescaled so chance = 0 and perfect = 1.

        With `above_random` and a random-denoiser baseline in the profile, the accuracy counts only
        above the baseline's (what a random network's maps show as well is not learned): the
        excess over it, in the same units. NaN where a layer was not probed.
        """
        rescaled = []
        for attribute, classes in self.attributes.items():
            chance = 1 / len(classes)
            floor = np.full(self.n_layers, chance)
            random = self.curve(attribute, kind, probe, random_denoiser=True)
            if above_random and not np.isnan(random).all():
                floor = np.fmax(floor, random)
            rescaled.append(np.clip((self.curve(attribute, kind, probe) - floor) / (1 - chance), 0, 1))
        return np.fmax.reduce(np.stack(rescaled), axis=0) if rescaled else np.full(self.n_layers, np.nan)

    def best_layers(self, probe: str = "mlp") -> list[dict]:
        """Per split, attribute, kind and feature family: the most decodable layer, with its CI, its
        random-denoiser baseline (same layer; None without one), its control and the text-only score."""
        rows = []
        for split in self.splits:
            for attribute, classes in self.attributes.items():
                text = self.score(attribute, "text", probe, split=split)
                for kind in ("self", "cross"):
                    for family in self.families(kind):
                        scored = [s for layer in range(1, self.n_layers + 1)
                                  if (s := self.score(attribute, f"{kind}:{layer}", probe, False, family, split))]
                        if not scored:
                            continue
                        best = max(scored, key=lambda s: s.accuracy)
                        random = self.score(attribute, best.target, probe, True, family, split)
                        rows.append({"split": split, "attribute": attribute, "kind": kind, "features": family,
                                     "layer": best.target, "accuracy": best.accuracy, "ci": best.ci,
                                     "random_denoiser": None if random is None else random.accuracy,
                                     "control": best.control, "control_chance": best.control_chance,
                                     "chance": 1 / len(classes), "text": None if text is None else text.accuracy})
        return rows

    # ---- the editor's layer choice ---------------------------------------------------------
    def select_edit_layers(self, width: int | None = None, require_baseline: bool = True) -> LayerSelection:
        """The contiguous band of self-attention layers where the attributes are least decodable.

        Rule: score each layer by its self-attention decodability (max over attributes of the MLP
        probe's balanced accuracy, rescaled chance -> 0, perfect -> 1; above the random-denoiser
        baseline when the profile has one, see `decodability`); choose the band of `width`
        layers (default: 7/16 of the layers, AudioLDM 2's default band width) with the lowest mean;
        ties go to the deeper band (decoder side). Injecting source Q/K there carries the source's
        structure with the least of its instrument, style and mood. Deterministic.

        Without the random-denoiser baseline a random network's decodability cannot be told from a
        learned one: refused (MelodiaError) unless `require_baseline=False`, which the reasons say.
        """
        if require_baseline and not self.has_baseline:
            raise MelodiaError("the profile has no random-denoiser baseline, so a layer's decodability cannot be told "
                               "from what a random network shows: capture one (melodia capture ... --random-denoiser 0) "
                               "and probe with --random-baseline, or pass --no-baseline to select anyway")
        scores = self.decodability("self")
        probed = ~np.isnan(scores)
        if not probed.any():
            raise MelodiaError("the profile has no self-attention probe scores; capture self-attention layers "
                               "(--layers * or self:*) and probe again")
        width = width or max(1, round(self.n_layers * DEFAULT_BAND_FRACTION))
        width = min(width, self.n_layers)
        filled = np.where(probed, scores, 1.0)  # an unprobed layer is never preferred
        means = [filled[start:start + width].mean() for start in range(self.n_layers - width + 1)]
        best = min(range(len(means)), key=lambda start: (round(means[start], 9), -start))
        layers = tuple(range(best + 1, best + width + 1))
        outside = np.delete(filled, np.arange(best, best + width))
        cross = self.decodability("cross")
        floor = "the random denoiser's accuracy" if self.random_denoiser else "chance"
        spread = max(means) - min(means)
        reasons = (
            f"self-attention decodability per layer (0 = {floor}, 1 = perfect): "
            + ", ".join(f"{i + 1}:{v:.2f}" for i, v in enumerate(scores) if not np.isnan(v)),
            f"band {layers[0]}-{layers[-1]} ({width} layers) has the lowest mean, {means[best]:.2f}"
            + (f", vs {outside.mean():.2f} outside it" if outside.size else ""),
            f"cross-attention decodability, for comparison: mean {np.nanmean(cross):.2f}"
            if not np.isnan(cross).all() else "no cross-attention scores in the profile",
            *([f"the bands differ by at most {spread:.2f}: the profile does not tell the layers apart, and the "
               "band is the tie-break (the deepest); prefer the family default or an editing ablation"]
              if spread < 0.05 else []),
            *([f"only {int(probed.sum())} of {self.n_layers} self-attention layers were probed and "
               f"{int((~probed[best:best + width]).sum())} of the band's {width} were not (scored as fully decodable): "
               "capture --layers self:* for a real selection"] if not probed.all() else []),
            *(["no random-denoiser baseline (--no-baseline): what a random network's maps show counts as encoded"]
              if not self.has_baseline else []),
            "decodable is not the same as used: check the band with `melodia bench --ablation layers`",
        )
        return LayerSelection(f"self:{layers[0]}-{layers[-1]}", layers, reasons)

    # ---- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "model": self.model, "n_layers": self.n_layers,
                "attributes": self.attributes, "settings": self.settings,
                "scores": [s.to_json() for s in self.scores],
                "random_denoiser": [s.to_json() for s in self.random_denoiser]}

    @classmethod
    def from_json(cls, data: dict) -> LayerProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise MelodiaError("not a melodia layer profile (no 'format': 'melodia.layer_profile')")
        if data.get("version") not in READABLE_VERSIONS:
            raise MelodiaError(f"layer profile version {data.get('version')} is not supported "
                               f"(this melodia reads versions {', '.join(map(str, READABLE_VERSIONS))})")
        return cls(data["model"], int(data["n_layers"]), {k: list(v) for k, v in data["attributes"].items()},
                   [ProbeScore.from_json(s) for s in data["scores"]],
                   [ProbeScore.from_json(s) for s in data.get("random_denoiser", [])], dict(data.get("settings", {})))

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically (never half-written)."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> LayerProfile:
        path = Path(path)
        if not path.is_file():
            raise MelodiaError(f"layer profile {path} does not exist (make one with `melodia probe STORE -o {path}`)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise MelodiaError(f"layer profile {path} is not JSON") from None
        return cls.from_json(data)


def labelled(store: CaptureStore, attributes: list[str] | None) -> dict[str, list[str]]:
    """The store's labels of `attributes` (default: all); MelodiaError when it has none of them."""
    labels = store.labels if attributes is None else {a: store.labels[a] for a in attributes if a in store.labels}
    missing = sorted(set(attributes or []) - set(store.labels))
    if missing or not labels:
        raise MelodiaError(f"{store.url} has no labels{' ' + ', '.join(missing) if missing else ''} to probe (it was captured from a "
                           f"plain prompt list?); capture a YAML prompt set such as datasets/probing/testbed.yaml")
    return labels


def _probe_store(store: CaptureStore, labels: dict[str, list[str]], settings: ProbeSettings,
                 steps: tuple[int, ...] | None, with_text: bool, progress, splits: tuple[str, ...],
                 families: tuple[str, ...] | None) -> list[ProbeScore]:
    features = {f.key: f.values for f in layer_features(store, steps, families=families)}
    text = text_features(store) if with_text else None
    if text is not None:
        features["text"] = text
    return probe_features(features, labels, store.template_ids, settings, progress=progress, splits=splits)


def check_baseline(store: CaptureStore, random_store: CaptureStore) -> None:
    """The random-denoiser store must hold the same prompts, captured with the same noise protocol."""
    if random_store.prompts != store.prompts:
        raise MelodiaError(f"{random_store.url} holds other prompts than {store.url}; capture the random "
                           "baseline from the same prompt set")
    if random_store.identity.get("random_denoiser") is None:
        raise MelodiaError(f"{random_store.url} was not captured with --random-denoiser")
    protocol = {k: [s.identity.get(k) for s in (store, random_store)] for k in ("seed_per_prompt", "steps", "seed")}
    differing = [f"{k} {a} vs {b}" for k, (a, b) in protocol.items() if a != b]
    if differing:
        raise MelodiaError(f"{random_store.url} was captured with another protocol than {store.url} "
                           f"({', '.join(differing)}); capture the baseline with the same --steps, --seed and noise")


def build_profile(store: CaptureStore, settings: ProbeSettings = ProbeSettings(),
                  random_store: CaptureStore | None = None, attributes: list[str] | None = None,
                  steps: tuple[int, ...] | None = None, progress=None, splits: tuple[str, ...] = SPLITS,
                  families: tuple[str, ...] | None = None) -> LayerProfile:
    """Probe every (layer, kind, feature family) x attribute of `store` under each split (and the same on
    `random_store`, the random-denoiser baseline captured from the same prompts) into a LayerProfile."""
    labels = labelled(store, attributes)
    if random_store is not None:
        check_baseline(store, random_store)
    scores = _probe_store(store, labels, settings, steps, True, progress, splits, families)
    random_scores = [] if random_store is None else _probe_store(random_store, labels, settings, steps, False,
                                                                 progress, splits, families)
    table = store.attrs.get("layer_table", {})
    n_layers = table.get("n_layers") or max(s.attrs["layer"] for s in store.specs if "layer" in s.attrs)
    classes = {a: sorted(set(v)) for a, v in labels.items()}
    meta = {"probe": settings.to_json(), "steps_pooled": "all" if steps is None else list(steps),
            "store": store.url, "prompt_set": store.attrs.get("prompt_set"), "capture": store.identity,
            "random_store": None if random_store is None else random_store.url, "splits": list(splits),
            "word_features": word_features_unavailable(store) or "available"}
    return LayerProfile(store.identity.get("model", "?"), int(n_layers), classes, scores, random_scores, meta)


def _cell(profile, attribute: str, target: str, family: str, split: str) -> str:
    s = profile.score(attribute, target, features=family, split=split)
    if s is None:
        return "-"
    random = profile.score(attribute, target, random_denoiser=True, features=family, split=split)
    return (f"{s.accuracy:.0%} [{s.ci[0]:.0%}-{s.ci[1]:.0%}]" + (f" r{random.accuracy:.0%}" if random else "")
            + f" c{s.control:.0%}")


def format_profile(profile, selection) -> str:
    """Plain-text tables: per split, attribute and layer, each feature family's accuracy with its CI,
    random-denoiser baseline (r) and control (c); then the selection (or why there is none)."""
    columns = [("self", f) for f in profile.families("self")] + [("cross", f) for f in profile.families("cross")]
    lines = []
    for split in profile.splits:
        for attribute, classes in profile.attributes.items():
            control = profile.score(attribute, f"{columns[0][0]}:1", features=columns[0][1], split=split)
            lines.append(f"{attribute} ({len(classes)} classes, chance {1 / len(classes):.1%}), split {split}: "
                         "balanced accuracy [95% CI], r = random denoiser, c = control"
                         + (f" (chance {control.control_chance:.0%})" if control else ""))
            lines.append(f"{'layer':>5}  " + "  ".join(f"{f'{kind}/{family}':>26}" for kind, family in columns))
            for layer in range(1, profile.n_layers + 1):
                cells = [_cell(profile, attribute, f"{kind}:{layer}", family, split) for kind, family in columns]
                lines.append(f"{layer:>5}  " + "  ".join(f"{c:>26}" for c in cells))
            text = profile.score(attribute, "text", split=split)
            if text is not None:
                lines.append(f"{'text':>5}  text embedding alone: {text.accuracy:.0%} "
                             f"[{text.ci[0]:.0%}-{text.ci[1]:.0%}]")
            lines.append("")
    lines.append("best layer per split, attribute, kind and feature family (r = random denoiser at that layer, "
                 "c = control):")
    for row in profile.best_layers():
        random = "" if row["random_denoiser"] is None else f" r{row['random_denoiser']:.0%}"
        text = "" if row["text"] is None else f", text {row['text']:.0%}"
        lines.append(f"  {row['split']:8} {row['attribute']:10} {row['kind'] + '/' + row['features']:10} "
                     f"{row['layer']:>8} {row['accuracy']:4.0%} [{row['ci'][0]:.0%}-{row['ci'][1]:.0%}]{random} "
                     f"c{row['control']:.0%} (chance {row['chance']:.0%}{text})")
    lines.append("")
    lines.append(selection.explain() if selection else
                 "no injection band selected: the profile has no random-denoiser baseline (give --random-baseline, "
                 "or --no-baseline to select without it)")
    return "\n".join(lines)
