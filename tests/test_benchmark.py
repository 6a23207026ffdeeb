"""`melodia bench`: manifests, rows that survive interruption, resume, shards, the summary and the layer ablation."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editing.benchmark import ROW_FIELDS, RowWriter, read_rows
from editing.cli import main
from editing.editor import EditSettings, Melodia
from editing.manifests import AudioFile, SynthClip, load_manifest
from probing.synth import class_lists
from probing.errors import MelodiaError
from probing.probes import ProbeScore
from probing.profile import LayerProfile

TINY = ["--limit", "2", "--steps", "2"]


def bench(capsys, *args) -> tuple[int, str, str]:
    code = main(["bench", *args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("melodia bench: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def count_edits(monkeypatch) -> list[tuple[str, str]]:
    """Every Melodia.edit call as (method, layers); the edits still run."""
    calls, original = [], Melodia.edit

    def counted(self, wave, target, **options):
        result = original(self, wave, target, **options)
        calls.append((result.settings.method, target.layers if isinstance(target, EditSettings) else
                      options.get("layers", "auto")))
        return result

    monkeypatch.setattr(Melodia, "edit", counted)
    return calls


def test_the_testbed_manifest_has_ground_truth_for_64_edits():
    manifest = load_manifest("testbed")
    assert len(manifest.items) >= 64 and len({i.id for i in manifest.items}) == len(manifest.items)
    assert {i.category for i in manifest.items} == {"timbre", "style", "mood"}
    for item in manifest.items:
        assert isinstance(item.source, SynthClip) and item.ideal.score_seed == item.source.score_seed
        changed = {a for a in ("instrument", "style", "mood") if getattr(item.source, a) != getattr(item.ideal, a)}
        assert changed == {{"timbre": "instrument"}.get(item.category, item.category)}, item.id
        assert getattr(item.ideal, changed.pop()) in item.target_prompt
    assert len({i.source.instrument for i in manifest.items[:16]}) == 16  # --limit 16 meets every instrument


def test_the_aaba_manifest_holds_full_repeats_of_every_instrument():
    from probing.synth import make_score

    items = load_manifest("testbed-aaba").items
    assert len(items) == 32 and {i.category for i in items} == {"timbre"}
    assert sorted(i.source.instrument for i in items[:16]) == sorted(class_lists()["instrument"])
    for item in items:
        assert item.source.form == item.ideal.form == "aaba" and item.source.instrument != item.ideal.instrument
        degrees = make_score(item.source.score_seed, item.source.style, item.source.mood, form="aaba").melody_degrees()
        assert len(degrees) >= 12 and degrees[0:2] == degrees[2:4] == degrees[6:8]  # A A B A at least once


def test_a_synth_source_renders_the_tune_form_it_names(tmp_path):
    manifest = tmp_path / "forms.yaml"
    clip = "{instrument: piano, style: staccato, mood: happy, score_seed: 1"
    manifest.write_text(f"name: forms\nitems: [{{id: a, category: timbre, target_prompt: v, source: {clip}}}}}, "
                        f"{{id: b, category: timbre, target_prompt: v, source: {clip}, form: aaba}}, "
                        f"ideal: {clip}}}}}]")
    walk, aaba = load_manifest(manifest).items
    assert (walk.source.form, aaba.source.form, aaba.ideal.form) == ("walk", "aaba", "aaba")  # the source's tune
    assert not np.array_equal(walk.source.render(16000), aaba.source.render(16000))


def test_file_manifests_point_at_user_data_without_invented_checksums():
    for name, count in (("musicdelta", 105), ("melodiaedit", 24)):
        manifest = load_manifest(name)
        assert len(manifest.items) == count and manifest.download and manifest.clip_seconds == 10.0
        assert all(isinstance(i.source, AudioFile) and i.source.sha256 is None for i in manifest.items)
    with pytest.raises(MelodiaError, match="lists no items yet; download the dataset"):
        load_manifest("zome-bench")


ITEM = "{id: a, category: timbre, target_prompt: violin, source: {instrument: piano, style: waltz, mood: happy, score_seed: 1}}"


@pytest.mark.parametrize("text, needle", [
    ("name: x\nitems: [{id: a, category: tempo, target_prompt: v, source: {file: a.wav}}]", "category 'tempo'"),
    ("name: x\nitems: [{id: a, category: timbre, source: {file: a.wav}}]", "missing target_prompt"),
    ("name: x\nitems: [{id: a, category: timbre, target_prompt: v, source: {instrument: kazoo, style: waltz, "
     "mood: sad, score_seed: 1}}]", "unknown instrument 'kazoo'"),
    (f"name: x\nitems: [{ITEM}, {ITEM}]", "item id 'a' appears twice"),
    ("name: x\ndownload: get it\nitems: [{id: a, category: mood, target_prompt: v, source: {file: a.wav, "
     "sha256: abc}}]", "sha256 must be 64"),
    ("name: x\ndownload: get it\nitems: [{id: a, category: mood, target_prompt: v, source: {file: ../a.wav}}]",
     "without '..'"),
    ("name: x\nitems: [{id: a, category: mood, target_prompt: v, source: {file: a.wav}}]", "need 'download'"),
    ("name: x\nitems: [{id: a, category: mood, target_prompt: v, colour: red, source: {file: a.wav}}]",
     "unknown key colour"),
    ("name: x\nitems: [{id: a, category: mood, target_prompt: v, source: {instrument: piano, style: waltz, "
     "mood: sad, score_seed: 1, form: rondo}}]", "unknown tune form 'rondo'; choose one of: walk, aaba"),
    ("name: [unclosed", "not valid YAML")])
def test_a_bad_manifest_is_refused_in_one_line(capsys, tmp_path, text, needle):
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(text)
    code, _, err = bench(capsys, str(manifest), "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, str(manifest), needle)
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def file_manifest(tmp_path) -> tuple[Path, Path]:
    """A one-item manifest over data/clips/a.wav, with the wav's true sha256."""
    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    t = np.arange(3 * 16000) / 16000
    sf.write(data / "clips" / "a.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    checksum = hashlib.sha256((data / "clips" / "a.wav").read_bytes()).hexdigest()
    manifest = tmp_path / "mine.yaml"
    manifest.write_text(f"name: mine\ndownload: fetch a.wav from the lab share into DIR/clips\nclip_seconds: 2\n"
                        f"items: [{{id: a, category: timbre, target_prompt: violin, "
                        f"source: {{file: clips/a.wav, sha256: {checksum}}}}}]\n")
    return manifest, data


@pytest.mark.parametrize("data_dir, needle", [
    (None, "mine: no --data-dir given; fetch a.wav from the lab share"),
    ("nowhere", "mine: data folder"),
    ("empty", "mine: clips/a.wav is missing under"),
    ("changed", "does not match the manifest's sha256")])
def test_missing_or_changed_data_is_refused_in_one_line(capsys, tmp_path, file_manifest, data_dir, needle):
    manifest, data = file_manifest
    (tmp_path / "empty").mkdir()
    if data_dir == "changed":
        sf.write(data / "clips" / "a.wav", np.full(16000, 0.1), 16000)
    folder = {"nowhere": tmp_path / "nowhere", "empty": tmp_path / "empty", "changed": data}.get(data_dir)
    code, _, err = bench(capsys, str(manifest), "-o", str(tmp_path / "out"),
                         *(["--data-dir", str(folder)] if folder else []))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_file_with_its_checksum_is_read_and_cut_to_clip_seconds(file_manifest):
    manifest_file, data = file_manifest
    manifest = load_manifest(manifest_file)
    assert manifest.check_files(manifest.items, data) == data.resolve()
    assert manifest.source_audio(manifest.items[0], 16000, data).shape == (2 * 16000,)


def test_a_tiny_bench_writes_rows_summary_table_and_plot_and_resumes_without_editing(
        capsys, tmp_path, untrained_testbed_dir, count_edits):
    out = tmp_path / "out"
    code, stdout, err = bench(capsys, "testbed", "--model", untrained_testbed_dir, *TINY,
                              "--methods", "melodia,ddim", "-o", str(out))
    assert code == 0, err
    rows = rows_of(out / "rows.csv")
    items = [item.id for item in load_manifest("testbed").items[:2]]
    assert [(r["item"], r["condition"]) for r in rows] == [(i, m) for i in items for m in ("melodia", "ddim")]
    assert [r["layers"] for r in rows[:2]] == ["self:8-14", "none"] and len(count_edits) == 4
    for row in rows:
        assert row["clap"] == row["lpaps"] == ""  # no weights given: unavailable, never a number
        assert all(0 <= float(row[m]) <= 1 for m in ("chroma", "adherence", "ideal_chroma_similarity"))
        assert float(row["ideal_log_mel_distance"]) > 0 and row["adherence"] == row["classifier_instrument"]
    summary = {r["condition"]: r for r in rows_of(out / "summary.csv")}
    assert list(summary) == ["melodia", "ddim"] and {r["n"] for r in summary.values()} == {"2"}
    chroma = [float(r["chroma"]) for r in rows if r["condition"] == "ddim"]
    assert float(summary["ddim"]["chroma_mean"]) == pytest.approx(np.mean(chroma))
    assert float(summary["ddim"]["chroma_ci95"]) == pytest.approx(12.706 * np.std(chroma, ddof=1) / np.sqrt(2),
                                                                   rel=1e-3)
    markdown = (out / "summary.md").read_text()
    assert "| Method | Layers | n | Chroma ↑ |" in markdown and "ASB not computed" in markdown
    assert markdown in stdout and (out / "summary.png").stat().st_size > 10_000
    assert summary["ddim"]["clap_mean"] == summary["ddim"]["asb"] == ""  # not computed: empty, never "nan"
    code, stdout, _ = bench(capsys, "--summarize", "-o", str(out), "--json")
    report = json.loads(stdout)
    assert code == 0 and report["records"][0]["clap_mean"] is None and report["notes"][0].startswith("ASB")

    before = (out / "rows.csv").read_bytes()
    assert bench(capsys, "testbed", "--model", untrained_testbed_dir, *TINY, "--methods", "melodia,ddim",
                 "-o", str(out), "--resume")[0] == 0
    assert len(count_edits) == 4 and (out / "rows.csv").read_bytes() == before
    code, _, err = bench(capsys, "testbed", "--model", untrained_testbed_dir, *TINY, "--methods", "melodia,ddim",
                         "-o", str(out))
    assert_one_line_error(code, err, "--resume")
    code, _, err = bench(capsys, "testbed", "--model", untrained_testbed_dir, "--limit", "2", "--steps", "3",
                         "--methods", "melodia,ddim", "-o", str(out), "--resume")
    assert_one_line_error(code, err, "other edit")  # never mixes settings in one table


def test_resuming_refuses_rows_of_an_item_redefined_in_the_manifest(tmp_path):
    from editing.benchmark import BenchPlan, _record_plan, item_digest, method_conditions

    def plan(form_a: str, form_b: str = "walk", ids: tuple[str, ...] = ("a", "b")) -> BenchPlan:
        path = tmp_path / "m.yaml"
        path.write_text("name: m\nitems: [" + ", ".join(
            f"{{id: {i}, category: timbre, target_prompt: v, source: {{instrument: piano, style: swing, mood: sad, "
            f"score_seed: 1, form: {form}}}}}" for i, form in (("a", form_a), ("b", form_b)) if i in ids) + "]")
        return BenchPlan(load_manifest(path), method_conditions(["ddim"]), "testbed")

    out = tmp_path / "run"
    out.mkdir()
    _record_plan(plan("walk"), out)
    with RowWriter(out / "rows.csv") as writer:  # item a has a row, b none yet
        writer.write(dict.fromkeys(ROW_FIELDS, "1") | {"item": "a", "condition": "ddim"})
    _record_plan(plan("walk"), out)  # the same definitions resume
    _record_plan(plan("walk", "aaba"), out)  # b has no rows: its new definition is taken
    with pytest.raises(MelodiaError, match="item a changed in the manifest since its rows were written"):
        _record_plan(plan("aaba", "aaba"), out)
    _record_plan(plan("walk", "aaba", ids=("b",)), out)  # resumed with b only: a's definition is kept
    with pytest.raises(MelodiaError, match="item a changed"):
        _record_plan(plan("aaba", "aaba"), out)
    recorded = json.loads((out / "bench.json").read_text())
    del recorded["item_digests"]  # a run from before digests were recorded
    (out / "bench.json").write_text(json.dumps(recorded))
    _record_plan(plan("aaba", "aaba"), out)
    (out / "bench.json").write_text("{not json")
    with pytest.raises(MelodiaError, match="not a melodia bench plan"):
        _record_plan(plan("aaba", "aaba"), out)
    song = load_manifest("musicdelta").items[0]
    assert item_digest(song, 10.0) != item_digest(song, 5.0)  # a file source's cut is part of its definition


def test_a_torn_last_row_is_cut_off_and_never_read(tmp_path):
    path = tmp_path / "rows.csv"
    whole = dict.fromkeys(ROW_FIELDS, "1") | {"item": "a", "condition": "ddim"}
    with RowWriter(path) as writer:
        writer.write(whole)
    path.write_text(path.read_text() + "b,timbre,ddim,dd")  # killed while writing the next row
    assert [(r["item"], r["condition"]) for r in read_rows(tmp_path)] == [("a", "ddim")]
    with RowWriter(path) as writer:
        writer.write(whole | {"item": "b"})
    assert rows_of(path) == [whole, whole | {"item": "b"}]  # the torn bytes are gone, not glued to row b


def test_ranks_edit_disjoint_items_and_the_summary_merges_them(capsys, monkeypatch, tmp_path, untrained_testbed_dir):
    out = tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        code, stdout, err = bench(capsys, "testbed", "--model", untrained_testbed_dir, *TINY, "--methods", "ddim",
                                  "-o", str(out))
        assert code == 0 and "--summarize" in stdout, err
    first, second = load_manifest("testbed").items[:2]
    assert [r["item"] for r in rows_of(out / "rows.rank0.csv")] == [first.id]
    assert [r["item"] for r in rows_of(out / "rows.rank1.csv")] == [second.id]
    assert not (out / "summary.csv").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert bench(capsys, "--summarize", "-o", str(out))[0] == 0
    assert [(r["condition"], r["n"]) for r in rows_of(out / "summary.csv")] == [("ddim", "2")]


def profile_selecting_2_to_8() -> LayerProfile:
    """A 16-layer profile whose self-attention is least decodable in layers 2-8 (a random denoiser: chance)."""
    scores = [ProbeScore("instrument", f"self:{layer}", "mlp", 0.3 if 2 <= layer <= 8 else 0.9, (0.2, 1.0), 0.25,
                         0.25, 64, 8) for layer in range(1, 17)]
    random = [ProbeScore("instrument", f"self:{layer}", "mlp", 0.25, (0.2, 0.3), 0.25, 0.25, 64, 8)
              for layer in range(1, 17)]
    return LayerProfile("testbed", 16, {"instrument": ["a", "b", "c", "d"]}, scores, random)


def test_the_layer_ablation_runs_the_paper_bands_and_auto_from_a_profile(
        capsys, tmp_path, untrained_testbed_dir, count_edits):
    profile_selecting_2_to_8().save(tmp_path / "profile.json")
    out = tmp_path / "ablation"
    code, _, err = bench(capsys, "testbed", "--ablation", "layers", "--model", untrained_testbed_dir, "--limit", "1",
                         "--steps", "2", "--profile", str(tmp_path / "profile.json"), "-o", str(out))
    assert code == 0, err
    expected = [("none", "none"), ("all", "self:*"), ("6-16", "self:6-16"), ("8-14", "self:8-14"),
                ("10-12", "self:10-12"), ("auto", "self:2-8")]
    assert [(r["condition"], r["layers"]) for r in rows_of(out / "rows.csv")] == expected
    assert count_edits == [("melodia", layers) for _, layers in expected]
    assert [r["condition"] for r in rows_of(out / "summary.csv")] == [name for name, _ in expected]

    code, _, err = bench(capsys, "testbed", "--ablation", "layers", "--model", untrained_testbed_dir, "--limit", "1",
                         "--steps", "2", "--category", "style", "-o", str(tmp_path / "no-profile"))
    assert code == 0 and "'auto' row is skipped" in err
    assert [r["condition"] for r in rows_of(tmp_path / "no-profile" / "rows.csv")] == [n for n, _ in expected[:5]]
    assert rows_of(tmp_path / "no-profile" / "rows.csv")[0]["category"] == "style"
    code, _, err = bench(capsys, "testbed", "--ablation", "layers", "--methods", "ddim", "-o", str(tmp_path / "x"))
    assert_one_line_error(code, err, "drop --methods")


def test_bands_keep_only_the_named_bands_of_the_ablation(capsys, tmp_path, untrained_testbed_dir, count_edits,
                                                         monkeypatch):
    from editing.benchmark import ablation_conditions, parse_bands

    out = tmp_path / "control"
    code, _, err = bench(capsys, "testbed", "--ablation", "layers", "--bands", "all, none", "--model",
                         untrained_testbed_dir, "--limit", "1", "--steps", "2", "-o", str(out))
    assert code == 0, err
    assert "'auto' row is skipped" not in err  # not asked for
    assert [(r["condition"], r["layers"]) for r in rows_of(out / "rows.csv")] == [("none", "none"), ("all", "self:*")]
    assert count_edits == [("melodia", "none"), ("melodia", "self:*")]
    assert [c.name for c in ablation_conditions("self:2-8", ["auto", "8-14"])] == ["8-14", "auto"]
    for text in ("none,9-12", "all,all", "", "none,"):
        with pytest.raises(MelodiaError, match="distinct names"):
            parse_bands(text)
    with pytest.raises(MelodiaError, match="needs --profile"):
        ablation_conditions(None, ["auto"])
    for bands in (["nine"], "none,all"):  # API callers too: an unknown name, a string for a list
        with pytest.raises(MelodiaError, match="distinct names"):
            ablation_conditions(None, bands)
    import probing.models

    monkeypatch.setattr(probing.models, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    for args, message in ((["--bands", "none,all"], "add --ablation layers"),  # refused before the model loads
                          (["--ablation", "layers", "--bands", "auto"], "needs --profile"),
                          (["--ablation", "layers", "--bands", "nine"], "distinct names")):
        code, _, err = bench(capsys, "testbed", *args, "-o", str(tmp_path / "x"))
        assert_one_line_error(code, err, message)
    assert not (tmp_path / "x").exists()


def test_refinements_reach_the_inverting_methods_only_and_the_plan_names_them_only_when_chosen(tmp_path):
    from editing.benchmark import BenchPlan, EditOptions, method_conditions

    conditions = method_conditions(["melodia", "ddim", "sdedit", "ddpm-friendly"], "self:8-14")
    refined = EditOptions(steps=4, inversion_refinements=2)
    assert [refined.settings_for("violin", c).inversion_refinements for c in conditions] == [2, 2, None, None]
    manifest = load_manifest("testbed")
    plans = [BenchPlan(manifest, conditions, "testbed", options, manifest.select(None, 1)).to_json()["edit"]
             for options in (EditOptions(), refined)]
    assert "inversion_refinements" not in plans[0]  # runs written before the option resume as they were
    assert plans[1]["inversion_refinements"] == 2


def test_bench_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "melodia bench testbed --ablation layers" in help_text and "--summarize -o results/testbed" in help_text


def test_paired_differences_compare_conditions_item_by_item():
    from editing.bench_summary import paired_differences, paired_markdown

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.9, 30)  # items differ a lot; the conditions differ by a constant
    rows = [{"item": f"i{k}", "category": "timbre", "condition": condition, "chroma": str(value)}
            for k, b in enumerate(base) for condition, value in (("none", b), ("all", b + 0.02), ("same", b))]
    rows.append({"item": "only-in-one", "category": "timbre", "condition": "all", "chroma": "0.0"})  # unpaired: skipped
    result = {r["condition"]: r for r in paired_differences(rows) if r["metric"] == "chroma"}
    assert result["all"]["n"] == 30 and result["all"]["reference"] == "none"
    assert result["all"]["mean"] == pytest.approx(0.02) and result["all"]["ci_low"] > 0.019  # tight: paired
    assert result["same"]["mean"] == 0 and "+0.000]*" not in paired_markdown([result["same"]])
    assert "+0.020 [+0.020, +0.020]*" in paired_markdown([result["all"]])
    assert paired_differences([r for r in rows if r["condition"] != "none"]) == []  # no reference: nothing


# ---- sweeps and the frontier ------------------------------------------------------------------------

def frontier_rows(curves: dict[str, list[tuple[float, float]]], items: int = 40, seed: int = 0) -> list[dict]:
    """Rows of a swept run: per curve, per sweep point (mean adherence, mean melody), items scattered around."""
    rng = np.random.default_rng(seed)
    item_effect = rng.normal(0, 0.1, items)  # items differ a lot, the same way under every condition
    rows = []
    for curve, points in curves.items():
        for k, (x, y) in enumerate(points):
            for i in range(items):
                rows.append({"item": f"i{i}", "category": "timbre", "condition": f"{curve}@t_start={0.4 + 0.2 * k:g}",
                             "adherence": str(x + rng.normal(0, 0.01)),
                             "melody_raw_chroma": str(y + item_effect[i] + rng.normal(0, 0.01))})
    return rows


def test_the_frontier_compares_structure_at_matched_adherence_not_at_one_setting():
    from editing.frontier import frontier_curves, matched_structure

    line = [(0.2, 0.8), (0.4, 0.6), (0.6, 0.4), (0.8, 0.2)]  # the trade-off both methods share
    shifted = [(x, y + 0.1) for x, y in line]  # the same adherence, more melody kept
    timid = [(0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (0.5, 0.5)]  # edits less: higher melody at each setting
    rows = frontier_rows({"better": shifted, "base": line, "timid": timid})
    curves = frontier_curves(rows, "adherence", "melody_raw_chroma")
    assert [label for label, *_ in curves["base"]] == ["t_start=0.4", "t_start=0.6", "t_start=0.8", "t_start=1"]
    assert curves["base"][0][1:] == pytest.approx((0.2, 0.8), abs=0.01)
    gaps = {(m["a"], m["b"]): m for m in matched_structure(rows, "adherence", "melody_raw_chroma")}
    better = gaps["better", "base"]
    assert better["gap"] == pytest.approx(0.1, abs=0.01) and better["ci_low"] > 0.08  # paired: tight
    timid_gap = gaps["base", "timid"]
    assert abs(timid_gap["gap"]) < 0.01 and timid_gap["ci_low"] < 0 < timid_gap["ci_high"]  # same curve: no gap
    assert timid_gap["overlap_low"] == pytest.approx(0.2, abs=0.02)
    apart = matched_structure(frontier_rows({"low": [(0.1, 0.5), (0.2, 0.4)], "high": [(0.6, 0.5), (0.9, 0.4)]}),
                              "adherence", "melody_raw_chroma")
    assert np.isnan(apart[0]["gap"])  # never compared outside the adherence both reach


def test_a_sweep_runs_every_condition_at_every_value_and_draws_the_frontier(
        capsys, tmp_path, untrained_testbed_dir, count_edits):
    out = tmp_path / "out"
    code, stdout, err = bench(capsys, "testbed", "--model", untrained_testbed_dir, *TINY, "--methods", "melodia,ddim",
                              "--sweep", "t_start=0.5,1", "-o", str(out))
    assert code == 0, err
    rows = rows_of(out / "rows.csv")
    assert [(r["condition"], r["t_start"]) for r in rows[:4]] == [
        ("melodia@t_start=0.5", "0.5"), ("melodia@t_start=1", "1.0"), ("ddim@t_start=0.5", "0.5"),
        ("ddim@t_start=1", "1.0")] and len(rows) == 8 == len(count_edits)
    paired = rows_of(out / "paired.csv")
    assert {(p["condition"], p["reference"]) for p in paired} == {("melodia@t_start=0.5", "ddim@t_start=0.5"),
                                                                   ("melodia@t_start=1", "ddim@t_start=1")}
    frontier = rows_of(out / "frontier.csv")
    assert {(f["a"], f["b"]) for f in frontier} == {("melodia", "ddim")}
    assert "# Frontier" in stdout and "t_start swept (0.5, 1)" in stdout
    assert (out / "frontier.png").stat().st_size > 10_000


@pytest.mark.parametrize("sweep, needle", [("strength=0.5", "cannot sweep 'strength'"),
                                           ("t_start=0.5,1.5", "in (0, 1]"),
                                           ("t_start=0.6,0.6000001", "distinct"),  # the same name in the tables
                                           ("guidance=3,inf", "above 0"),
                                           ("guidance=3,x", "numbers separated by commas")])
def test_a_bad_sweep_is_refused_in_one_line_before_anything_is_written(capsys, tmp_path, sweep, needle):
    code, _, err = bench(capsys, "testbed", "--sweep", sweep, "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_sweep_over_two_settings_gets_no_frontier_and_says_why(tmp_path):
    from editing.bench_summary import _frontier

    rows = frontier_rows({"a": [(0.2, 0.8), (0.4, 0.6)], "b": [(0.2, 0.7), (0.4, 0.5)]})
    for row in rows:
        row["condition"] += ",guidance=3"
    (tmp_path / "frontier.csv").write_text("stale")
    note, written = _frontier(rows, tmp_path, plot=True, title="")
    assert "several settings" in note and written == [] and not (tmp_path / "frontier.csv").exists()


def test_bench_on_stable_audio_open_runs_its_own_methods_and_refuses_flowedit_before_writing(capsys, tmp_path):
    from types import SimpleNamespace

    from editing.commands.bench import _conditions
    from probing.models import load_model

    editor = Melodia(load_model("tiny-stable-audio"))
    args = SimpleNamespace(ablation=None, layers="none", methods=None)
    assert [c.method for c in _conditions(args, editor)] == ["melodia", "inversion", "sdedit"]
    code, _, err = bench(capsys, "testbed", "--model", "tiny-stable-audio", "--methods", "melodia,flowedit",
                         "--limit", "1", "--steps", "2", "-o", str(tmp_path / "out"))
    assert_one_line_error(code, err, "flowedit", "not for tiny-stable-audio")
    assert not (tmp_path / "out" / "rows.csv").exists()


def test_two_runs_effects_are_compared_item_by_item(tmp_path, capsys):
    from editing.bench_compare import effect_differences, main

    rng = np.random.default_rng(0)
    effect_b = rng.normal(0.0, 0.05, 12)

    def run(effect: np.ndarray, items: int = 12) -> list[dict]:
        base = rng.uniform(0.3, 0.7, 12)  # each run its own baselines: only the paired effects agree
        rows = [{"item": f"i{k}", "category": "timbre", "condition": c, "chroma": f"{v:.6f}"}
                for k in range(items) for c, v in (("none", base[k]), ("all", base[k] + effect[k]))]
        rows[-1]["chroma"] = "nan"  # an unscored edit is left out, not averaged
        return rows

    records = effect_differences(run(effect_b + 0.1), run(effect_b, items=11))
    assert [(r["condition"], r["reference"], r["metric"], r["n"]) for r in records] == [("all", "none", "chroma", 10)]
    assert records[0]["mean"] == pytest.approx(0.1, abs=1e-5) and records[0]["ci_low"] == pytest.approx(0.1, abs=1e-5)
    noise = effect_differences(run(effect_b + rng.normal(0, 0.05, 12)), run(effect_b))[0]
    assert noise["ci_low"] < 0 < noise["ci_high"]  # unrelated noise: no difference claimed
    plan = {"edit": {"steps": 25, "guidance": 3.5, "t_start": 0.6},
            "conditions": [{"name": "none", "method": "melodia", "layers": "none", "settings": [["t_start", 1.0]]},
                           {"name": "all", "method": "melodia", "layers": "self:*", "settings": [["t_start", 1.0]]}]}
    for name, manifest, rows in (("a", "m", run(effect_b + 0.1)), ("b", "m", run(effect_b, items=11)),
                                 ("c", "other", run(effect_b))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bench.json").write_text(json.dumps({"manifest": manifest, "model": name, "items": []} | plan))
        plan = json.loads(json.dumps(plan))  # B: another guidance, and its "all" injects fewer layers
        plan["edit"] |= {"guidance": 7.0, "t_start": 0.8}  # a run-level t_start the sweep overrides alike in both
        plan["conditions"][1]["layers"] = "self:8-14"
        with RowWriter(tmp_path / name / "rows.csv") as writer:
            for row in rows:
                writer.write(dict.fromkeys(ROW_FIELDS, "") | row)
    main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "A (a) minus B (b)" in out and "1 items only in A; 0 only in B" in out
    assert "| all | 10 | +0.100 [+0.100, +0.100]* |" in out
    assert "Set differently: guidance 3.5 in A, 7.0 in B; all: layers self:* in A, self:8-14 in B.\n" in out
    main([str(tmp_path / "a"), str(tmp_path / "a")])
    assert "Set differently" not in capsys.readouterr().out  # a run against itself: nothing to note
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "different manifests" in err and len(err.strip().splitlines()) == 1
