"""Probes: grouped splits, balanced accuracy and its bootstrap CI, control task, estimator, attribution."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probing.attribution import layer_attribution, map_attribution
from probing.errors import MelodiaError
from probing.features import LayerFeatures, key_summary, word_maps
from probing.probes import (MLPProbe, ProbeSettings, _init_weights, _logits, _loss_gradients, _sample_weights,
                            balanced_accuracy, cluster_bootstrap_ci, control_labels, grouped_folds, probe_features,
                            split_folds)

FAST = ProbeSettings(hidden=32, components=16, epochs=80, bootstrap=200)


def labelled_features(n: int = 240, n_classes: int = 4, signal: float = 3.0, dims: int = 40, seed: int = 0):
    """Features whose first `n_classes` columns carry a one-hot label (times `signal`) over unit noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, dims)).astype(np.float32)
    x[:, :n_classes] += signal * np.eye(n_classes)[y]
    groups = np.arange(n) % 8  # 8 "templates"
    return x, [f"c{v}" for v in y], groups


def test_grouped_folds_never_put_one_template_on_both_sides():
    groups = np.random.default_rng(1).integers(0, 7, 200)
    folds = grouped_folds(groups, 5)
    assert sorted(np.concatenate(folds).tolist()) == list(range(200))  # every prompt tested exactly once
    for test in folds:
        train = np.setdiff1d(np.arange(200), test)
        assert not set(groups[test]) & set(groups[train])


def test_grouped_folds_need_two_templates():
    with pytest.raises(MelodiaError, match="2 templates"):
        grouped_folds(np.zeros(10, int), 5)


def test_balanced_accuracy_weighs_every_class_equally():
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    always_zero = np.zeros(8, int)
    assert (always_zero == y).mean() == 0.75 and balanced_accuracy(y, always_zero, 2) == 0.5
    assert balanced_accuracy(y, y, 2) == 1.0


def test_cluster_bootstrap_ci_brackets_the_estimate_and_is_degenerate_when_perfect():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    groups = np.arange(300) % 10
    noisy = np.where(rng.random(300) < 0.6, y, rng.integers(0, 3, 300))
    low, high = cluster_bootstrap_ci(y, noisy, groups, 3, 500, np.random.default_rng(0))
    assert low < balanced_accuracy(y, noisy, 3) < high and high - low < 0.3
    assert cluster_bootstrap_ci(y, y, groups, 3, 100, np.random.default_rng(0)) == (1.0, 1.0)


def test_probes_read_a_decodable_layer_and_the_control_stays_at_chance_without_the_nuisance():
    x, y, groups = labelled_features()
    noise = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    scores = {(s.target, s.probe): s for s in probe_features({"signal": x, "noise": noise}, {"a": y}, groups, FAST)}
    for probe in ("mlp", "linear"):
        signal = scores["signal", probe]
        assert signal.accuracy > 0.8 and signal.ci[0] > 0.7
        assert abs(signal.control - 0.25) < 0.12 and signal.selectivity > 0.6  # the features hold no template
        assert scores["noise", probe].accuracy < 0.4 and signal.chance == 0.25


def test_probing_is_deterministic_for_a_seed():
    x, y, groups = labelled_features(signal=0.8)
    first = probe_features({"l": x}, {"a": y}, groups, FAST)
    assert first == probe_features({"l": x}, {"a": y}, groups, FAST)


def test_a_saved_probe_predicts_the_same_and_is_not_a_pickle(tmp_path):
    x, y, _ = labelled_features()
    probe = MLPProbe.from_settings(FAST).fit(x, y)
    probe.save(tmp_path / "p")
    loaded = MLPProbe.load(tmp_path / "p")
    np.testing.assert_array_equal(loaded.predict(x), probe.predict(x))
    assert probe.score(x, y) > 0.9 and loaded.classes_ == ["c0", "c1", "c2", "c3"]
    assert json.loads((tmp_path / "p.json").read_text())["format"] == "melodia.probe"
    assert (tmp_path / "p.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle stream


def test_map_attribution_finds_the_cells_that_carry_the_label():
    rng = np.random.default_rng(0)
    n, grid, keys = 200, (4, 2), 3
    y = rng.integers(0, 2, n)
    maps = rng.normal(size=(n, 8, keys)).astype(np.float32) * 0.3
    maps[:, 5, 1] += 2.0 * y  # query cell (time 2, freq 1), key 1 holds the label
    labels = [str(v) for v in y]
    probe = MLPProbe.from_settings(FAST).fit(maps.reshape(n, -1), labels)
    heat = map_attribution(probe, maps.reshape(n, -1), labels, grid)
    assert heat.shape == (4, 2, keys)
    assert np.unravel_index(heat.argmax(), heat.shape) == (2, 1, 1)


@pytest.mark.parametrize("held_out", [False, True])
def test_layer_attribution_credits_the_layer_that_carries_the_label(held_out):
    x, y, groups = labelled_features(dims=12)
    noise = 30 * np.random.default_rng(3).normal(size=x.shape).astype(np.float32)  # louder, but uninformative
    layers = [LayerFeatures(1, "self", ("a",), noise), LayerFeatures(2, "cross", ("b",), x)]
    drops = layer_attribution(layers, y, FAST, groups=groups if held_out else None)
    assert drops["cross:2"] > 0.3 and abs(drops["self:1"]) < 0.1


def moving_word_maps(n_templates: int = 8, per_template: int = 40, n_classes: int = 4, seed: int = 0):
    """Cross maps (prompt, query 16, key 12) where the attribute word sits at another token in each
    template and its column carries the class (mass on query block `class`): what a word-aligned
    reading must find and a flattened reading cannot carry across templates."""
    rng = np.random.default_rng(seed)
    n = n_templates * per_template
    groups = np.repeat(np.arange(n_templates), per_template)
    y = rng.integers(0, n_classes, n)
    position = rng.permutation(12)[:n_templates]  # the word's token in each template
    maps = rng.dirichlet(np.ones(12), size=(n, 16)).astype(np.float32)
    columns = position[groups]
    for cls in range(n_classes):
        rows = np.flatnonzero(y == cls)
        maps[rows[:, None], np.arange(4 * cls, 4 * cls + 4), columns[rows, None]] += 0.6
    maps /= maps.sum(-1, keepdims=True)
    spans = np.stack([columns, columns + 1], axis=1)
    return maps, spans, [f"c{v}" for v in y], groups


def test_word_aligned_features_read_a_moving_word_across_templates_where_flattened_maps_cannot():
    maps, spans, y, groups = moving_word_maps()
    features = {"cross:1/flat": maps.reshape(len(maps), -1), "cross:1/word": {"a": word_maps(maps, spans)},
                "cross:1/keys": key_summary(maps)}
    scores = {(s.features, s.split): s.accuracy
              for s in probe_features(features, {"a": y}, groups, FAST, probes=("mlp",), splits=("template", "random"))}
    assert scores["word", "template"] > 0.9  # the word's own column, wherever it sits
    assert scores["flat", "template"] < 0.45  # the signal is at a column the test template never used in training
    assert scores["flat", "random"] > 0.8  # ... which random splits hide: every template is seen in training
    # a span off by one token reads another word's column: the alignment is what carries the signal
    shifted = word_maps(maps, (spans + 1) % 12)
    misaligned = probe_features({"cross:1/word": {"a": shifted}}, {"a": y}, groups, FAST, probes=("mlp",))
    assert misaligned[0].accuracy < 0.45


def test_the_control_rises_above_chance_when_the_features_carry_the_template():
    maps, _, y, groups = moving_word_maps()
    flat = maps.reshape(len(maps), -1)  # the word column's position gives the template away
    noise = np.random.default_rng(1).normal(size=flat.shape).astype(np.float32)
    scores = {s.target: s for s in probe_features({"carries": flat, "blind": noise}, {"a": y}, groups, FAST,
                                                  probes=("mlp",))}
    assert scores["carries"].control_chance == 0.25
    assert scores["carries"].control > 0.6  # a random class per template, learned from the template's trace
    assert abs(scores["blind"].control - 0.25) < 0.12


def test_control_labels_are_a_fixed_function_of_the_template():
    groups = np.repeat(np.arange(10), 5)
    labels = control_labels(groups, 4, seed=0)
    assert all(len(set(labels[groups == g])) == 1 for g in range(10))  # one class per template
    assert sorted(np.bincount(labels[::5]).tolist()) == [2, 2, 3, 3]  # balanced over the classes
    assert np.array_equal(labels, control_labels(groups, 4, seed=0))


def test_the_random_split_shares_templates_and_an_unknown_split_is_refused():
    groups = np.repeat(np.arange(6), 20)
    folds = split_folds("random", groups, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(120))
    assert all(set(groups[test]) & set(np.delete(groups, test)) for test in folds)
    with pytest.raises(MelodiaError, match="unknown split 'prompt'"):
        split_folds("prompt", groups, 5, seed=0)


@pytest.mark.parametrize("hidden", [0, 8])
def test_hand_written_gradients_are_autograds(hidden):
    generator = torch.Generator().manual_seed(0)
    z, y = torch.randn(3, 40, 6, generator=generator), torch.randint(0, 5, (3, 40), generator=generator)
    y[:, :5] = torch.arange(5)  # every class present
    weights = [w.requires_grad_() for w in _init_weights(3, 6, hidden, 5, generator)]
    sample_weights = _sample_weights(y, 5)
    loss = (torch.nn.functional.cross_entropy(_logits(weights, z).transpose(1, 2), y, reduction="none")
            * sample_weights).sum()
    loss.backward()
    ours = _loss_gradients([w.detach() for w in weights], z, torch.nn.functional.one_hot(y, 5).float(),
                           sample_weights.unsqueeze(-1))
    assert len(ours) == len(weights)
    for weight, grad in zip(weights, ours):
        torch.testing.assert_close(grad, weight.grad, atol=1e-7, rtol=1e-5)


def test_the_probe_is_a_scikit_learn_estimator():
    from sklearn.base import clone
    from sklearn.model_selection import GroupKFold, cross_val_score

    x, y, groups = labelled_features()
    probe = MLPProbe(hidden=16, components=8, epochs=60)
    copy = clone(probe)
    assert copy.get_params() == probe.get_params() and copy.get_params()["hidden"] == 16
    scores = cross_val_score(probe, x, y, groups=groups, cv=GroupKFold(4))  # score: balanced accuracy
    assert len(scores) == 4 and scores.min() > 0.8
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert cross_val_score(probe, noise, y, groups=groups, cv=GroupKFold(4)).mean() < 0.45
    assert MLPProbe.from_settings(FAST).settings == ProbeSettings(hidden=32, components=16, epochs=80)
