"""Which parts of a map a probe reads, and which layers an all-layer probe relies on (captum).

`map_attribution`: Integrated Gradients of a fitted probe's class logit with respect to its input
map, from the mean map as baseline (never zeros: an all-zero attention map is not a "neutral"
map), averaged over the prompts of each class and folded back to (query time, query freq, key).
`layer_attribution`: one probe on all layers at once, and the drop in its true-class probability
when one layer's maps are replaced by their mean (captum FeatureAblation with a layer mask),
measured on held-out prompts when template ids are given. Layers that are decodable alone but
score low here are redundant with the others.

Examples:
    >>> probe = MLPProbe().fit(layer.values, labels)
    >>> heat = map_attribution(probe, layer.values, labels, query_grid=(16, 4))   # (16, 4, keys)
    >>> layer_attribution(layer_features(store), labels, groups=store.template_ids)  # {"self:1": 0.01, ...}
"""
from __future__ import annotations

import numpy as np
import torch

from probing.features import LayerFeatures
from probing.probes import MLPProbe, ProbeSettings, grouped_folds


def map_attribution(probe: MLPProbe, maps: np.ndarray, labels: list[str], query_grid: tuple[int, int],
                    steps: int = 32) -> np.ndarray:
    """Mean |IG attribution| per map cell for the true class: (n, Q*K) maps -> (time, freq, keys)."""
    from captum.attr import IntegratedGradients

    x = torch.as_tensor(np.asarray(maps, np.float32))
    index = {c: i for i, c in enumerate(probe.classes_)}
    target = torch.as_tensor([index[str(v)] for v in labels])
    baseline = x.mean(0, keepdim=True).expand_as(x)
    attributions = IntegratedGradients(probe.forward).attribute(x, baselines=baseline, target=target, n_steps=steps)
    n_queries = query_grid[0] * query_grid[1]
    heat = attributions.abs().mean(0).reshape(n_queries, -1)
    return heat.reshape(*query_grid, -1).detach().numpy()


def _unit_variance(values: np.ndarray) -> np.ndarray:
    """A layer's feature block scaled so its total variance (summed over features) is 1."""
    values = np.asarray(values, np.float32)
    total_std = float(np.sqrt(values.var(axis=0).sum()))
    return values / total_std if total_std > 0 else values


def layer_attribution(layers: list[LayerFeatures], labels: list[str],
                      settings: ProbeSettings = ProbeSettings(), groups=None) -> dict[str, float]:
    """Drop of an all-layer probe's true-class probability when each layer is ablated to its mean map.

    With `groups` (template id per prompt) the probe is fitted on the training folds and the drop
    is measured on held-out prompts (grouped folds, `settings.folds`); use it whenever prompts are
    few: fitted and scored on the same prompts, an MLP with more features than prompts is certain
    of every answer and no single layer's ablation moves it. Held-out prompts whose class is absent
    from their training folds are skipped. Without `groups`: fitted and scored on all prompts.
    """
    from captum.attr import FeatureAblation

    # Each layer's block is scaled to unit total variance first: the all-layer probe's PCA would
    # otherwise see only the layers with the largest raw variance, whatever they encode (on the
    # testbed a cross map, spread over 16 text tokens, varies 10-30x more than a self map).
    x = torch.as_tensor(np.concatenate([_unit_variance(layer.values) for layer in layers], axis=1))
    y = np.asarray([str(v) for v in labels])
    mask = torch.cat([torch.full((layer.values.shape[1],), i) for i, layer in enumerate(layers)])[None]
    everything = np.arange(len(y))
    splits = [(everything, everything)] if groups is None else [
        (np.setdiff1d(everything, test), test) for test in grouped_folds(np.asarray(groups), settings.folds)]
    drops = []
    for train, test in splits:
        probe = MLPProbe.from_settings(settings).fit(x[train].numpy(), y[train])
        index = {c: i for i, c in enumerate(probe.classes_)}
        scored = [i for i in test if y[i] in index]
        if not scored:
            continue
        target = torch.as_tensor([index[y[i]] for i in scored])

        def probability(inputs: torch.Tensor, probe: MLPProbe = probe) -> torch.Tensor:
            return torch.softmax(probe.forward(inputs), -1)

        with torch.no_grad():
            drops.append(FeatureAblation(probability).attribute(x[scored], baselines=x[train].mean(0, keepdim=True),
                                                                target=target, feature_mask=mask))
    if not drops:
        raise ValueError("no held-out prompt has a class seen in its training folds; give more prompts per class")
    drop = torch.cat(drops)
    first_column = np.cumsum([0] + [layer.values.shape[1] for layer in layers[:-1]])
    return {layer.name: float(drop[:, column].mean()) for layer, column in zip(layers, first_column)}
