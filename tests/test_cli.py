"""The CLI on bad input: one clear line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editing.cli import main
from probing.store import CaptureStore


def run(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a sad waltz on violin\na happy march on piano\n")
    return path


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("melodia "), err
    for needle in needles:
        assert needle in lines[0]


def test_missing_prompts_file(capsys, tmp_path, untrained_testbed_dir):
    store = tmp_path / "s.zarr"
    code, _, err = run(capsys, "capture", "--model", untrained_testbed_dir, "--prompts", str(tmp_path / "no.txt"),
                       "--store", str(store))
    assert_one_line_error(code, err, "does not exist")
    assert not store.exists()


def test_empty_prompt_list(capsys, tmp_path, untrained_testbed_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    code, _, err = run(capsys, "capture", "--model", untrained_testbed_dir, "--prompts", str(empty),
                       "--store", str(tmp_path / "s.zarr"))
    assert_one_line_error(code, err, "holds no prompts")
    assert not (tmp_path / "s.zarr").exists()


def test_bad_layer_spec(capsys, tmp_path, prompts_file, untrained_testbed_dir):
    code, _, err = run(capsys, "capture", "--model", untrained_testbed_dir, "--prompts", str(prompts_file),
                       "--store", str(tmp_path / "s.zarr"), "--layers", "self:17")
    assert_one_line_error(code, err, "layers 1-16")
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("model, needles", [
    ("testbd", ("unknown model 'testbd'", "did you mean testbed?")),
    ("./no/such/folder", ("model folder ./no/such/folder does not exist",)),
    ("tiny-audioldm", ("did you mean tiny-audioldm2?",)),
    ("stabilityai/stable-audio-open-1.0", ("not in the local Hugging Face cache", "--model DIR"))])  # a dotted hub id
def test_a_bad_model_name_is_answered_before_anything_loads(capsys, tmp_path, prompts_file, model, needles):
    code, _, err = run(capsys, "capture", "--model", model, "--prompts", str(prompts_file),
                       "--store", str(tmp_path / "s.zarr"))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "s.zarr").exists()
    if model.count("/") != 1 or model.startswith("."):  # not a hub id: no download hint for a typo or a folder
        assert "huggingface" not in err


def test_probe_refuses_unknown_split_and_features_before_reading_the_store(capsys, tmp_path):
    for option, value in (("--split", "prompt"), ("--features", "tokens")):
        code, _, err = run(capsys, "probe", str(tmp_path / "nothing.zarr"), "-o", str(tmp_path / "p.json"),
                           option, value)
        assert_one_line_error(code, err, f"{option} '{value}'", "known:")
    assert not (tmp_path / "p.json").exists()


def test_unknown_model(capsys, tmp_path, prompts_file):
    code, _, err = run(capsys, "capture", "--model", "nobody/no-such-model", "--prompts", str(prompts_file),
                       "--store", str(tmp_path / "s.zarr"))
    assert_one_line_error(code, err, "nobody/no-such-model", "--model DIR")
    assert not (tmp_path / "s.zarr").exists()


def test_a_store_of_another_model_is_left_untouched(capsys, tmp_path, prompts_file, untrained_testbed_dir):
    store = str(tmp_path / "s.zarr")
    assert run(capsys, "capture", "--model", untrained_testbed_dir, "--prompts", str(prompts_file), "--store", store,
               "--layers", "cross:1", "--steps", "2")[0] == 0
    before = {p: p.read_bytes() for p in Path(store).rglob("*") if p.is_file()}
    other = tmp_path / "other-model"
    shutil.copytree(untrained_testbed_dir, other)
    code, _, err = run(capsys, "capture", "--model", str(other), "--prompts", str(prompts_file), "--store", store,
                       "--layers", "cross:1", "--steps", "2")
    assert_one_line_error(code, err, "another path", "--overwrite")
    assert before == {p: p.read_bytes() for p in Path(store).rglob("*") if p.is_file()}
    assert CaptureStore.open(store).done_mask().all()


def test_bad_reduction_and_timesteps(capsys, tmp_path, prompts_file, untrained_testbed_dir):
    for option, value, needle in [("--reduce", "heads=some", "heads must be"), ("--reduce", "grid=big", "TIMExFREQ"),
                                  ("--timesteps", "0,99", "outside 0-9"),
                                  ("--reduce", "batch=both --guidance 1", "no CFG batch")]:
        code, _, err = run(capsys, "capture", "--model", untrained_testbed_dir, "--prompts", str(prompts_file),
                           "--store", str(tmp_path / "s.zarr"), option, *value.split())
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / "s.zarr").exists()


def test_synth_writes_the_same_melody_for_two_instruments(capsys, tmp_path):
    assert run(capsys, "synth", "--instrument", "piano", "--seed", "3", "-o", str(tmp_path / "p.wav"))[0] == 0
    assert run(capsys, "synth", "--instrument", "violin", "--seed", "3", "-o", str(tmp_path / "v.wav"))[0] == 0
    piano, rate = sf.read(tmp_path / "p.wav")
    violin, _ = sf.read(tmp_path / "v.wav")
    assert rate == 16000 and piano.shape == violin.shape and abs(piano - violin).max() > 0.05
    code, _, err = run(capsys, "synth", "--instrument", "kazoo", "-o", str(tmp_path / "k.wav"))
    assert_one_line_error(code, err, "kazoo", "piano")
    assert not (tmp_path / "k.wav").exists()
    code, out, _ = run(capsys, "synth", "--seed", "3", "--form", "aaba", "-o", str(tmp_path / "a.wav"))
    assert code == 0 and "aaba tune" in out and abs(sf.read(tmp_path / "a.wav")[0] - piano).max() > 0.05
    code, _, err = run(capsys, "synth", "--form", "rondo", "-o", str(tmp_path / "r.wav"))
    assert_one_line_error(code, err, "rondo", "walk, aaba")
    assert not (tmp_path / "r.wav").exists()


def test_layers_prints_the_reference_audioldm2_table(capsys):
    code, out, _ = run(capsys, "layers", "--reference")
    assert code == 0 and out.strip().endswith("16 layers, 96 attention modules (64 self, 32 cross)")


def test_edit_writes_audio_sidecar_and_plot(capsys, tmp_path, untrained_testbed_dir):
    import json

    assert run(capsys, "synth", "--instrument", "piano", "--seed", "3", "-o", str(tmp_path / "src.wav"))[0] == 0
    out = tmp_path / "out" / "violin.wav"
    code, _, err = run(capsys, "edit", str(tmp_path / "src.wav"), "--to", "a happy waltz on violin", "-o", str(out),
                       "--model", untrained_testbed_dir, "--steps", "4", "--plot", str(tmp_path / "cmp.png"))
    assert code == 0, err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["t_start"] == 0.6 and len(sidecar["injected_modules"]) == 7
    assert sf.info(out).samplerate == 16000 and (tmp_path / "cmp.png").stat().st_size > 10_000
    assert sidecar["inversion_refinements"] == 0 and sidecar["settings"]["inversion_refinements"] is None

    refined = tmp_path / "refined.wav"
    code, _, err = run(capsys, "edit", str(tmp_path / "src.wav"), "--to", "violin", "-o", str(refined),
                       "--model", untrained_testbed_dir, "--steps", "4", "--refine", "1")
    assert code == 0, err
    assert json.loads(refined.with_suffix(".json").read_text())["inversion_refinements"] == 1
    edit_to_r = ["edit", str(tmp_path / "src.wav"), "--to", "violin", "-o", str(tmp_path / "r.wav"), "--steps", "2"]
    for bad in ("--refine=-1", "--refine=x"):
        with pytest.raises(SystemExit):
            main([*edit_to_r, bad])
        assert "expected a whole number >= 0" in capsys.readouterr().err
    code, _, err = run(capsys, *edit_to_r, "--model", untrained_testbed_dir, "--refine", "1", "--method", "sdedit")
    assert_one_line_error(code, err, "does not invert")
    assert not (tmp_path / "r.wav").exists()


@pytest.mark.parametrize("make_source, needle", [
    (lambda p: p.write_text("not audio"), "not a readable wav file"),
    (lambda p: sf.write(p, [0.0] * 16000, 16000), "silent"),
    (lambda p: sf.write(p, np.full(16000 * 601, 0.1, np.float32), 16000), "longer than 600")])
def test_edit_refuses_bad_audio_and_writes_nothing(capsys, tmp_path, untrained_testbed_dir, make_source, needle):
    source = tmp_path / "src.wav"
    make_source(source)
    out = tmp_path / "out.wav"
    code, _, err = run(capsys, "edit", str(source), "--to", "violin", "-o", str(out), "--model", untrained_testbed_dir)
    assert_one_line_error(code, err, needle)
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.fixture()
def eval_clips(tmp_path) -> tuple[str, str]:
    import numpy as np

    t = np.arange(3 * 16000) / 16000
    for name, hz in (("src.wav", 220), ("out.wav", 330)):
        sf.write(tmp_path / name, 0.3 * np.sin(2 * np.pi * hz * t), 16000)
    return str(tmp_path / "src.wav"), str(tmp_path / "out.wav")


def test_eval_reports_metrics_without_weights_as_unavailable(capsys, eval_clips):
    source, edited = eval_clips
    code, out, err = run(capsys, "eval", "--source", source, "--edited", edited, "--prompt", "a violin")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    for name in ("clap", "lpaps", "fad", "asb", "amb", "ideal_log_mel_distance"):
        assert rows[name].split(None, 1)[1].startswith("unavailable: "), rows[name]
    assert "--lpaps FILE" in rows["lpaps"] and "higher is better" in rows["chroma"]
    assert "target violin" in rows["classifier_instrument"]


def test_eval_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert 'melodia eval --source src.wav --edited out.wav --prompt "violin"' in capsys.readouterr().out


@pytest.mark.parametrize("options, needle", [
    (["--edited", "missing.wav"], "no such file"),
    (["--prompt", " "], "--prompt is empty"),
    (["--lpaps", "missing.pth"], "no such LPAPS weights file"),
    (["--clap", "nobody/no-such-clap"], "--clap DIR")])
def test_eval_refuses_bad_input_in_one_line(capsys, tmp_path, eval_clips, options, needle):
    source, edited = eval_clips
    arguments = {"--source": source, "--edited": edited, "--prompt": "violin"}
    option, value = options
    arguments[option] = str(tmp_path / value) if value.endswith((".wav", ".pth")) else value
    code, out, err = run(capsys, "eval", *[item for pair in arguments.items() for item in pair])
    assert_one_line_error(code, err, needle)
    assert out == ""


# ---- one spelling per idea; the old spellings still work -------------------------------------------

def test_layers_takes_model_as_an_option_and_still_as_a_word(capsys, untrained_testbed_dir):
    code, by_option, _ = run(capsys, "layers", "--model", untrained_testbed_dir, "--json")
    assert code == 0
    code, by_word, _ = run(capsys, "layers", untrained_testbed_dir, "--json")
    assert code == 0 and by_word == by_option and '"n_layers": 16' in by_option
    code, _, err = run(capsys, "layers", "testbed", "--model", untrained_testbed_dir)
    assert_one_line_error(code, err, "two models given")


def test_bench_writes_to_output_and_still_to_the_old_out(capsys, tmp_path):
    code, _, err = run(capsys, "bench", "--summarize")
    assert_one_line_error(code, err, "-o/--output DIR")
    for spelling in ("--output", "--out"):  # the old spelling reaches the same option
        code, _, err = run(capsys, "bench", "--summarize", spelling, str(tmp_path / "none"))
        assert_one_line_error(code, err, "holds no benchmark run")


def test_probe_step_indices_keep_their_old_name(capsys, tmp_path):
    for spelling in ("--step-indices", "--steps"):
        code, _, err = run(capsys, "probe", str(tmp_path / "missing.zarr"), "-o", str(tmp_path / "p.json"),
                           spelling, "0,x")
        assert_one_line_error(code, err, "0,x")


@pytest.mark.slow
def test_the_demo_writes_every_clip_the_comparison_and_metrics(capsys, tmp_path):
    """The README's main command (fewer steps): files, and metrics that mean what they say."""
    import json

    code, out, err = run(capsys, "demo", "-o", str(tmp_path / "demo"), "--steps", "6")
    assert code == 0, err
    folder = tmp_path / "demo"
    clips = json.loads((folder / "metrics.json").read_text())["clips"]
    assert list(clips) == ["source", "melodia", "ddim", "ideal"]
    assert all((folder / f"{name}.wav").stat().st_size > 50_000 for name in clips)
    assert (folder / "comparison.png").stat().st_size > 20_000
    assert clips["source"]["chroma_similarity_to_source"] == pytest.approx(1.0)
    assert clips["source"]["melody_raw_chroma_to_source"] == 1.0 and clips["ideal"]["classifier_instrument"] == "violin"
    assert "melody vs source ↑" in out and "log-mel to ideal ↓" in out
