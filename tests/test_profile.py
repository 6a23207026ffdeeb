"""LayerProfile: JSON round trip, the layer-selection rule, and `melodia probe` end to end."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from editing.cli import main
from editing.editor import Melodia
from probing.capture import CaptureSettings, capture, pooled_text_embedding
from probing.errors import MelodiaError
from probing.features import TEXT_EMBEDDING, layer_features
from probing.probes import ProbeScore
from probing.profile import LayerProfile, build_profile
from probing.prompts import load_prompts
from probing.store import open_capture


def synthetic_profile(self_accuracy: list[float], cross_accuracy: float = 0.9, baseline: bool = True) -> LayerProfile:
    """A profile of len(self_accuracy) layers, one 4-class attribute, the given accuracies; with
    `baseline`, a random denoiser at chance on every layer."""
    scores, random = [], []
    for layer, accuracy in enumerate(self_accuracy, start=1):
        for kind, value in (("self", accuracy), ("cross", cross_accuracy)):
            for probe in ("mlp", "linear"):
                scores.append(ProbeScore("instrument", f"{kind}:{layer}", probe, value, (value - 0.05, value + 0.05),
                                         0.25, 0.25, 64, 8))
                random.append(ProbeScore("instrument", f"{kind}:{layer}", probe, 0.25, (0.2, 0.3), 0.25, 0.25, 64, 8))
    scores.append(ProbeScore("instrument", "text", "mlp", 0.95, (0.9, 1.0), 0.25, 0.25, 64, 8, "embedding"))
    return LayerProfile("m", len(self_accuracy), {"instrument": ["a", "b", "c", "d"]}, scores,
                        random if baseline else [])


def test_profile_json_round_trips(tmp_path):
    profile = synthetic_profile([0.3, 0.6, 0.25, 0.9])
    profile.save(tmp_path / "p.json")
    loaded = LayerProfile.load(tmp_path / "p.json")
    assert loaded == profile and loaded.to_json() == json.loads((tmp_path / "p.json").read_text())
    assert loaded.curve("instrument", "self").tolist() == [0.3, 0.6, 0.25, 0.9]


def test_selection_picks_the_least_decodable_self_band_with_reasons():
    accuracy = [0.9, 0.8, 0.3, 0.26, 0.27, 0.8, 0.9, 0.9]
    selection = synthetic_profile(accuracy).select_edit_layers(width=3)
    assert selection.spec == "self:3-5" and selection.layers == (3, 4, 5)
    assert "band 3-5" in selection.explain() and "3:0.07" in selection.reasons[0]
    assert synthetic_profile(accuracy).select_edit_layers(width=3) == selection  # deterministic


def test_selection_ties_go_to_the_deeper_band_and_width_defaults_to_seven_of_sixteen():
    flat = synthetic_profile([0.25] * 16)
    assert flat.select_edit_layers().spec == "self:10-16"


def test_a_partial_profile_says_its_band_holds_unprobed_layers():
    full = synthetic_profile([0.25, 0.9, 0.9, 0.9])
    partial = replace(full, scores=[s for s in full.scores if s.target in ("self:1", "cross:1", "text")])
    selection = partial.select_edit_layers(width=2)
    assert selection.spec == "self:1-2"
    assert any("only 1 of 4 self-attention layers were probed and 1 of the band's 2 were not" in r
               for r in selection.reasons)
    assert not any("were probed" in r for r in full.select_edit_layers(width=2).reasons)


def test_loading_a_non_profile_fails_in_one_line(tmp_path):
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(MelodiaError, match="not a melodia layer profile"):
        LayerProfile.load(tmp_path / "x.json")
    with pytest.raises(MelodiaError, match="does not exist"):
        LayerProfile.load(tmp_path / "missing.json")


@pytest.fixture(scope="module")
def small_store(untrained_testbed, tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("probe") / "s.zarr")
    prompts = load_prompts("testbed-small.yaml")
    subset = type(prompts)(prompts.prompts[:40], {k: v[:40] for k, v in prompts.labels.items()},
                           prompts.template_ids[:40], "small40", prompts.slot_spans[:40])
    capture(untrained_testbed, subset, url, CaptureSettings(layers="1-3", steps=2), progress=False)
    return url


def test_a_store_holds_the_text_embedding_and_the_feature_families_of_every_layer(small_store, untrained_testbed):
    store = open_capture(small_store)
    layers = layer_features(store)
    assert [f.key for f in layers] == [f"{kind}:{layer}/{family}" for layer in (1, 2, 3)
                                       for kind, family in (("self", "flat"), ("cross", "flat"), ("cross", "word"),
                                                            ("cross", "keys"))]
    assert layers[0].values.shape == (40, 64 * 64) and layers[1].values.shape == (40, 64 * 16)
    assert {k: v.shape for k, v in layers[2].values.items()} == {a: (40, 64) for a in ("instrument", "mood", "style")}
    assert layers[3].values.shape == (40, 16 + 64)  # sorted key mass + per-query entropy
    # the word map is the word's own key columns: its tokens, wherever the template put them
    spans = store.read("text/spans")
    cross = store.read(layers[1].modules[0] + "/cross").astype(np.float32).mean(1)  # (prompt, query, key)
    slot = store.spec("text/spans").attrs["slots"].index("instrument")
    start, stop = spans[5, slot]
    assert store.prompts[5].split()[start:stop] == [store.labels["instrument"][5]]
    np.testing.assert_allclose(layers[2].values["instrument"][5], cross[5, :, start:stop].sum(-1), rtol=1e-5)
    embedding = store.read(TEXT_EMBEDDING)
    assert embedding.shape[0] == 40
    np.testing.assert_allclose(embedding[3], pooled_text_embedding(untrained_testbed, store.prompts[3]), rtol=1e-6)
    assert not np.allclose(embedding[0], pooled_text_embedding(untrained_testbed, "a sad waltz on violin"))


def test_melodia_probe_writes_profile_and_plot_and_edit_uses_its_selection(small_store, tmp_path, capsys,
                                                                           untrained_testbed_dir):
    profile_path, plot_path = tmp_path / "profile.json", tmp_path / "profile.png"
    assert main(["probe", small_store, "-o", str(profile_path), "--plot", str(plot_path), "--folds", "3"]) == 0
    out = capsys.readouterr().out
    assert "no injection band selected" in out and "text embedding alone" in out and "cross/word" in out
    profile = LayerProfile.load(profile_path)
    assert {s.target for s in profile.scores} == {"self:1", "cross:1", "self:2", "cross:2", "self:3", "cross:3", "text"}
    assert {(s.features, s.split) for s in profile.scores if s.target == "cross:2"} == {
        (f, split) for f in ("flat", "word", "keys") for split in ("template", "random")}
    assert set(profile.attributes) == {"instrument", "style", "mood"} and plot_path.stat().st_size > 20_000
    for score in profile.scores:
        assert 0 <= score.ci[0] <= score.ci[1] <= 1 and score.n_groups == 10
    # a profile without the random-denoiser baseline chooses no layers unless told so
    assert main(["layers", untrained_testbed_dir, "--profile", str(profile_path)]) == 2
    assert "no random-denoiser baseline" in capsys.readouterr().err
    assert main(["layers", untrained_testbed_dir, "--profile", str(profile_path), "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert profile.select_edit_layers(require_baseline=False).spec in out and "no random-denoiser baseline" in out


def test_auto_layers_come_from_the_profile_when_given(untrained_testbed):
    profile = synthetic_profile([0.3] * 7 + [0.9] * 9)
    editor = Melodia(untrained_testbed, profile=profile)
    assert editor.auto_layers() == "self:1-7" == profile.select_edit_layers().spec
    assert [m.layer for m in editor.injected_modules("auto")] == list(range(1, 8))
    assert [m.layer for m in Melodia(untrained_testbed).injected_modules("auto")] == list(range(8, 15))
    with pytest.raises(MelodiaError, match="4 layers"):
        Melodia(untrained_testbed, profile=synthetic_profile([0.3] * 4)).injected_modules("auto")


def test_probe_refuses_a_store_without_labels(untrained_testbed, tmp_path, capsys):
    from probing.prompts import PromptSet

    url = str(tmp_path / "plain.zarr")
    capture(untrained_testbed, PromptSet(["a", "b"], {}, [-1, -1]), url, CaptureSettings(layers="1", steps=1),
            progress=False)
    assert main(["probe", url, "-o", str(tmp_path / "p.json")]) == 2
    assert "no labels" in capsys.readouterr().err and not (tmp_path / "p.json").exists()


def test_random_denoiser_capture_differs_and_restores_the_trained_weights(untrained_testbed, tmp_path):
    prompts = load_prompts("testbed-small.yaml")
    prompts = type(prompts)(prompts.prompts[:6], {k: v[:6] for k, v in prompts.labels.items()}, prompts.template_ids[:6])
    before = {k: v.clone() for k, v in untrained_testbed.denoiser.state_dict().items()}
    settings = CaptureSettings(layers="self:2", steps=1, random_denoiser=0)
    random_store = capture(untrained_testbed, prompts, str(tmp_path / "r.zarr"), settings, progress=False)
    after = untrained_testbed.denoiser.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    trained_store = capture(untrained_testbed, prompts, str(tmp_path / "t.zarr"),
                            CaptureSettings(layers="self:2", steps=1), progress=False)
    assert random_store.identity["random_denoiser"] == 0
    name = random_store.specs[0].name
    assert not np.allclose(random_store.read(name, [0]), trained_store.read(name, [0]))
    with pytest.raises(MelodiaError, match="not captured with --random-denoiser"):
        build_profile(random_store, random_store=trained_store)


def test_decodability_counts_only_what_the_random_denoiser_does_not_show():
    profile = synthetic_profile([0.9, 0.9, 0.5, 0.5])
    profile.random_denoiser = [replace(s, accuracy=0.85) for s in profile.scores if s.target.startswith("self")]
    np.testing.assert_allclose(profile.decodability("self"), [0.05 / 0.75, 0.05 / 0.75, 0, 0])
    np.testing.assert_allclose(profile.decodability("self", above_random=False), [0.65 / 0.75] * 2 + [0.25 / 0.75] * 2)
    flat = synthetic_profile([0.9] * 4)
    flat.random_denoiser = [replace(s, accuracy=0.95) for s in flat.scores if s.target.startswith("self")]
    assert "does not tell the layers apart" in flat.select_edit_layers(width=2).explain()


def test_best_layers_name_the_most_decodable_layer_with_its_baselines():
    profile = synthetic_profile([0.3, 0.7, 0.5, 0.4], cross_accuracy=0.6)
    rows = {(r["kind"], r["features"]): r for r in profile.best_layers()}
    assert rows["self", "flat"]["layer"] == "self:2" and rows["self", "flat"]["accuracy"] == 0.7
    assert rows["self", "flat"]["random_denoiser"] == 0.25 and rows["self", "flat"]["text"] == 0.95
    no_baseline = synthetic_profile([0.3, 0.7], baseline=False).best_layers()
    assert all(r["random_denoiser"] is None for r in no_baseline)


def test_word_features_from_a_store_without_spans_are_refused_in_one_line(untrained_testbed, tmp_path, capsys):
    from probing.prompts import PromptSet

    prompts = load_prompts("testbed-small.yaml")
    no_spans = PromptSet(prompts.prompts[:12], {k: v[:12] for k, v in prompts.labels.items()},
                         prompts.template_ids[:12], "no-spans")  # labels and templates, but no slot spans
    url = str(tmp_path / "plain.zarr")
    capture(untrained_testbed, no_spans, url, CaptureSettings(layers="cross:1", steps=1), progress=False)
    assert main(["probe", url, "-o", str(tmp_path / "p.json"), "--features", "word"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no word token spans" in err and len(err.splitlines()) == 1 and not (tmp_path / "p.json").exists()
    assert [f.family for f in layer_features(open_capture(url))] == ["flat", "keys"]  # the rest still works
