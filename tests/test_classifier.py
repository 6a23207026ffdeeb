"""Specification of the independent attribute classifier for synthetic clips."""
from __future__ import annotations

import json

import numpy as np
import pytest

from probing.synth import SAMPLE_RATE, class_lists, render_clip
from probing.synth.classifier import (AttributeClassifier, accuracy, default_classifier, default_weights_dir,
                                      features, synthetic_dataset)


@pytest.fixture(scope="module")
def small_classifier() -> AttributeClassifier:
    return AttributeClassifier.fit_synthetic(("instrument", "style"), clips_per_class=6, seed=0)


@pytest.fixture(scope="module")
def held_out() -> tuple[dict[str, list[str]], np.ndarray]:
    return synthetic_dataset(clips_per_class=2, seed=12345)


def test_features_are_finite_fixed_size_and_resample_other_rates():
    wave = render_clip("cello", "ballad", "dark", score_seed=1)
    vector = features(wave, SAMPLE_RATE)
    assert vector.ndim == 1 and np.isfinite(vector).all()
    doubled = np.repeat(wave, 2)  # the same clip at 32 kHz
    assert features(doubled, 2 * SAMPLE_RATE).shape == vector.shape


def test_few_clips_recognise_held_out_instruments_far_above_chance(small_classifier, held_out):
    scores = accuracy(small_classifier, *held_out)
    assert scores["instrument"] > 0.4  # chance is 1/16; the shipped classifier (80 per class) gets ~0.98
    assert scores["style"] > 2 / 11


def test_predict_and_predict_proba_agree(small_classifier):
    wave = render_clip("organ", "chorale", "calm", score_seed=777)
    probabilities = small_classifier.predict_proba(wave, SAMPLE_RATE, "instrument")
    assert list(probabilities) == class_lists()["instrument"]
    assert abs(sum(probabilities.values()) - 1) < 1e-6
    assert small_classifier.predict(wave, SAMPLE_RATE, "instrument") == max(probabilities, key=probabilities.get)
    with pytest.raises(ValueError, match="mood"):
        small_classifier.predict(wave, SAMPLE_RATE, "mood")


def test_save_load_round_trips_predictions_without_pickle(small_classifier, tmp_path):
    small_classifier.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.json", "weights.npz"]
    with np.load(tmp_path / "weights.npz", allow_pickle=False) as arrays:
        assert all(arrays[key].dtype != object for key in arrays.files)
    assert json.loads((tmp_path / "classifier.json").read_text())["classes"]["style"] == class_lists()["style"]
    loaded = AttributeClassifier.load(tmp_path)
    wave = render_clip("bells", "swing", "happy", score_seed=31)
    for attribute in ("instrument", "style"):
        assert loaded.predict_proba(wave, SAMPLE_RATE, attribute) == small_classifier.predict_proba(
            wave, SAMPLE_RATE, attribute)


def test_shipped_classifier_recognises_fresh_clips():
    assert not list(default_weights_dir().glob("*.pkl")) and not list(default_weights_dir().glob("*.pickle"))
    classifier = default_classifier()
    assert set(classifier.attributes) == {"instrument", "style", "mood"}
    instruments = class_lists()["instrument"]
    hits = [classifier.predict(render_clip(name, "march", "happy", score_seed=900 + i), SAMPLE_RATE,
                               "instrument") == name for i, name in enumerate(instruments)]
    assert np.mean(hits) >= 0.8
