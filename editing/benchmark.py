"""Run edit methods over a benchmark manifest: one CSV row per (item, condition), resumable and sharded.

A *condition* is one column of the comparison: a method (melodia, ddim, sdedit, ddpm-friendly)
or, for the layer ablation, melodia with one layer spec; with `--sweep` every one of them at every
value of a setting (`ddim@t_start=0.8`: `parse_sweeps`, `swept_conditions`). Items run in manifest order, each
condition in turn; every row is appended and flushed whole (a torn last line from a killed run is
cut off on the next open), so `resume=True` skips exactly the rows already on disk. Under torchrun
(RANK / WORLD_SIZE set) each rank takes items[rank::world] and writes rows.rank<R>.csv;
`editing.bench_summary.summarize` merges every rows file of the folder.

Examples:
    >>> plan = BenchPlan(load_manifest("testbed"), method_conditions(["melodia", "ddim"]), model="testbed")
    >>> run_benchmark(plan, Melodia(load_model("testbed")), "results/", Scorer.load())   # -> results/rows.csv
    >>> summarize("results/")                         # editing.bench_summary: summary.csv, .md, .png
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from editing.editor import EditSettings
from editing.manifests import CATEGORIES, AudioFile, EditItem, Manifest, SynthClip
from editing.methods import INVERTING_METHODS
from editing.metrics import ClapEmbedder, LPAPSNet, MissingWeightsError, score_edit
from probing.errors import MelodiaError
from probing.paths import write_json

PLAN_FILE = "bench.json"
ABLATION_LAYERS = (("none", "none"), ("all", "self:*"), ("6-16", "self:6-16"), ("8-14", "self:8-14"),
                   ("10-12", "self:10-12"))  # the paper's layer ablation; "auto" is added from a profile
METRIC_FIELDS = ("clap", "lpaps", "chroma", "melody_raw_chroma", "melody_raw_pitch", "adherence",
                 "ideal_log_mel_distance", "ideal_chroma_similarity", "ideal_melody_raw_chroma",
                 "classifier_instrument", "classifier_style", "classifier_mood")
ROW_FIELDS = ("item", "category", "condition", "method", "layers", "t_start", "guidance", "seconds", *METRIC_FIELDS)
SWEEPABLE = {"t_start": (0.0, 1.0, "in (0, 1]"), "guidance": (0.0, math.inf, "above 0")}  # open low, closed high
SWEEP_MARK = "@"  # a swept condition's name: <method or band>@<setting>=<value>[,<setting>=<value>]
_COMPARED = ("study", "manifest", "model", "edit", "metrics")  # what a resumed run must share with bench.json


@dataclass(frozen=True)
class Condition:
    """One compared column: its name in the tables, the edit method, the injected layer spec and, in a
    sweep, the edit settings it overrides (("t_start", 0.8),)."""

    name: str
    method: str
    layers: str
    settings: tuple[tuple[str, float], ...] = ()


def parse_sweeps(texts: Sequence[str]) -> list[tuple[tuple[str, float], ...]]:
    """`--sweep` arguments ("t_start=0.4,0.6") -> every combination of their values, in the order given.

    >>> parse_sweeps(["t_start=0.4,0.8", "guidance=3"])
    [(('t_start', 0.4), ('guidance', 3.0)), (('t_start', 0.8), ('guidance', 3.0))]
    """
    axes = []
    for text in texts:
        name, _, values = text.partition("=")
        name = name.strip().replace("-", "_")
        if name not in SWEEPABLE:
            raise MelodiaError(f"--sweep {text!r}: cannot sweep {name!r}; choose one of {', '.join(SWEEPABLE)} "
                               "(e.g. --sweep t_start=0.4,0.6,0.8,1.0)")
        if name in (axis[0] for axis in axes):
            raise MelodiaError(f"--sweep {name} is given twice: list all its values in one --sweep")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            raise MelodiaError(f"--sweep {text!r}: values must be numbers separated by commas") from None
        low, high, allowed = SWEEPABLE[name]
        bad = [v for v in numbers if not (math.isfinite(v) and low < v <= high)]
        if bad or len({f"{v:g}" for v in numbers}) < len(numbers):  # distinct as the condition names show them
            raise MelodiaError(f"--sweep {text!r}: {name} values must be distinct and {allowed}")
        axes.append((name, numbers))
    if not axes:
        return []
    return [tuple(zip([n for n, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def swept_conditions(conditions: Sequence[Condition], grid: Sequence[tuple[tuple[str, float], ...]]) -> list[Condition]:
    """Every condition at every grid point, named <condition>@<setting>=<value>; unchanged without a grid."""
    if not grid:
        return list(conditions)
    return [Condition(f"{c.name}{SWEEP_MARK}{','.join(f'{k}={v:g}' for k, v in point)}", c.method, c.layers, point)
            for c in conditions for point in grid]


def base_condition(condition: str) -> str:
    """"melodia@t_start=0.8" -> "melodia" (the method or band a swept condition belongs to)."""
    return condition.partition(SWEEP_MARK)[0]


def point_label(condition: str) -> str:
    """"melodia@t_start=0.8" -> "t_start=0.8" (its sweep setting; "" for an unswept condition)."""
    return condition.partition(SWEEP_MARK)[2]


def method_conditions(methods: Sequence[str], layers: str = "auto") -> list[Condition]:
    """One condition per method; `layers` applies to melodia, the baselines inject nothing."""
    from editing.methods import METHODS

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) < len(methods):
        raise MelodiaError(f"--methods takes distinct names from {', '.join(METHODS)}; got {','.join(methods)}")
    return [Condition(m, m, layers if m == "melodia" else "none") for m in methods]


def parse_bands(text: str, auto_available: bool = True) -> list[str]:
    """`--bands` ("none, all") -> the ablation's band names, checked (`check_bands`) before any model loads.

    >>> parse_bands("none, all")
    ['none', 'all']
    """
    return check_bands([b.strip() for b in text.split(",")], auto_available)


def check_bands(bands: Sequence[str], auto_available: bool) -> list[str]:
    """`bands` as a list, if they are distinct names of the ablation (`auto` only where a profile gives it)."""
    known = [name for name, _ in ABLATION_LAYERS] + ["auto"]
    if isinstance(bands, str) or not all(bands) or any(b not in known for b in bands) or len(set(bands)) < len(bands):
        raise MelodiaError(f"--bands takes distinct names from {', '.join(known)}; got {bands if isinstance(bands, str) else ','.join(bands)!r}")
    if "auto" in bands and not auto_available:
        raise MelodiaError("--bands auto needs --profile (from `melodia probe`)")
    return list(bands)


def ablation_conditions(auto_spec: str | None = None, bands: Sequence[str] | None = None) -> list[Condition]:
    """The paper's layer ablation with melodia (none, all, 6-16, 8-14, 10-12), plus `auto` when a spec is given.

    `bands` (names as `parse_bands` checks them) keeps only these, in the ablation's order (("none", "all"):
    the positive control).
    """
    rows = [*ABLATION_LAYERS, *([("auto", auto_spec)] if auto_spec else [])]
    if bands is not None:
        bands = check_bands(bands, auto_available=bool(auto_spec))
        rows = [row for row in rows if row[0] in bands]
    return [Condition(name, "melodia", spec) for name, spec in rows]


@dataclass(frozen=True)
class EditOptions:
    """The settings every edit of a run shares (fields of `EditSettings`; the plan file records them)."""

    t_start: float = 0.6
    steps: int = 50
    guidance: float = 3.5
    seed: int = 0
    inversion_refinements: int | None = None  # None: the model's (recorded in the plan only when chosen)

    def settings_for(self, target_prompt: str, condition: Condition) -> EditSettings:
        """The `EditSettings` of one item under one condition (a swept condition overrides its setting).

        The inversion's refinements apply to the methods that invert (the others start elsewhere).
        """
        chosen = asdict(self) | dict(condition.settings)
        if condition.method not in INVERTING_METHODS:
            chosen["inversion_refinements"] = None
        return EditSettings(target_prompt, condition.method, condition.layers, **chosen)


@dataclass(frozen=True)
class BenchPlan:
    """What a run compares: the manifest's chosen items x conditions, the model and the edit settings."""

    manifest: Manifest
    conditions: Sequence[Condition]
    model: str
    edit: EditOptions = EditOptions()
    items: Sequence[EditItem] | None = None  # default: every item of the manifest
    study: str = "methods"  # or "layers" (the ablation)
    metrics: dict = field(default_factory=dict)  # weights used: {"clap": name, "lpaps": file}

    @property
    def chosen(self) -> list[EditItem]:
        return list(self.manifest.items if self.items is None else self.items)

    def to_json(self) -> dict:
        return {"format": "melodia.bench", "study": self.study, "manifest": self.manifest.name,
                "manifest_file": str(self.manifest.path), "model": self.model,
                "edit": {k: v for k, v in asdict(self.edit).items() if v is not None},
                "metrics": self.metrics, "conditions": [asdict(c) for c in self.conditions],
                "items": [item.id for item in self.chosen],
                "item_digests": {item.id: item_digest(item, self.manifest.clip_seconds) for item in self.chosen}}


def read_plan(out: str | Path) -> dict:
    """The bench.json of the benchmark folder `out`; one-line MelodiaError where there is none or it is damaged."""
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise MelodiaError(f"{out} holds no benchmark run (no {PLAN_FILE}): run `melodia bench MANIFEST -o {out}`")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        plan = None
    if not isinstance(plan, dict) or not {"manifest", "model", "items"} <= plan.keys():
        raise MelodiaError(f"{path} is not a melodia bench plan (damaged or from another tool)")
    return plan


def item_digest(item: EditItem, clip_seconds: float | None = None) -> str:
    """A short hash of what defines an edit item (prompt, source, ideal, tune form, checksum; for a file source
    the manifest's cut `clip_seconds`). Fields at their default are left out, so adding a field with a default
    keeps every earlier item's hash."""
    def defining(value):
        if is_dataclass(value):
            return {f.name: defining(getattr(value, f.name)) for f in fields(value)
                    if getattr(value, f.name) != f.default}
        return value

    definition = defining(item) | ({"clip_seconds": clip_seconds} if isinstance(item.source, AudioFile) else {})
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Shard:
    """This process's slice of the items: items[rank::world]."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        """RANK and WORLD_SIZE as torchrun sets them; one shard when they are absent."""
        from probing.capture import distributed_rank

        try:
            rank, world = distributed_rank()
        except ValueError:
            raise MelodiaError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
        if not 0 <= rank < world:
            raise MelodiaError(f"RANK {rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
        return cls(rank, world)

    @property
    def rows_name(self) -> str:
        return "rows.csv" if self.world == 1 else f"rows.rank{self.rank}.csv"


class _AbsentClap(ClapEmbedder):
    """Stands in for CLAP when no checkpoint is given, so score_edit reports it unavailable (never loads one)."""

    def __init__(self):  # no model: score() is all score_edit calls
        self.name = "none"

    def score(self, waves, sr, texts) -> np.ndarray:
        raise MissingWeightsError("no CLAP checkpoint given (--clap)")


@dataclass
class Scorer:
    """The per-edit metrics of a run: editing.metrics.score_edit with the weights given (CLAP, LPAPS) or none."""

    clap: ClapEmbedder | None = None
    lpaps: LPAPSNet | None = None
    classifier: object = None

    @classmethod
    def load(cls, clap: str | None = None, lpaps: str | None = None) -> Scorer:
        from editing.metrics import load_clap, load_lpaps
        from probing.synth.classifier import default_classifier

        return cls(load_clap(clap) if clap else None, load_lpaps(lpaps) if lpaps else None, default_classifier())

    def score(self, item: EditItem, source: np.ndarray, edited: np.ndarray, ideal: np.ndarray | None,
              sr: int) -> dict[str, float | None]:
        """METRIC_FIELDS of one edit (None where a metric cannot run); classifier columns for synth items only."""
        scores = score_edit(source, edited, sr, item.target_prompt, clap=self.clap or _AbsentClap(),
                            lpaps=self.lpaps, ideal=ideal, classifier=self.classifier)
        values = {name: score.get("value") for name, score in scores.items()}
        synthetic = isinstance(item.source, SynthClip)
        values["adherence"] = values.get(f"classifier_{CATEGORIES[item.category]}") if synthetic else None
        return {name: None if name.startswith("classifier_") and not synthetic else values.get(name)
                for name in METRIC_FIELDS}


def run_benchmark(plan: BenchPlan, editor, out: str | Path, scorer: Scorer, *, shard: Shard = Shard(),
                  resume: bool = False, data_dir: str | Path | None = None, save_audio: bool = False,
                  progress: bool = True) -> Path:
    """Edit and score this shard's items under every condition, appending rows; returns the rows file.

    Raises:
        MelodiaError: the rows file exists and `resume` is False; the folder holds a run with other
            settings; a data file is missing or fails its checksum.
    """
    from tqdm import tqdm

    from probing.threads import configure_threads

    configure_threads()  # one launch's processes share the cores instead of fighting over them
    out = Path(out)
    mine = plan.chosen[shard.rank::shard.world]
    folder = plan.manifest.check_files(mine, data_dir)
    rows_path = out / shard.rows_name
    if rows_path.exists() and not resume:
        raise MelodiaError(f"{rows_path} exists: pass --resume to continue that run, or choose another -o folder")
    _record_plan(plan, out)
    done = {(row["item"], row["condition"]) for row in read_rows(out)}
    sr = editor.model.sample_rate
    label = plan.manifest.name + (f" rank {shard.rank}/{shard.world}" if shard.world > 1 else "")
    with RowWriter(rows_path) as writer:
        for item in tqdm(mine, desc=label, unit="item", disable=not progress):
            todo = [c for c in plan.conditions if (item.id, c.name) not in done]
            if not todo:
                continue
            source, ideal = plan.manifest.source_audio(item, sr, folder), plan.manifest.ideal_audio(item, sr)
            if save_audio:
                _save(out, item, {"source": source, "ideal": ideal}, sr)
            for condition in todo:
                settings = plan.edit.settings_for(item.target_prompt, condition)
                start = time.perf_counter()
                edited = editor.edit(source, settings).audio
                seconds = time.perf_counter() - start
                if save_audio:
                    _save(out, item, {condition.name: edited}, sr)
                writer.write({"item": item.id, "category": item.category, "condition": condition.name,
                              "method": condition.method, "layers": condition.layers, "t_start": settings.t_start,
                              "guidance": settings.guidance, "seconds": seconds,
                              **scorer.score(item, source, edited, ideal, sr)})
    return rows_path


def _record_plan(plan: BenchPlan, out: Path) -> None:
    """Write bench.json; a folder holding a run with other settings, or rows of an item since redefined in the
    manifest, is refused, not mixed."""
    path = out / PLAN_FILE
    current = plan.to_json()
    if path.is_file():
        previous = read_plan(out)
        changed = [key for key in _COMPARED if previous.get(key) != current[key]]
        if changed:
            raise MelodiaError(f"{out} holds a benchmark run with other {', '.join(changed)} (see {path}); "
                               "use another -o folder")
        before = previous.get("item_digests", {})  # runs from before digests were recorded have none
        edited = {row["item"] for row in read_rows(out)}
        redefined = sorted(i for i in edited & before.keys() & current["item_digests"].keys()
                           if before[i] != current["item_digests"][i])
        if redefined:
            shown = ", ".join(redefined[:3]) + (f" and {len(redefined) - 3} more" if len(redefined) > 3 else "")
            raise MelodiaError(f"{out}: item {shown} changed in the manifest since its rows were written "
                               "(rows of two definitions would mix); use another -o folder")
        current["item_digests"] = before | current["item_digests"]
    write_json(path, current)


def _save(out: Path, item: EditItem, clips: dict[str, np.ndarray | None], sr: int) -> None:
    from editing.audio import write_wav

    for name, wave in clips.items():
        if wave is not None:
            write_wav(out / "audio" / item.id / f"{name}.wav", wave, sr)


class RowWriter:
    """Appends rows to a CSV, each written whole and flushed; a torn last line is cut off when opened."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> RowWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+", newline="", encoding="utf-8")
        self._file.seek(0)
        text = self._file.read()
        complete = text[: text.rfind("\n") + 1]
        if len(complete) < len(text):
            self._file.truncate(len(complete.encode("utf-8")))
        if complete and complete.partition("\n")[0] != ",".join(ROW_FIELDS):
            self._file.close()
            raise MelodiaError(f"{self.path} has other columns than this melodia writes; use another -o folder")
        self._writer = csv.DictWriter(self._file, fieldnames=ROW_FIELDS, lineterminator="\n")
        if not complete:
            self._writer.writeheader()
        return self

    def write(self, row: dict) -> None:
        self._writer.writerow({key: "" if row.get(key) is None else row[key] for key in ROW_FIELDS})
        self._file.flush()
        os.fsync(self._file.fileno())

    def __exit__(self, *exc) -> None:
        self._file.close()


def rows_files(out: str | Path) -> list[Path]:
    """Every rows file of a benchmark folder: rows.csv and the ranks' rows.rank<R>.csv, in rank order."""
    return sorted(Path(out).glob("rows*.csv"), key=lambda p: (len(p.name), p.name))


def read_rows(out: str | Path) -> list[dict]:
    """The complete rows of every rows file (a torn last line is ignored); the first of duplicate keys kept."""
    rows, seen = [], set()
    for path in rows_files(out):
        text = path.read_text(encoding="utf-8")
        for row in csv.DictReader(text[: text.rfind("\n") + 1].splitlines()):
            key = (row["item"], row["condition"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows
