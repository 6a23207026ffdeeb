"""CLAP text adherence on a tiny random-weight CLAP saved to disk and opened through `load_clap`."""
from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import soundfile as sf

from editing.cli import main
from editing.metrics import MissingWeightsError, clap_score, frechet_audio_distance, load_clap
from editing.metrics.clap import cosine_similarity
from probing.errors import MelodiaError

SR = 16_000


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory) -> str:
    """A tiny ClapModel (random weights) with an in-memory RoBERTa tokenizer, saved as a checkpoint folder."""
    import torch
    from transformers import (ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor,
                              ClapTextConfig)

    from probing.models.tiny_parts import roberta_tokenizer

    tokenizer = roberta_tokenizer(77)
    config = ClapConfig(
        text_config=ClapTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                                   num_attention_heads=2, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                   projection_dim=16).to_dict(),
        audio_config=ClapAudioConfig(spec_size=64, window_size=4, num_mel_bins=64, intermediate_size=37, depths=[2, 2],
                                     num_attention_heads=[2, 2], num_hidden_layers=2, hidden_size=32, projection_dim=16,
                                     patch_size=2, patch_stride=2, patch_embeds_hidden_size=16,
                                     patch_embed_input_channels=4).to_dict(),
        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clap") / "tiny-clap"
    ClapModel(config).save_pretrained(folder)
    # 10 s at 48 kHz with hop 7900: 61 frames, within the tiny audio encoder's 64
    ClapProcessor(feature_extractor=ClapFeatureExtractor(feature_size=64, hop_length=7900),
                  tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def tone(hz: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_clap_score_is_a_deterministic_cosine_that_depends_on_audio_and_text(clap_dir):
    wave = tone(440)
    first = clap_score(wave, SR, "a sad waltz on violin", checkpoint=clap_dir)
    assert -1 <= first <= 1
    assert clap_score(wave, SR, "a sad waltz on violin", checkpoint=clap_dir) == first
    clap = load_clap(clap_dir)
    scores = clap.score([wave, tone(97, 3.0), wave], SR, ["a sad waltz on violin"] * 2 + ["a happy march on piano"])
    assert scores[0] == pytest.approx(first, abs=1e-6)
    assert len({round(s, 9) for s in scores}) == 3  # other audio, other text: other scores


def test_identical_audio_gives_identical_unit_embeddings(clap_dir):
    clap = load_clap(clap_dir)
    embeddings = clap.audio_embeddings([tone(440), tone(440), tone(97)], SR)
    assert np.linalg.norm(embeddings, axis=1) == pytest.approx(1)
    assert cosine_similarity(embeddings[:1], embeddings[1:2])[0] == pytest.approx(1, abs=1e-9)
    assert cosine_similarity(embeddings[:1], embeddings[2:])[0] < 1 - 1e-6


def test_a_batch_scores_as_one_by_one_calls(clap_dir):
    clap = load_clap(clap_dir)
    waves = [tone(440), tone(220, 12.0), tone(97, 0.5)]  # 12 s: longer than the CLAP window
    texts = ["violin", "a sad waltz played on the violin in a calm mood", "piano"]
    batch = clap.score(waves, SR, texts)
    single = [clap.score([w], SR, [t])[0] for w, t in zip(waves, texts)]
    assert batch == pytest.approx(single, abs=1e-5)
    assert clap.score(waves[1:2], SR, texts[1:2])[0] == single[1]  # long clips: no random crop


def test_audio_is_resampled_to_the_checkpoint_rate(clap_dir):
    clap = load_clap(clap_dir)
    wave = tone(440)
    at_48k = librosa.resample(wave, orig_sr=SR, target_sr=clap.sample_rate)
    assert clap.sample_rate == 48_000
    assert clap.score([at_48k], clap.sample_rate, ["violin"])[0] == pytest.approx(
        clap.score([wave], SR, ["violin"])[0], abs=1e-3)


def test_fad_with_clap_embeddings_is_zero_for_the_same_set(clap_dir):
    clips = [tone(hz) for hz in (110, 220, 330, 440)]
    embed = load_clap(clap_dir).audio_embeddings
    assert frechet_audio_distance(clips, clips, SR, embed=embed) == pytest.approx(0, abs=1e-6)


def test_a_missing_checkpoint_says_how_to_pass_a_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match="nobody/no-such-clap.*--clap DIR"):
        load_clap("nobody/no-such-clap")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(MelodiaError, match="is not a CLAP checkpoint folder"):
        load_clap(str(tmp_path))


def test_an_empty_prompt_is_refused(clap_dir):
    with pytest.raises(MelodiaError, match="non-empty prompt"):
        clap_score(tone(440), SR, "  ", checkpoint=clap_dir)


def test_eval_reports_the_clap_score_of_the_given_checkpoint(capsys, tmp_path, clap_dir):
    source, edited = tmp_path / "source.wav", tmp_path / "edited.wav"
    sf.write(source, tone(220), SR, subtype="FLOAT")
    sf.write(edited, tone(440), SR, subtype="FLOAT")  # no 16-bit rounding
    code = main(["eval", "--source", str(source), "--edited", str(edited), "--prompt", "violin", "--clap", clap_dir,
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    clap = json.loads(out)["metrics"]["clap"]
    assert clap["checkpoint"] == clap_dir and clap["higher_is_better"] is True
    assert clap["value"] == pytest.approx(clap_score(tone(440), SR, "violin", checkpoint=clap_dir), abs=1e-4)
