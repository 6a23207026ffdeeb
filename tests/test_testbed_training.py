"""The testbed trainer: data, a training step, checkpoint/resume round trip, atomic export."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from probing.models.testbed import TestbedModel
from probing.testbed.codec import MelCodec
from probing.testbed.data import TestbedData, caption_vocabulary, render_dataset
from probing.testbed.pipeline import TestbedPipeline
from probing.testbed.train import RECIPE_DEFAULTS, TRAINING_RECORD, WARMUP_STEPS, Trainer, main


@pytest.fixture(scope="module")
def data() -> TestbedData:
    return render_dataset(n_clips=6, seed=0, workers=1)


def test_the_codec_latent_is_an_exact_fold_of_the_log_mel():
    codec = MelCodec()
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(codec.clip_samples).astype(np.float32)) * 0.1
    latent = codec.encode(wave[None])
    assert tuple(latent.shape[1:]) == codec.latent_shape == (16, 64, 16)
    torch.testing.assert_close(codec.latent_to_log_mel(latent), codec.log_mel(wave[None]), atol=1e-5, rtol=0)
    audio = codec.decode(latent)
    assert audio.shape == (1, codec.clip_samples) and torch.isfinite(audio).all()


def test_the_v2_fold_keeps_time_finer_and_inverts_exactly():
    codec = MelCodec(time_factor=2)
    log_mel = torch.randn(2, codec.frames, codec.n_mels)
    latent = codec.to_latent(log_mel)
    assert tuple(latent.shape[1:]) == codec.latent_shape == (8, 128, 16) and codec.frame_ms == 32.0
    torch.testing.assert_close(codec.from_latent(latent), log_mel, atol=0, rtol=0)
    # channel c of a latent cell holds (frame offset c // 4, mel offset c % 4), as pixel-unshuffle orders it
    assert latent[0, 5, 3, 2] == log_mel[0, 3 * 2 + 1, 2 * 4 + 1]
    square = MelCodec()
    torch.testing.assert_close(square.to_latent(log_mel), torch.nn.functional.pixel_unshuffle(log_mel[:, None], 4))


def test_the_v2_testbed_attends_no_coarser_than_audioldm2():
    """ms of audio per attention query cell, per layer: AudioLDM 2's 80/160/320 ms bound every position."""
    from probing.layers import measure_layer_table
    from probing.testbed.build import build_untrained
    from probing.testbed.data import caption_vocabulary

    model = TestbedModel(build_untrained(caption_vocabulary(draws=0)), "v2")
    codec = model.pipeline.codec
    bound = {1: 80, 2: 80, 3: 160, 4: 160, **{layer: 320 for layer in range(5, 11)}, 11: 160, 12: 160, 13: 160,
             14: 80, 15: 80, 16: 80}
    clip_ms = 1000 * codec.clip_samples / codec.sample_rate
    cells = {m.layer: clip_ms / m.grid[0] for m in measure_layer_table(model).modules}
    assert sorted(cells) == list(range(1, 17))
    assert all(cells[layer] <= bound[layer] for layer in cells), cells
    assert model.pipeline.scheduler.config.prediction_type == "v_prediction"


def test_decoding_an_off_manifold_latent_stays_finite():
    codec = MelCodec()
    assert torch.isfinite(codec.decode(torch.full((1, *codec.latent_shape), 1e4))).all()


def test_dataset_labels_and_normalisation(data, tmp_path):
    assert data.mels.shape == (6, 256, 64) and data.labels.shape == (6, 3)
    assert abs(float(data.mels.astype(np.float32).mean())) < 0.05  # normalised with its own mean/std
    assert tuple(data.latents(MelCodec(time_factor=2), [0, 1]).shape) == (2, 8, 128, 16)
    data.save(tmp_path / "d.npz")
    again = TestbedData.load(tmp_path / "d.npz")
    assert np.array_equal(again.mels, data.mels) and again.mel_std == data.mel_std


def test_a_dataset_of_aaba_tunes_keeps_given_normalisation_and_its_form(data, tmp_path):
    aaba = render_dataset(n_clips=6, seed=0, workers=1, form="aaba", stats=(data.mel_mean, data.mel_std))
    assert (aaba.mel_mean, aaba.mel_std, aaba.form) == (data.mel_mean, data.mel_std, "aaba")
    assert np.array_equal(aaba.labels, data.labels) and not np.array_equal(aaba.mels, data.mels)
    aaba.save(tmp_path / "data.npz")
    assert TestbedData.load(tmp_path / "data.npz").form == "aaba"
    with pytest.raises(SystemExit, match="holds 'aaba' tunes, not 'walk'"):  # a run never mixes forms
        main(["--run", str(tmp_path), "--form", "walk", "--max-steps", "0", "--threads", "1"])
    walk_run = Trainer(tmp_path / "walk", data, caption_vocabulary(draws=1), lr=1e-3, batch=2, seed=0)
    walk_run.train_step()
    walk_run.checkpoint()
    with pytest.raises(SystemExit, match="trained on 'walk' tunes"):
        Trainer(tmp_path / "walk", aaba, caption_vocabulary(draws=1), lr=1e-3, batch=2, seed=0).resume()


def test_training_resumes_exactly_and_exports_a_loadable_pipeline(data, tmp_path):
    words = caption_vocabulary(draws=1)
    first = Trainer(tmp_path, data, words, lr=1e-3, batch=2, seed=0, decay_steps=10)  # the cosine schedule too
    losses = [first.train_step() for _ in range(2)]
    first.checkpoint()
    expected = first.train_step()
    resumed = Trainer(tmp_path, data, words, lr=1e-3, batch=2, seed=0, decay_steps=10)
    assert resumed.resume() and resumed.step == 2
    assert resumed.train_step() == pytest.approx(expected, rel=1e-5)  # same batch, noise and weights
    assert all(np.isfinite(losses))
    resumed.export(tmp_path / "export")
    assert not (tmp_path / "export.tmp").exists()
    model = TestbedModel(TestbedPipeline.from_pretrained(tmp_path / "export"), "exported")
    assert model.pipeline.codec.mel_mean == pytest.approx(data.mel_mean)
    assert model.generate("a sad waltz", steps=2, guidance=3.0, seed=0).shape == (model.clip_samples,)


def test_a_new_run_can_start_from_exported_weights(data, tmp_path):
    words = caption_vocabulary(draws=1)
    first = Trainer(tmp_path / "a", data, words, lr=1e-3, batch=2, seed=0)
    first.train_step()
    first.export(tmp_path / "export")
    second = Trainer(tmp_path / "b", data, words, lr=1e-3, batch=2, seed=1)
    second.init_from(tmp_path / "export")
    for name, module in second.modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, first.ema[name].state_dict()[key], atol=0, rtol=0)


def test_an_export_goes_on_training_at_its_step_with_a_fresh_warm_up(data, tmp_path):
    words = caption_vocabulary(draws=1)
    first = Trainer(tmp_path / "a", data, words, lr=1e-3, batch=2, seed=0, decay_steps=10)
    for _ in range(3):
        first.train_step()
    first.export(tmp_path / "export")
    record = json.loads((tmp_path / "export" / TRAINING_RECORD).read_text())
    assert (record["step"], record["form"], record["decay_steps"]) == (3, "walk", 10)
    later = Trainer(tmp_path / "b", data, words, lr=1e-3, batch=2, seed=0, decay_steps=10)
    assert later.continue_from(tmp_path / "export") == 3
    cosine_at_3 = 0.1 + 0.45 * (1 + math.cos(math.pi * 0.3))  # the schedule goes on; the warm-up starts again
    assert later.learning_rate() == pytest.approx(1e-3 * cosine_at_3 / WARMUP_STEPS)
    for name, module in later.modules.items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(value, first.ema[name].state_dict()[key], atol=0, rtol=0)
    later.train_step()
    later.checkpoint()
    resumed = Trainer(tmp_path / "b", data, words, lr=1e-3, batch=2, seed=0, decay_steps=10)
    assert resumed.resume() and (resumed.step, resumed.warmup_start) == (4, 3)
    assert resumed.learning_rate() == later.learning_rate()
    aaba = render_dataset(n_clips=2, seed=0, workers=1, form="aaba", stats=(data.mel_mean, data.mel_std))
    with pytest.raises(SystemExit, match="trained on 'walk' tunes; this run trains the unet testbed on 'aaba'"):
        Trainer(tmp_path / "c", aaba, words, lr=1e-3, batch=2, seed=0).continue_from(tmp_path / "export")


def test_the_command_line_goes_on_with_the_recipe_of_an_export_then_of_its_checkpoint(data, tmp_path):
    first = Trainer(tmp_path / "a", data, caption_vocabulary(draws=1), lr=1e-3, batch=2, seed=0, decay_steps=10)
    for _ in range(3):
        first.train_step()
    first.export(tmp_path / "export")
    record = json.loads((tmp_path / "export" / TRAINING_RECORD).read_text())
    run = ["--run", str(tmp_path / "cli"), "--threads", "1"]
    main(run + ["--continue-from", str(tmp_path / "export"), "--max-steps", "4", "--lr", "2e-3"])  # 3 -> 4
    state = json.loads((tmp_path / "cli" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["warmup_start"], state["form"]) == (4, 3, "walk")
    assert state["recipe"] == {key: record[key] for key in RECIPE_DEFAULTS} | {"lr": 2e-3}  # a given flag wins
    rendered = TestbedData.load(tmp_path / "cli" / "data.npz")  # the export's clips, seed and statistics
    assert np.array_equal(rendered.labels, data.labels) and rendered.mel_std == pytest.approx(data.mel_std)
    shutil.rmtree(tmp_path / "export")  # from here on the run's own checkpoint is all it needs
    main(run + ["--continue-from", str(tmp_path / "export"), "--max-steps", "5"])  # the same command resumes
    main(run + ["--export-only", "--out", str(tmp_path / "export2")])  # no recipe flags: the checkpoint's
    assert json.loads((tmp_path / "export2" / TRAINING_RECORD).read_text()) == record | {"step": 5, "lr": 2e-3}
    with pytest.raises(SystemExit, match="needs --out and a checkpoint"):  # nothing trained in this run
        main(["--run", str(tmp_path / "fresh"), "--threads", "1", "--export-only", "--out", str(tmp_path / "x"),
              "--continue-from", str(tmp_path / "export2")])
    (tmp_path / "export2" / TRAINING_RECORD).unlink()
    with pytest.raises(SystemExit, match="--init-from starts a new schedule"):
        main(["--run", str(tmp_path / "d"), "--continue-from", str(tmp_path / "export2")])


def test_v1_weights_start_a_v2_run_where_the_shapes_match(data, tmp_path):
    from probing.testbed.build import build_untrained

    words = caption_vocabulary(draws=1)
    v1 = build_untrained(words, seed=1, codec=MelCodec(mel_mean=data.mel_mean, mel_std=data.mel_std))  # 4 x 4 fold
    v1.save_pretrained(tmp_path / "v1")
    v2 = Trainer(tmp_path / "run", data, words, lr=1e-3, batch=2, seed=0)
    skipped = v2.init_from(tmp_path / "v1", matching_only=True)
    assert sorted(skipped) == ["unet.conv_in.weight", "unet.conv_out.bias", "unet.conv_out.weight"]  # 16 -> 8 channels
    torch.testing.assert_close(v2.pipe.unet.mid_block.attentions[0].proj_in.weight,
                               v1.unet.mid_block.attentions[0].proj_in.weight, atol=0, rtol=0)
    assert np.isfinite(v2.train_step())


def test_the_report_inverts_clips_of_different_instruments_whatever_its_size():
    from editing.testbed_report import inversion_items, sample_labels

    clips = inversion_items(6, seed=0)
    assert len(clips) == 6 and len({c["instrument"] for c in clips}) == 6
    assert inversion_items(6, seed=0) == clips  # the same clips for every model and --per-class
    assert clips[-1]["instrument"] == sample_labels(1, 0)[-1]["instrument"]  # spread to the end of the list
    assert len(inversion_items(16, 0)) == 16 and inversion_items(1, 0) == clips[:1]


def test_the_reports_clip_rows_pair_each_prompt_with_what_was_heard(tmp_path):
    import csv

    from editing.testbed_report import sample_labels, write_clip_rows

    items = sample_labels(1, seed=0)[:3]
    heard = {"instrument": ["organ", "harp", "bells"], "style": ["waltz", "march", "swing"],
             "mood": ["sad", "calm", "dark"]}
    write_clip_rows(items, heard, tmp_path / "clips.csv")
    with open(tmp_path / "clips.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["clip"] for r in rows] == ["0", "1", "2"]
    assert [r["instrument"] for r in rows] == [i["instrument"] for i in items]
    assert [r["template"] for r in rows] == [str(i["template"]) for i in items]
    assert [r["heard_instrument"] for r in rows] == heard["instrument"] and rows[2]["heard_mood"] == "dark"


def test_the_reports_loss_curve_names_the_runs_objective_and_batch(tmp_path, monkeypatch):
    from editing import testbed_report

    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.json").write_text(json.dumps({"arch": "dit", "recipe": {"batch": 16}}))
    (tmp_path / "loss.csv").write_text("step,loss,wall_s\n1,2.0,1.0\n2,1.5,2.0\n3,1.2,3.0\n")
    figures = []
    monkeypatch.setattr(testbed_report, "write_figure", lambda fig, path: figures.append(fig))
    testbed_report.plot_loss(tmp_path, tmp_path / "loss.png")
    ax = figures[0].axes[0]
    assert ax.get_xlabel() == "step (batch 16)" and ax.get_ylabel() == testbed_report.LOSS_LABELS["dit"]
