"""Specification of the synthetic-music generator: classes, scores, renders and captions."""
from __future__ import annotations

import re
from itertools import combinations

import librosa
import numpy as np
import pytest

from probing.synth import (CLIP_SECONDS, SAMPLE_RATE, Score, caption, class_lists, make_score, render,
                           render_clip, templates)
from probing.synth.classes import aliases
from probing.synth.instruments import RECIPES

INSTRUMENTS = class_lists()["instrument"]
STYLES = class_lists()["style"]
MOODS = class_lists()["mood"]


def _chroma(wave: np.ndarray) -> np.ndarray:
    return librosa.feature.chroma_stft(y=wave, sr=SAMPLE_RATE, hop_length=1024).ravel()


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_class_lists_have_16_instruments_11_styles_8_moods_with_caption_ready_names():
    assert [len(class_lists()[a]) for a in ("instrument", "style", "mood")] == [16, 11, 8]
    names = INSTRUMENTS + STYLES + MOODS
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)?", name) for name in names)
    for attribute, classes in class_lists().items():
        assert all(1 <= len(aliases(attribute, name)) <= 3 for name in classes)
    assert set(RECIPES) == set(INSTRUMENTS)


def test_every_style_and_mood_makes_a_score():
    for style in STYLES:
        for mood in MOODS:
            score = make_score(5, style, mood)
            assert isinstance(score, Score) and score.melody() and score.seconds == CLIP_SECONDS
            assert all(0 <= n.onset < score.seconds and n.duration > 0 and 0 < n.velocity <= 1
                       for n in score.notes)


def test_render_clip_is_deterministic():
    first = render_clip("violin", "swing", "tense", score_seed=11)
    assert np.array_equal(first, render_clip("violin", "swing", "tense", score_seed=11))
    assert not np.array_equal(first, render_clip("violin", "swing", "tense", score_seed=12))
    assert make_score(4, "march", "calm") == make_score(4, "march", "calm")


@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_render_is_finite_exact_length_bounded_and_never_silent(instrument):
    wave = render_clip(instrument, "staccato", "calm", score_seed=2)
    assert wave.dtype == np.float32 and wave.shape == (round(CLIP_SECONDS * SAMPLE_RATE),)
    assert np.isfinite(wave).all()
    assert 0.2 < np.abs(wave).max() <= 0.95
    assert np.sqrt(np.mean(wave**2)) > 0.01
    short = render(make_score(3, "waltz", "dark", seconds=1.5), instrument, sr=22050)
    assert short.shape == (round(1.5 * 22050),) and np.isfinite(short).all()


def test_melody_degrees_depend_only_on_score_seed():
    for seed in (0, 1, 2):
        melodies = [make_score(seed, style, mood).melody_degrees() for style in STYLES for mood in MOODS]
        shortest = min(len(m) for m in melodies)
        assert shortest >= 3
        assert all(m[:shortest] == melodies[0][:shortest] for m in melodies)
    tunes = [tuple(make_score(seed, "staccato", "energetic").melody_degrees()[:6]) for seed in range(10)]
    assert len(set(tunes)) == 10


def test_the_aaba_form_repeats_two_note_motifs_of_the_same_tune_in_every_arrangement():
    from probing.synth.score import melody_degrees

    walk = melody_degrees(4, 64)
    for style, mood in (("staccato", "energetic"), ("swing", "sad"), ("syncopated", "happy"), ("tremolo", "happy")):
        score = make_score(4, style, mood, form="aaba")
        degrees = score.melody_degrees()
        assert len(degrees) >= 6
        assert degrees == melody_degrees(4, len(degrees), "aaba")  # every note, repeated notes included
        assert degrees[0:2] == degrees[2:4] == walk[0:2] and degrees[4:6] == walk[2:4]  # A A B, from the walk
        assert degrees[6:8] in ([], walk[0:2][:len(degrees) - 6])  # ... A
    sections = melody_degrees(4, 64, "aaba")
    for k in range(0, 64, 8):
        a, b = walk[k // 2:k // 2 + 2], walk[k // 2 + 2:k // 2 + 4]
        assert sections[k:k + 8] == a + a + b + a
    with pytest.raises(ValueError, match="unknown tune form 'rondo'"):
        make_score(4, "staccato", "energetic", form="rondo")


def test_styles_change_rhythm_and_texture():
    scores = {style: make_score(8, style, "happy") for style in STYLES}
    assert scores["waltz"].meter == 3 and scores["march"].meter == 4
    melody_durations = {s: np.median([n.duration for n in score.melody()]) for s, score in scores.items()}
    assert melody_durations["staccato"] < 0.5 * melody_durations["ballad"]
    chorale = scores["chorale"]
    for note in chorale.melody():
        assert sum(abs(n.onset - note.onset) < 1e-6 for n in chorale.notes) == 4  # block chord
    tremolo = [n.pitch for n in scores["tremolo"].melody()]
    assert len(tremolo) > 3 * len(scores["tremolo"].melody_degrees())
    onset_patterns = {tuple(round(n.onset, 3) for n in score.notes) for score in scores.values()}
    assert len(onset_patterns) == len(STYLES)


def test_moods_change_mode_tempo_register_and_dynamics():
    scores = {mood: make_score(6, "ballad", mood) for mood in MOODS}
    assert 4 in scores["happy"].mode and 3 not in scores["happy"].mode
    assert 3 in scores["sad"].mode and 4 not in scores["sad"].mode
    assert scores["energetic"].tempo_bpm > scores["happy"].tempo_bpm > scores["sad"].tempo_bpm
    mean_pitch = {m: np.mean([n.pitch for n in s.melody()]) for m, s in scores.items()}
    assert mean_pitch["dreamy"] > mean_pitch["dark"] + 12
    loudest = {m: max(n.velocity for n in s.notes) for m, s in scores.items()}
    assert loudest["triumphant"] > loudest["calm"] + 0.3


def test_changing_instrument_keeps_pitches_and_onsets():
    score, other = make_score(1, "waltz", "happy"), make_score(2, "waltz", "happy")
    piano = render(score, "piano")
    for instrument in ("clarinet", "trumpet", "guitar", "marimba"):
        same = _correlation(_chroma(piano), _chroma(render(score, instrument)))
        different = _correlation(_chroma(piano), _chroma(render(other, instrument)))
        assert same > 0.45 and same > different + 0.4
        assert np.array_equal(make_score(1, "waltz", "happy").notes, score.notes)
    strike = librosa.onset.onset_strength(y=piano, sr=SAMPLE_RATE)
    for instrument in ("marimba", "harpsichord", "guitar"):
        aligned = librosa.onset.onset_strength(y=render(score, instrument), sr=SAMPLE_RATE)
        shifted = librosa.onset.onset_strength(y=render(other, instrument), sr=SAMPLE_RATE)
        assert _correlation(strike, aligned) > _correlation(strike, shifted) + 0.3


def test_instruments_sound_more_different_than_render_seeds_do():
    score = make_score(3, "ballad", "calm")

    def timbre(instrument: str, seed: int) -> np.ndarray:
        wave = render(score, instrument, seed=seed)
        return librosa.feature.mfcc(y=wave, sr=SAMPLE_RATE, n_mfcc=20)[1:].mean(axis=1)

    first = {i: timbre(i, seed=0) for i in INSTRUMENTS}
    reseeded = max(np.linalg.norm(first[i] - timbre(i, seed=1)) for i in INSTRUMENTS)
    closest = min(np.linalg.norm(first[a] - first[b]) for a, b in combinations(INSTRUMENTS, 2))
    assert closest > 2 * reseeded


@pytest.mark.parametrize("attribute, call", [
    ("instrument", lambda: render_clip("kazoo", "waltz", "happy", 0)),
    ("style", lambda: make_score(0, "polka", "happy")),
    ("mood", lambda: caption("piano", "waltz", "grumpy", 0)),
])
def test_unknown_class_name_raises_one_line_error_listing_choices(attribute, call):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message and attribute in message
    assert all(name in message for name in class_lists()[attribute])


def test_templates_have_stable_ids_and_mention_all_three_attributes():
    known = templates()
    assert sorted(known) == list(range(10))
    for text in known.values():
        assert sorted(re.findall(r"{(\w+)}", text)) == ["instrument", "mood", "style"]


def test_captions_name_every_attribute_for_every_template():
    for template_id in templates():
        text = caption("synth-pad", "arpeggio", "energetic", template_id)
        assert all(word in text for word in ("synth-pad", "arpeggio", "energetic"))
        assert "{" not in text and not re.search(r"\ba [aeiou]", text)
    assert caption("violin", "waltz", "sad", 0) == "a sad waltz played on the violin"
    with pytest.raises(ValueError):
        caption("violin", "waltz", "sad", 99)


def test_alias_rng_paraphrases_with_the_yaml_aliases():
    rng = np.random.default_rng(0)
    texts = [caption("piano", "chorale", "sad", 1, alias_rng=rng) for _ in range(60)]
    words = [set(t.split(", ")) for t in texts]
    allowed = {"piano", *aliases("instrument", "piano"), "chorale", *aliases("style", "chorale"),
               "sad", *aliases("mood", "sad")}
    assert all(w <= allowed and len(w) == 3 for w in words)
    assert any("melancholic" in w for w in words) and any("sad" in w for w in words)
