"""The metric suite: spectral metrics, LPAPS, FAD, the paper's ASB, testbed metrics, `melodia eval` with LPAPS."""
from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import save_file

from editing.cli import main
from editing.metrics import (LPAPSNet, MetricUnavailableError, MissingWeightsError, adherence_musicality_balance, adherence_structure_balance,
                             chroma_similarity, classifier_adherence, frechet_audio_distance, frechet_distance,
                             ideal_edit_distance, load_lpaps, log_mel_distance, lpaps_distance, melody_accuracy,
                             pitch_contour, prompt_targets)
from editing.metrics.balance import harmonic_mean
from editing.metrics.lpaps import lpaps_spectrogram
from probing.errors import MelodiaError

SR = 16_000


def melody(semitones=(0, 4, 7, 12, 7, 4, 0, 5), shift: float = 0.0, harmonics=(1.0, 0.5, 0.25), start_s: float = 0.0,
           note_s: float = 0.25) -> np.ndarray:
    """A tone melody from A3 (220 Hz), every note `shift` semitones up, delayed by `start_s`."""
    t = np.arange(int(note_s * SR)) / SR
    envelope = np.minimum(1, np.minimum(t, note_s - t) / 0.01)
    notes = [envelope * sum(a * np.sin(2 * np.pi * k * 220 * 2 ** ((s + shift) / 12) * t)
                            for k, a in enumerate(harmonics, start=1)) for s in semitones]
    wave = np.concatenate([np.zeros(int(start_s * SR)), *notes])
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


# ---- spectral -------------------------------------------------------------------------------------

def test_chroma_keeps_a_melody_across_timbres_and_drops_when_it_is_transposed():
    source = melody()
    assert chroma_similarity(source, source, SR) == pytest.approx(1.0, abs=1e-6)
    assert chroma_similarity(source, melody(harmonics=(1.0, 0.1, 0.6, 0.3)), SR) > 0.9  # other timbre, same notes
    assert chroma_similarity(source, melody(shift=6), SR) < 0.5  # a tritone away: other pitch classes


def test_log_mel_distance_is_zero_for_the_same_clip_and_grows_with_the_timbre_change():
    source = melody()
    assert log_mel_distance(source, source, SR) == 0.0
    near = log_mel_distance(source, melody(harmonics=(1.0, 0.45, 0.25)), SR)
    far = log_mel_distance(source, melody(harmonics=(1.0, 0.0, 0.9, 0.0, 0.5)), SR)
    assert 0 < near < far


def test_spectral_metrics_do_not_depend_on_the_rate_a_clip_arrives_at():
    a, b = melody(), melody(harmonics=(1.0, 0.1, 0.6, 0.3), shift=2)
    up = [librosa.resample(x, orig_sr=SR, target_sr=44_100) for x in (a, b)]
    assert chroma_similarity(*up, 44_100) == pytest.approx(chroma_similarity(a, b, SR), abs=0.02)
    assert log_mel_distance(*up, 44_100) == pytest.approx(log_mel_distance(a, b, SR), rel=0.05)


# ---- melody (pYIN contour, mir_eval accuracies) -----------------------------------------------------

def test_an_identical_clip_keeps_the_whole_melody_and_another_timbre_keeps_most_of_it():
    source = melody()
    same = melody_accuracy(source, source, SR)
    assert same.raw_pitch == same.raw_chroma == 1.0 and same.voiced_frames > 150
    assert melody_accuracy(source, melody(harmonics=(1.0, 0.1, 0.6, 0.3)), SR).raw_pitch > 0.9


def test_a_semitone_loses_the_melody_and_an_octave_loses_only_the_pitch():
    source = melody()
    semitone = melody_accuracy(source, melody(shift=1), SR)
    assert semitone.raw_pitch < 0.1 and semitone.raw_chroma < 0.1
    octave = melody_accuracy(source, melody(shift=12), SR)
    assert octave.raw_pitch < 0.1 and octave.raw_chroma > 0.9


def test_a_late_or_silent_edit_misses_the_melody_and_silence_is_unvoiced():
    source = melody()
    assert melody_accuracy(source, melody(start_s=0.125), SR).raw_pitch < 0.6  # half a note late
    silent = np.zeros(2 * SR, np.float32)
    assert not pitch_contour(silent, SR)[1].any()
    assert melody_accuracy(source, silent, SR).raw_chroma == 0.0  # unvoiced where the source sings: a miss
    with pytest.raises(MetricUnavailableError, match="no voiced frame"):
        melody_accuracy(silent, source, SR)


def test_a_source_scored_against_many_edits_is_tracked_once_and_its_contour_cannot_be_altered(monkeypatch):
    import editing.metrics.melody as melody_module
    from editing.metrics import score_edit

    tracked, track = [], melody_module.pitch_contour
    monkeypatch.setattr(melody_module, "pitch_contour", lambda wave, sr: tracked.append(len(wave)) or track(wave, sr))
    source, ideal = melody(), melody(harmonics=(1.0, 0.1, 0.6, 0.3))
    edits = [melody(shift=s) for s in (0, 1, 12)]
    scores = [score_edit(source.copy(), edit, SR, "violin", ideal=ideal, clap="nobody/no-such-clap") for edit in edits]
    assert len(tracked) == 2  # the references, the source and the ideal, once each for the three edits
    assert [s["melody_raw_pitch"]["value"] for s in scores] == [
        melody_accuracy(source, edit, SR).raw_pitch for edit in edits]  # the same scores as tracking each time
    times, f0 = melody_module.reference_contour(source, SR)
    with pytest.raises(ValueError):
        f0[0] = 440.0


def test_the_contour_follows_the_notes_at_any_rate():
    times, f0 = pitch_contour(librosa.resample(melody(), orig_sr=SR, target_sr=44_100), 44_100)
    assert times[1] - times[0] == pytest.approx(0.01)
    first_note = f0[5:20]  # 50-200 ms: inside the first note (A3)
    assert np.allclose(librosa.hz_to_midi(first_note), 57, atol=0.3)


# ---- LPAPS ----------------------------------------------------------------------------------------

REFERENCE_KEYS = {  # SpecVQGAN's LPAPS state dict (specvqgan/modules/losses/lpaps.py): names and shapes
    "scaling_layer.shift": (1, 1, 80, 1), "net.slice1.0.weight": (64, 1, 3, 3), "net.slice1.2.weight": (64, 64, 3, 3),
    "net.slice2.5.weight": (128, 64, 3, 3), "net.slice3.14.bias": (256,), "net.slice4.17.weight": (512, 256, 3, 3),
    "net.slice5.28.weight": (512, 512, 3, 3), "lin0.model.1.weight": (1, 64, 1, 1),
    "lin4.model.1.weight": (1, 512, 1, 1),
}


def test_lpaps_network_has_the_reference_state_dict_layout():
    with torch.device("meta"):
        state = LPAPSNet().state_dict()
    assert {k: tuple(state[k].shape) for k in REFERENCE_KEYS} == REFERENCE_KEYS
    assert len([k for k in state if k.startswith("net.")]) == 26  # 13 convs, weight and bias
    assert not any(k.startswith("lin0.model.0") for k in state)  # the dropout holds nothing


@pytest.fixture(scope="module")
def lpaps_weights(tmp_path_factory) -> str:
    """Random LPAPS weights, narrow for speed; linear weights non-negative as trained LPIPS weights are."""
    torch.manual_seed(0)
    net = LPAPSNet(widths=(8, 16, 16, 32, 32))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for k in range(5):
        state[f"lin{k}.model.1.weight"] = state[f"lin{k}.model.1.weight"].abs()
    state["scaling_layer.shift"] = 0.1 * torch.randn(1, 1, 80, 1) - 0.5
    state["scaling_layer.scale"] = 0.3 + 0.1 * torch.rand(1, 1, 80, 1)
    path = tmp_path_factory.mktemp("lpaps") / "lpaps.safetensors"
    save_file(state, str(path))
    return str(path)


def test_lpaps_is_zero_for_identical_audio_and_symmetric(lpaps_weights):
    net = load_lpaps(lpaps_weights)
    a, b = melody(), melody(shift=3, harmonics=(1.0, 0.2, 0.5))
    assert lpaps_distance(a, a, SR, net) == 0.0
    assert lpaps_distance(a, b, SR, net) == pytest.approx(lpaps_distance(b, a, SR, lpaps_weights), rel=1e-5)
    assert lpaps_distance(a, b, SR, net) > 0


def test_lpaps_grows_as_the_edit_moves_further_from_the_source(lpaps_weights):
    net, source = load_lpaps(lpaps_weights), melody()
    shifted = [lpaps_distance(source, melody(start_s=s)[: len(source)], SR, net) for s in (0.01, 0.05, 0.12)]
    transposed = [lpaps_distance(source, melody(shift=s), SR, net) for s in (0.5, 2, 5)]
    assert shifted == sorted(shifted) and transposed == sorted(transposed), (shifted, transposed)


def test_lpaps_spectrogram_uses_the_reference_scale():
    spectrogram = lpaps_spectrogram(np.zeros(22_050, np.float32), 22_050)
    assert spectrogram.shape == (80, 1 + 22_050 // 256) and (spectrogram == -1).all()  # silence: the -100 dB floor
    assert lpaps_spectrogram(melody(), SR).max() <= 1


def test_lpaps_without_weights_gives_no_number(tmp_path):
    with pytest.raises(MissingWeightsError, match="--lpaps FILE"):
        lpaps_distance(melody(), melody(), SR, None)
    with pytest.raises(MissingWeightsError, match="no such LPAPS weights file"):
        lpaps_distance(melody(), melody(), SR, tmp_path / "absent.pt")


@pytest.mark.parametrize("write, needle", [
    (lambda p: torch.save({"net": object()}, p.with_suffix(".pt")), "weights_only"),
    (lambda p: save_file({"lin0.model.1.weight": torch.ones(1, 4, 1, 1)}, p.with_suffix(".safetensors")),
     "not LPAPS weights"),
    (lambda p: p.with_suffix(".txt").write_text("weights"), ".safetensors, .pt or .pth")])
def test_lpaps_refuses_files_that_are_not_its_weights(tmp_path, write, needle):
    write(tmp_path / "weights")
    with pytest.raises(MelodiaError, match=needle):
        load_lpaps(next(tmp_path.iterdir()))


# ---- FAD ------------------------------------------------------------------------------------------

def exact_gaussian_sample(n: int, mean: np.ndarray, variances: np.ndarray, rotation: np.ndarray, seed: int):
    """n rows whose sample mean and covariance (ddof 1) are exactly mean and R diag(variances) R^T."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T  # sample covariance = I
    return z @ np.diag(np.sqrt(variances)) @ rotation.T + mean


def test_frechet_distance_matches_the_closed_form_for_two_gaussians():
    rotation = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))[0]  # shared: covariances commute
    mean_x, mean_y = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    var_x, var_y = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 9.0])
    x = exact_gaussian_sample(300, mean_x, var_x, rotation, seed=2)
    y = exact_gaussian_sample(200, mean_y, var_y, rotation, seed=3)
    expected = np.sum((mean_x - mean_y) ** 2) + np.sum((np.sqrt(var_x) - np.sqrt(var_y)) ** 2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    one_d = frechet_distance(exact_gaussian_sample(50, np.array([3.0]), np.array([4.0]), np.eye(1), seed=4),
                             exact_gaussian_sample(60, np.array([1.0]), np.array([1.0]), np.eye(1), seed=5))
    assert one_d == pytest.approx((3 - 1) ** 2 + (2 - 1) ** 2, rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero_even_when_the_covariance_is_singular():
    embeddings = np.random.default_rng(0).standard_normal((5, 16))  # 5 clips, 16 dims: rank-deficient
    assert abs(frechet_distance(embeddings, embeddings)) < 1e-6
    assert abs(frechet_distance(embeddings, embeddings.copy())) < 1e-6


def test_frechet_distance_refuses_sets_it_cannot_fit():
    with pytest.raises(MelodiaError, match="at least 2 clips"):
        frechet_distance(np.ones((1, 4)), np.ones((3, 4)))
    with pytest.raises(MelodiaError, match="sizes differ"):
        frechet_distance(np.random.randn(3, 4), np.random.randn(3, 5))


def test_fad_embeds_both_sets_with_the_given_function_and_needs_clap_by_default():
    clips = [(1 + s / 10) * melody(shift=s) for s in range(6)]
    louder = [2 * c for c in clips]
    level_and_pitch = lambda waves, sr: np.array([[w.std(), np.abs(np.diff(w)).mean() / w.std()]  # noqa: E731
                                                  for w in waves])
    assert frechet_audio_distance(clips, clips, SR, embed=level_and_pitch) == pytest.approx(0, abs=1e-9)
    assert frechet_audio_distance(clips, louder, SR, embed=level_and_pitch) > 0
    with pytest.raises(MissingWeightsError, match="laion/larger_clap_music"):
        frechet_audio_distance(clips, clips, SR)


# ---- ASB / AMB against the paper ------------------------------------------------------------------

# Layer-selection ablation of the Melodia paper (paper-summary.md): CLAP, LPAPS, ASB. The table is
# complete (every compared setting), so min-max ranges come from it alone. It has no Chroma column.
ABLATION = {"none": (0.34, 4.39, 0.00), "1-16": (0.34, 2.65, 0.00), "6-16": (0.35, 2.96, 0.22),
            "8-14": (0.42, 3.49, 0.68), "10-12": (0.39, 3.93, 0.37)}


def test_asb_reproduces_the_paper_layer_ablation_with_min_max_normalisation():
    clap, lpaps, asb = (np.array(column) for column in zip(*ABLATION.values()))
    assert adherence_structure_balance(clap, lpaps) == pytest.approx(asb, abs=0.006)  # table rounds to 0.01
    ratio_to_best = harmonic_mean(clap / clap.max(), lpaps.min() / lpaps)  # the other plausible normalisation
    assert ratio_to_best.min() > 0.5, "ratio-to-best can never give the table's zeros"


# Main table (paper-summary.md): CLAP, LPAPS, Chroma, ASB, AMB. Only 2 of the compared methods are
# listed per dataset, so the min-max ranges are unknown; what is checkable: a score of 1.00 needs the
# best value of both inputs (within the table's rounding), and a method not best at one input has < 1.
MAIN = {"MusicDelta": {"DDPM-Friendly": (0.35, 5.66, 0.27, 0.58, 0.74), "Melodia": (0.34, 4.01, 0.32, 1.00, 1.00)},
        "ZoME-Bench": {"DDPM-Friendly": (0.23, 5.70, 0.27, 0.49, 0.72), "Melodia": (0.29, 3.90, 0.29, 1.00, 1.00)},
        "MelodiaEdit": {"DDPM-Friendly": (0.34, 4.06, 0.70, 0.59, 0.70), "Melodia": (0.39, 3.11, 0.68, 1.00, 0.88)}}


@pytest.mark.parametrize("dataset", MAIN)
def test_main_table_scores_of_one_are_held_only_by_methods_best_at_both_inputs(dataset):
    rows = MAIN[dataset].values()
    best_clap, best_lpaps, best_chroma = max(r[0] for r in rows), min(r[1] for r in rows), max(r[2] for r in rows)
    for clap, lpaps, chroma, asb, amb in rows:
        best_at_asb_inputs = clap >= best_clap - 0.01 and lpaps <= best_lpaps
        best_at_amb_inputs = clap >= best_clap - 0.01 and chroma >= best_chroma - 0.01
        assert (asb == 1.0) == best_at_asb_inputs and (amb == 1.0) == best_at_amb_inputs


def test_balance_scores_are_one_only_for_a_method_best_at_both_and_refuse_what_they_cannot_rank():
    assert adherence_musicality_balance([0.3, 0.4, 0.35], [0.5, 0.9, 0.9]) == pytest.approx([0, 1, 2 * 0.5 / 1.5])
    with pytest.raises(MelodiaError, match="differ"):
        adherence_structure_balance([0.3, 0.3], [4.0, 5.0])
    with pytest.raises(MelodiaError, match="one value per method"):
        adherence_musicality_balance([0.3, 0.4], [0.5])


# ---- testbed metrics ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def violin_and_piano():
    from probing.synth import render_clip

    return [render_clip(name, "waltz", "sad", score_seed=10**6) for name in ("violin", "piano")]


def test_classifier_adherence_scores_the_target_instrument(violin_and_piano):
    violin, piano = violin_and_piano
    hit = classifier_adherence([violin], SR, "violin")
    assert hit.probability > 0.5 and hit.accuracy == 1.0 and hit.predicted == ("violin",)
    both = classifier_adherence([violin, piano], SR, "violin")
    assert both.accuracy == 0.5 and both.probability < hit.probability
    with pytest.raises(MelodiaError, match="unknown instrument 'kazoo'; choose one of: piano"):
        classifier_adherence([violin], SR, "kazoo")


def test_ideal_edit_distance_is_zero_for_the_ideal_itself(violin_and_piano):
    violin, piano = violin_and_piano
    assert ideal_edit_distance(violin, violin, SR) == {"log_mel_distance": 0.0, "chroma_similarity": pytest.approx(1)}
    assert ideal_edit_distance(piano, violin, SR)["log_mel_distance"] > 0.1


def test_prompt_targets_finds_the_classes_a_prompt_names():
    assert prompt_targets("A sad waltz played on the Violin") == {"instrument": "violin", "style": "waltz",
                                                                  "mood": "sad"}
    assert prompt_targets("a synth pad") == {"instrument": "synth-pad"}
    assert prompt_targets("from piano to violin") == {}  # two instruments: no single target
    assert prompt_targets("violins and pianos") == {}  # whole words only


# ---- melodia eval -------------------------------------------------------------------------------

def test_eval_scores_a_clip_against_itself_as_unchanged(capsys, tmp_path, lpaps_weights, violin_and_piano):
    path = tmp_path / "violin.wav"
    sf.write(path, violin_and_piano[0], SR)
    code = main(["eval", "--source", str(path), "--edited", str(path), "--ideal", str(path), "--prompt", "violin",
                 "--lpaps", lpaps_weights, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads(out)["metrics"]
    assert metrics["lpaps"]["value"] == 0.0 and metrics["chroma"]["value"] == pytest.approx(1)
    assert metrics["ideal_log_mel_distance"]["value"] == 0.0
    assert metrics["classifier_instrument"]["predicted"] == "violin"
    assert "laion/larger_clap_music" in metrics["clap"]["unavailable"] and "value" not in metrics["clap"]


def test_metrics_that_cannot_score_a_clip_this_short_are_reported_unavailable(lpaps_weights):
    from editing.metrics import score_edit

    short = melody(note_s=0.12)  # 0.96 s: too short for the classifier, long enough for LPAPS
    blip = melody(semitones=(0,), note_s=0.1)  # 0.1 s: too short for LPAPS's four poolings
    scores = score_edit(short, short, SR, "violin", clap="nobody/no-such-clap", lpaps=lpaps_weights)
    assert "at least 2.0 s" in scores["classifier_instrument"]["unavailable"] and scores["lpaps"]["value"] == 0
    assert "at least 16 spectrogram frames" in score_edit(blip, blip, SR, "violin", lpaps=lpaps_weights)[
        "lpaps"]["unavailable"]
