"""Probe inputs read from a capture store: feature matrices per (layer, kind, family), plus the text baseline.

Feature families (what a probe reads from a layer's maps, pooled over the chosen steps, the
text-conditioned half when both CFG halves were kept):

- ``flat``: the maps flattened, query x key. Right for self-attention (keys are music cells,
  the same for every prompt). For cross-attention the key axis is token *positions*: a template
  that moves the attribute word moves the signal, and template-grouped folds cannot transfer it.
- ``word`` (cross only): the attribute's own slot word, its key columns summed over its tokens,
  at every query cell: the DAAM heat map of the word over the music. Needs the token spans that
  capture stores for slotted prompt sets on word-aligned models; one matrix per attribute.
- ``keys`` (cross only): a position-free summary of the key axis: the key mass averaged over
  queries, sorted, and each query cell's attention entropy. Works for any prompt.

Several modules of one kind in a layer (AudioLDM 2 has two cross-attentions per position) are
concatenated; ``word`` uses only the modules whose keys are the prompt's tokens.

Examples:
    >>> from probing.store import open_capture
    >>> store = open_capture("maps.zarr")                     # a store written by melodia capture
    >>> features = layer_features(store)                         # every family available
    >>> [f.key for f in features[:4]]                            # word: one matrix per attribute
    ['self:1/flat', 'cross:1/flat', 'cross:1/word', 'cross:1/keys']
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probing.errors import MelodiaError
from probing.protocols import FAMILIES, FEATURE_FAMILIES
from probing.store import ArraySpec, CaptureStore

TEXT_EMBEDDING = "text/embedding"  # store array: the prompt's pooled text-encoder output (capture writes it)
TOKEN_SPANS = "text/spans"  # store array: per prompt, each slot word's [start, stop) on the cross key axis
MAP_KINDS = ("self", "cross")


@dataclass(frozen=True)
class LayerFeatures:
    """One feature family of one (layer, kind) for every prompt of a store."""

    layer: int
    kind: str
    modules: tuple[str, ...]
    values: np.ndarray | dict[str, np.ndarray]  # (n_prompts, n_features) float32, or one per attribute
    family: str = "flat"

    @property
    def name(self) -> str:
        """The probe target, e.g. "cross:3"."""
        return f"{self.kind}:{self.layer}"

    @property
    def key(self) -> str:
        """Target and family, e.g. "cross:3/word"."""
        return f"{self.name}/{self.family}"


def map_specs(store: CaptureStore) -> list[ArraySpec]:
    """The store's attention-map arrays (not the text embedding), in layer order."""
    specs = [s for s in store.specs if s.attrs.get("kind") in MAP_KINDS]
    return sorted(specs, key=lambda s: (s.attrs["layer"], MAP_KINDS.index(s.attrs["kind"])))


def pooled_maps(spec: ArraySpec, maps: np.ndarray, steps: tuple[int, ...] | None) -> np.ndarray:
    """(prompt, step, [cfg], [head], query, key) -> (prompt, [head], query, key), mean over the chosen steps."""
    n_steps = maps.shape[1]
    if steps is not None:
        bad = [s for s in steps if not 0 <= s < n_steps]
        if bad:
            raise MelodiaError(f"step index {bad[0]} is outside the {n_steps} stored steps (0-{n_steps - 1})")
        maps = maps[:, list(steps)]
    pooled = maps.astype(np.float32).mean(axis=1)
    return pooled[:, 1] if "cfg" in spec.dims else pooled  # [uncond, cond]: the probe reads what the text changed


def word_maps(maps: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """(prompt, ..., key) maps and (prompt, 2) token ranges -> (prompt, ...): each prompt's word columns
    summed. A range that is missing (-1) or beyond the key axis gives zeros."""
    keys = np.arange(maps.shape[-1])
    start, stop = spans[:, :1], spans[:, 1:]
    valid = (start >= 0) & (stop <= maps.shape[-1])
    columns = ((keys >= start) & (keys < stop) & valid).astype(np.float32)  # (prompt, key)
    return np.einsum("p...k,pk->p...", maps, columns)


def key_summary(maps: np.ndarray) -> np.ndarray:
    """(prompt, [head], query, key) -> (prompt, features): sorted mean key mass and per-query entropy."""
    mass = -np.sort(-maps.mean(axis=-2), axis=-1)  # (prompt, [head], key), largest first
    rows = maps / np.clip(maps.sum(-1, keepdims=True), 1e-12, None)
    entropy = -(rows * np.log(np.clip(rows, 1e-12, None))).sum(-1)  # (prompt, [head], query)
    return np.concatenate([mass.reshape(len(maps), -1), entropy.reshape(len(maps), -1)], axis=1)


def word_features_unavailable(store: CaptureStore) -> str | None:
    """Why `store` cannot give word-aligned features, or None when it can."""
    if TOKEN_SPANS not in {s.name for s in store.specs}:
        return (f"{store.url} has no word token spans: capture a YAML prompt set with slots (such as "
                "datasets/probing/testbed.yaml) on a model whose cross-attention keys are its prompt tokens")
    if not any(s.attrs.get("word_keys") for s in map_specs(store)):
        return f"{store.url}: none of its cross-attention modules attends to the prompt's tokens"
    return None


def layer_features(store: CaptureStore, steps: tuple[int, ...] | None = None, prompts: np.ndarray | None = None,
                   families: tuple[str, ...] | None = None) -> list[LayerFeatures]:
    """Features of every (layer, kind, family) in the store, pooled over `steps` (indices into the stored
    steps). `families` (default: every family the store supports) limits them; asking for "word" from a
    store without token spans is an error."""
    done = store.done_mask()
    if not done.all():
        raise MelodiaError(f"{store.url}: {int((~done).sum())} of {len(done)} prompts are not captured yet; "
                           "finish the capture (re-run the same command) before probing")
    unknown = sorted(set(families or ()) - set(FEATURE_FAMILIES))
    if unknown:
        raise MelodiaError(f"unknown feature family {unknown[0]!r} (known: {', '.join(FEATURE_FAMILIES)})")
    no_words = word_features_unavailable(store)
    if families is not None and "word" in families and no_words:
        raise MelodiaError(no_words)
    wanted = set(families or FEATURE_FAMILIES) - ({"word"} if no_words else set())
    groups: dict[tuple[int, str], list[ArraySpec]] = {}
    for spec in map_specs(store):
        groups.setdefault((spec.attrs["layer"], spec.attrs["kind"]), []).append(spec)
    if not groups:
        raise MelodiaError(f"{store.url} holds no attention maps")
    rows = None if prompts is None else list(prompts)
    spans, slots = None, []
    if "word" in wanted:
        spans = store.read(TOKEN_SPANS, rows)
        slots = store.spec(TOKEN_SPANS).attrs["slots"]
    features = []
    for (layer, kind), specs in groups.items():
        pooled = [pooled_maps(s, store.read(s.name, rows), steps) for s in specs]
        paths = tuple(s.attrs["module"] for s in specs)
        families_here = [f for f in FAMILIES[kind] if f in wanted]
        if "flat" in families_here:
            features.append(LayerFeatures(layer, kind, paths,
                                          np.concatenate([p.reshape(len(p), -1) for p in pooled], axis=1)))
        aligned = [(s, p) for s, p in zip(specs, pooled) if s.attrs.get("word_keys")]
        if "word" in families_here and aligned:
            per_slot = {slot: np.concatenate([word_maps(p, spans[:, i]).reshape(len(p), -1) for _, p in aligned],
                                             axis=1)
                        for i, slot in enumerate(slots) if slot != "prompt"}
            features.append(LayerFeatures(layer, kind, tuple(s.attrs["module"] for s, _ in aligned), per_slot, "word"))
        if "keys" in families_here:
            features.append(LayerFeatures(layer, kind, paths, np.concatenate([key_summary(p) for p in pooled], axis=1),
                                          "keys"))
    return features


def text_features(store: CaptureStore) -> np.ndarray | None:
    """The prompts' pooled text embeddings (the text-only baseline), or None if the store has none."""
    if TEXT_EMBEDDING not in {s.name for s in store.specs}:
        return None
    return store.read(TEXT_EMBEDDING).astype(np.float32)
