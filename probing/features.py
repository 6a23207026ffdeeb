"""Probe inputs read from a capture store: one feature matrix per (layer, kind), plus the text baseline.

A layer's features are its modules' reduced maps (the text-conditioned half when both CFG halves
were kept), averaged over the chosen denoising steps and flattened: (n_prompts, n_features).
A layer with several modules of one kind (AudioLDM 2 has two cross-attentions per position)
concatenates them.

Examples:
    >>> store = open_capture("maps.zarr")
    >>> layers = layer_features(store)                     # all steps pooled
    >>> layers[0].layer, layers[0].kind, layers[0].values.shape
    (1, 'self', (1024, 4096))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probing.errors import MelodiaError
from probing.store import ArraySpec, CaptureStore

TEXT_EMBEDDING = "text/embedding"  # store array: the prompt's pooled text-encoder output (capture writes it)
MAP_KINDS = ("self", "cross")


@dataclass(frozen=True)
class LayerFeatures:
    """The flattened maps of one (layer, kind) for every prompt of a store."""

    layer: int
    kind: str
    modules: tuple[str, ...]
    values: np.ndarray  # (n_prompts, n_features) float32

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.layer}"


def map_specs(store: CaptureStore) -> list[ArraySpec]:
    """The store's attention-map arrays (not the text embedding), in layer order."""
    specs = [s for s in store.specs if s.attrs.get("kind") in MAP_KINDS]
    return sorted(specs, key=lambda s: (s.attrs["layer"], MAP_KINDS.index(s.attrs["kind"])))


def _pooled(spec: ArraySpec, maps: np.ndarray, steps: tuple[int, ...] | None) -> np.ndarray:
    """(prompt, step, [cfg], [head], query, key) -> (prompt, features), mean over the chosen steps."""
    n_steps = maps.shape[1]
    if steps is not None:
        bad = [s for s in steps if not 0 <= s < n_steps]
        if bad:
            raise MelodiaError(f"step index {bad[0]} is outside the {n_steps} stored steps (0-{n_steps - 1})")
        maps = maps[:, list(steps)]
    pooled = maps.astype(np.float32).mean(axis=1)
    if "cfg" in spec.dims:
        pooled = pooled[:, 1]  # [uncond, cond]: the probe reads what the text changed
    return pooled.reshape(len(pooled), -1)


def layer_features(store: CaptureStore, steps: tuple[int, ...] | None = None,
                   prompts: np.ndarray | None = None) -> list[LayerFeatures]:
    """Features of every (layer, kind) in the store, pooled over `steps` (indices into the stored steps)."""
    done = store.done_mask()
    if not done.all():
        raise MelodiaError(f"{store.url}: {int((~done).sum())} of {len(done)} prompts are not captured yet; "
                           "finish the capture (re-run the same command) before probing")
    groups: dict[tuple[int, str], list[ArraySpec]] = {}
    for spec in map_specs(store):
        groups.setdefault((spec.attrs["layer"], spec.attrs["kind"]), []).append(spec)
    if not groups:
        raise MelodiaError(f"{store.url} holds no attention maps")
    features = []
    for (layer, kind), specs in groups.items():
        blocks = [_pooled(s, store.read(s.name, None if prompts is None else list(prompts)), steps) for s in specs]
        features.append(LayerFeatures(layer, kind, tuple(s.attrs["module"] for s in specs),
                                      np.concatenate(blocks, axis=1)))
    return features


def text_features(store: CaptureStore) -> np.ndarray | None:
    """The prompts' pooled text embeddings (the text-only baseline), or None if the store has none."""
    if TEXT_EMBEDDING not in {s.name for s in store.specs}:
        return None
    return store.read(TEXT_EMBEDDING).astype(np.float32)
