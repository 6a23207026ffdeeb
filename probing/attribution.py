"""Which parts of a map a probe reads, and which layers an all-layer probe relies on (captum).

`map_attribution`: Integrated Gradients of a fitted probe's class logit with respect to its input
map, from the mean map as baseline (never zeros: an all-zero attention map is not a "neutral"
map), averaged over the prompts of each class and folded back to (query time, query freq, key).
`layer_attribution`: one probe on all layers at once, and the drop in its true-class probability
when one layer's maps are replaced by their mean (captum FeatureAblation with a layer mask).
Layers that are decodable alone but score low here are redundant with the others.

Examples:
    >>> probe = MLPProbe().fit(layer.values, labels)
    >>> heat = map_attribution(probe, layer.values, labels, query_grid=(16, 4))   # (16, 4, keys)
    >>> layer_attribution(layer_features(store), labels)                          # {"self:1": 0.01, ...}
"""
from __future__ import annotations

import numpy as np
import torch

from probing.features import LayerFeatures
from probing.probes import MLPProbe, ProbeSettings


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


def layer_attribution(layers: list[LayerFeatures], labels: list[str],
                      settings: ProbeSettings = ProbeSettings()) -> dict[str, float]:
    """Drop of an all-layer probe's true-class probability when each layer is ablated to its mean map."""
    from captum.attr import FeatureAblation

    x = torch.as_tensor(np.concatenate([layer.values for layer in layers], axis=1))
    probe = MLPProbe(settings).fit(x.numpy(), labels)
    mask = torch.cat([torch.full((layer.values.shape[1],), i) for i, layer in enumerate(layers)])[None]
    index = {c: i for i, c in enumerate(probe.classes_)}
    target = torch.as_tensor([index[str(v)] for v in labels])

    def probability(inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(probe.forward(inputs), -1)

    with torch.no_grad():
        drop = FeatureAblation(probability).attribute(x, baselines=x.mean(0, keepdim=True), target=target,
                                                      feature_mask=mask)
    first_column = np.cumsum([0] + [layer.values.shape[1] for layer in layers[:-1]])
    return {layer.name: float(drop[:, column].mean()) for layer, column in zip(layers, first_column)}
