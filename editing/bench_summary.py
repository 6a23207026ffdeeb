"""Benchmark summary: per condition the mean and 95 % CI over items, paired differences against the
no-injection reference, ASB/AMB across conditions; CSV, Markdown, PNG.

Reads bench.json and every rows file of a benchmark folder (all ranks), so it runs once after a
sharded run as well. The CI is Student's t on the items' values (NaN values dropped, none for
n < 2). Every condition edits the same items, so conditions are also compared item by item: the
mean paired difference to the reference condition ("none" in the layer ablation, the
inversion/ddim baseline among methods) with a 95 % bootstrap interval over items (paired.csv and
a table in summary.md; in a sweep, against the reference at the same setting); intervals that
exclude 0 are what the unpaired ones cannot show. A swept run adds the frontier
(`editing.frontier`: frontier.csv, frontier.png). ASB and AMB are the paper's balance scores
(`editing.metrics.balance`), computed from the
conditions' means where every condition has both inputs; "AMB (classifier)" is the testbed's
stand-in with the independent classifier's adherence in place of CLAP.

Examples:
    >>> summary = summarize("results/")        # writes results/summary.csv, summary.md, summary.png
    >>> print(summary.markdown)
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from editing.benchmark import METRIC_FIELDS, SWEEP_MARK, base_condition, point_label, read_plan, read_rows
from editing.frontier import Y_METRICS, frontier_markdown, is_swept, matched_structure, plot_frontier, x_metric
from editing.metric_labels import TABLE_METRICS
from editing.metrics import adherence_musicality_balance, adherence_structure_balance
from probing.errors import MelodiaError
from probing.paths import atomic_output

RANGES = {"clap": (-1.0, 1.0), "lpaps": (0.0, math.inf), "chroma": (0.0, 1.0), "melody_raw_chroma": (0.0, 1.0),
          "melody_raw_pitch": (0.0, 1.0), "adherence": (0.0, 1.0), "ideal_log_mel_distance": (0.0, math.inf),
          "ideal_chroma_similarity": (0.0, 1.0), "ideal_melody_raw_chroma": (0.0, 1.0)}  # what each can take
BALANCES: dict[str, tuple[str, Callable, str, str]] = {
    "asb": ("ASB", adherence_structure_balance, "clap", "lpaps"),
    "amb": ("AMB", adherence_musicality_balance, "clap", "chroma"),
    "amb_classifier": ("AMB (classifier)", adherence_musicality_balance, "adherence", "chroma")}
NEEDS = {"clap": "--clap CHECKPOINT", "lpaps": "--lpaps WEIGHTS", "adherence": "synthesized (testbed) items"}


@dataclass
class Summary:
    """One record per (group, condition): n, <metric>_mean, <metric>_ci95 and the balance scores; notes."""

    records: list[dict]
    notes: list[str]
    markdown: str
    files: list[str] = field(default_factory=list)  # what summarize wrote into the folder


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, half-width of the 95 % Student-t interval, and n, over the finite values."""
    from scipy.stats import t

    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan, 0
    if finite.size == 1:
        return float(finite[0]), math.nan, 1
    half = t.ppf(0.975, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size)
    return float(finite.mean()), float(half), int(finite.size)


def summarize(out: str | Path, plot: bool = True) -> Summary:
    """Summarize the benchmark folder `out`: summary.csv, summary.md and (with `plot`) summary.png."""
    out = Path(out)
    plan = read_plan(out)
    rows = read_rows(out)
    if not rows:
        raise MelodiaError(f"{out} holds no finished edits yet: run or resume `melodia bench` first")
    records, notes = summary_records(rows, expected=len(plan["items"]))
    paired = paired_differences(rows)
    frontier, frontier_files = _frontier(rows, out, plot, title=f"{plan['manifest']} on {plan['model']}: the frontier")
    summary = Summary(records, notes, markdown(records, notes, plan) + paired_markdown(paired) + frontier,
                      ["summary.csv", "summary.md", *(["paired.csv"] if paired else []), *(["summary.png"] if plot else []),
                       *frontier_files])
    _write_csv(records, out / "summary.csv")
    if paired:
        _write_csv(paired, out / "paired.csv")
    with atomic_output(out / "summary.md", ".md") as tmp:
        Path(tmp).write_text(summary.markdown)
    if plot:
        plot_summary([r for r in records if r["group"] == "all"], out / "summary.png",
                     title=f"{plan['manifest']} on {plan['model']}")
    return summary


def _frontier(rows: list[dict], out: Path, plot: bool, title: str) -> tuple[str, list[str]]:
    """For a run swept over one setting: frontier.csv (matched-adherence gaps) and frontier.png, their
    Markdown and the files written; '' and [] otherwise (a stale frontier.csv/png is removed)."""
    for name in ("frontier.csv", "frontier.png"):
        (out / name).unlink(missing_ok=True)
    if not is_swept(rows):
        return "", []
    if any("," in point_label(row["condition"]) for row in rows):
        return "\n- No frontier: the run sweeps several settings at once; sweep one to draw its curves\n", []
    x = x_metric(rows)
    if x is None:
        return "\n- No frontier: the rows hold no adherence metric (the testbed classifier, or --clap)\n", []
    matched = [m for y in Y_METRICS for m in matched_structure(rows, x, y)]
    written = []
    if matched:
        _write_csv(matched, out / "frontier.csv")
        written.append("frontier.csv")
    if plot and plot_frontier(rows, out / "frontier.png", title) is not None:
        written.append("frontier.png")
    return frontier_markdown(matched), written


def summary_records(rows: list[dict], expected: int | None = None) -> tuple[list[dict], list[str]]:
    """Records for the group "all" and, with several categories, each category; notes on what is missing."""
    conditions = list(dict.fromkeys(row["condition"] for row in rows))
    categories = list(dict.fromkeys(row["category"] for row in rows))
    records, notes = [], []
    for group in ["all", *(categories if len(categories) > 1 else [])]:
        chosen = [row for row in rows if group == "all" or row["category"] == group]
        block = [_record(group, [row for row in chosen if row["condition"] == c]) for c in conditions]
        block = [record for record in block if record is not None]
        group_notes = _add_balances(block)
        if group == "all":
            notes += group_notes
            notes += [f"{r['condition']}: {r['n']} of {expected} items done (resume the run, or wait for every "
                      "rank)" for r in block if expected and r["n"] < expected]
        records += block
    return records, notes


REFERENCES = ("none", "inversion", "ddim")  # the no-injection condition every other is compared with


def item_differences(rows: list[dict], reference: str | None = None) -> dict[tuple[str, str, str], dict[str, float]]:
    """Per (condition, its reference, metric): {item: condition - reference} over the items both have (finite);
    {} without a reference. The reference is the first of REFERENCES the run has (in a sweep: at the same setting).

    >>> rows = [{"item": "x", "category": "timbre", "condition": c, "chroma": v} for c, v in [("none", "0.5"), ("all", "0.75")]]
    >>> item_differences(rows)["all", "none", "chroma"]
    {'x': 0.25}
    """
    conditions = list(dict.fromkeys(row["condition"] for row in rows))
    bases = list(dict.fromkeys(base_condition(c) for c in conditions))
    reference = reference or next((c for c in REFERENCES if c in bases), None)
    if reference is None:
        return {}

    def reference_of(condition: str) -> str:  # in a sweep: the reference at the same setting
        point = point_label(condition)
        return f"{reference}{SWEEP_MARK}{point}" if point else reference

    value = {(row["item"], row["condition"], metric): float(row[metric]) for row in rows
             for metric in TABLE_METRICS if row.get(metric)}
    items = list(dict.fromkeys(row["item"] for row in rows))
    out = {}
    for condition in conditions:
        against = reference_of(condition)
        if base_condition(condition) == reference:
            continue
        for metric in TABLE_METRICS:
            diffs = {i: value[i, condition, metric] - value[i, against, metric] for i in items
                     if (i, condition, metric) in value and (i, against, metric) in value}
            out[condition, against, metric] = {i: d for i, d in diffs.items() if math.isfinite(d)}
    return out


def bootstrap_mean(values: Sequence[float], rng: np.random.Generator, resamples: int = 2000) -> dict:
    """n, mean and the 95 % percentile bootstrap interval (ci_low, ci_high) of the mean of `values`."""
    values = np.asarray(values, dtype=np.float64)
    boot = rng.choice(values, size=(resamples, values.size)).mean(axis=1)
    return {"n": int(values.size), "mean": float(values.mean()),
            "ci_low": float(np.quantile(boot, 0.025)), "ci_high": float(np.quantile(boot, 0.975))}


def paired_differences(rows: list[dict], reference: str | None = None, resamples: int = 2000,
                       seed: int = 0) -> list[dict]:
    """Per group (all, each category), condition and metric: mean of (condition - reference) over the
    items both have, with a 95 % percentile bootstrap interval over items; [] without a reference.

    >>> rows = [{"item": i, "category": "timbre", "condition": c, "chroma": v}
    ...         for i, c, v in [("x", "none", 0.5), ("x", "all", 0.75), ("y", "none", 0.5), ("y", "all", 0.625)]]
    >>> paired_differences(rows)[0]
    {'group': 'all', 'condition': 'all', 'reference': 'none', 'metric': 'chroma', 'n': 2, 'mean': 0.1875, ...}
    """
    differences = item_differences(rows, reference)
    categories = list(dict.fromkeys(row["category"] for row in rows))
    groups = {group: {row["item"] for row in rows if group == "all" or row["category"] == group}
              for group in ["all", *(categories if len(categories) > 1 else [])]}
    rng = np.random.default_rng(seed)
    out = []
    for group, names in groups.items():
        for (condition, against, metric), by_item in differences.items():
            diffs = [d for i, d in by_item.items() if i in names]
            if len(diffs) >= 2:
                out.append({"group": group, "condition": condition, "reference": against, "metric": metric,
                            **bootstrap_mean(diffs, rng, resamples)})
    return out


def paired_markdown(paired: list[dict], title: str | None = None) -> str:
    """The paired differences as Markdown tables, one per group, under `title` (default: what minus what);
    '' when there are none."""
    if not paired:
        return ""
    references = list(dict.fromkeys(p["reference"] for p in paired))
    settings = ", ".join(pair.split("=")[0] for pair in point_label(references[0]).split(","))
    against = references[0] if len(references) == 1 else f"{base_condition(references[0])} at the same {settings}"
    lines = ["", f"# {title or f'Paired differences: condition - {against}, same items'}", "",
             "mean [95 % bootstrap CI over items]; * where the interval excludes 0.", ""]
    metrics = list(dict.fromkeys(p["metric"] for p in paired))
    for group in dict.fromkeys(p["group"] for p in paired):
        block = [p for p in paired if p["group"] == group]
        header = ["Condition", "n", *(_label(TABLE_METRICS[m]) for m in metrics)]
        lines += [f"## {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for condition in dict.fromkeys(p["condition"] for p in block):
            cells = {p["metric"]: p for p in block if p["condition"] == condition}
            shown = [(f"{c['mean']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
                      + ("*" if c["ci_low"] > 0 or c["ci_high"] < 0 else "")) if (c := cells.get(m)) else "–"
                     for m in metrics]
            lines.append("| " + " | ".join([condition, str(max(c["n"] for c in cells.values())), *shown]) + " |")
        lines.append("")
    return "\n".join(lines)


def _record(group: str, rows: list[dict]) -> dict | None:
    if not rows:
        return None
    record = {"group": group, "condition": rows[0]["condition"], "method": rows[0]["method"],
              "layers": rows[0]["layers"], "n": len(rows)}
    for metric in (*METRIC_FIELDS, "seconds"):
        mean, half, _ = mean_ci([float(row[metric]) if row[metric] else math.nan for row in rows])
        record[f"{metric}_mean"], record[f"{metric}_ci95"] = mean, half
    return record


def _add_balances(block: list[dict]) -> list[str]:
    """Set each balance score on the records of one group; notes for the ones that cannot be computed."""
    notes = []
    for key, (label, balance, a, b) in BALANCES.items():
        inputs = [[record[f"{metric}_mean"] for record in block] for metric in (a, b)]
        scores = [math.nan] * len(block)
        if not all(math.isfinite(v) for values in inputs for v in values):
            notes.append(f"{label} not computed: it needs {a} and {b} for every condition "
                         f"({', '.join(NEEDS[m] for m in (a, b) if m in NEEDS)})")
        else:
            try:
                scores = [float(s) for s in balance(*inputs)]
            except MelodiaError as error:
                notes.append(f"{label} not computed: {error}")
        for record, score in zip(block, scores):
            record[key] = score
    return notes


def markdown(records: list[dict], notes: list[str], plan: dict) -> str:
    """The paper-style table per group: mean +- 95 % CI per metric, then ASB/AMB and seconds per edit."""
    edit = dict(plan["edit"])
    settings = [pair for condition in plan.get("conditions", []) for pair in condition.get("settings", [])]
    for name in dict.fromkeys(name for name, _ in settings):  # a sweep: its values instead of the default
        edit[name] = "swept (" + ", ".join(dict.fromkeys(f"{v:g}" for n, v in settings if n == name)) + ")"
    lines = [f"# {plan['manifest']}: {plan['study']} on {plan['model']}", "",
             f"steps {edit['steps']}, t_start {edit['t_start']}, guidance {edit['guidance']}, seed {edit['seed']}"
             + (f", inversion refinements {edit['inversion_refinements']}" if "inversion_refinements" in edit else "")
             + "; mean ± 95 % CI over items; ↑ higher is better, ↓ lower is better.", ""]
    for group in dict.fromkeys(r["group"] for r in records):
        block = [r for r in records if r["group"] == group]
        metrics = [m for m in TABLE_METRICS if any(math.isfinite(r[f"{m}_mean"]) for r in block)]
        balances = [k for k in BALANCES if any(math.isfinite(r[k]) for r in block)]
        header = ["Method", "Layers", "n", *(_label(TABLE_METRICS[m]) for m in metrics),
                  *(BALANCES[k][0] + " ↑" for k in balances), "s / edit"]
        lines += [f"## {group}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in block:
            cells = [r["condition"], f"`{r['layers']}`", str(r["n"]),
                     *(_cell(r[f"{m}_mean"], r[f"{m}_ci95"]) for m in metrics),
                     *(f"{r[k]:.2f}" for k in balances), f"{r['seconds_mean']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def _label(spec: tuple[str, bool]) -> str:
    return f"{spec[0]} {'↑' if spec[1] else '↓'}"


def _cell(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f}" + (f" ± {half:.3f}" if math.isfinite(half) else "")


def _write_csv(records: list[dict], path: Path) -> None:
    with atomic_output(path, ".csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                         for r in records)  # empty: not computed, as in the rows


def plot_summary(records: list[dict], path: str | Path, title: str = "") -> Path:
    """One bar chart per metric (and balance score) with a bar per condition and its 95 % CI."""
    from probing.plots import pyplot, write_figure

    panels = [(m, _label(TABLE_METRICS[m]), f"{m}_mean", f"{m}_ci95") for m in TABLE_METRICS
              if any(math.isfinite(r[f"{m}_mean"]) for r in records)]
    panels += [(k, BALANCES[k][0] + " ↑", k, None) for k in BALANCES if any(math.isfinite(r[k]) for r in records)]
    plt = pyplot()
    columns = max(1, min(3, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False, layout="constrained")
    names = [r["condition"] for r in records]
    for ax, (metric, label, mean_key, ci_key) in zip(axes.flat, panels):
        low, high = RANGES.get(metric, (-math.inf, math.inf))
        means = [r[mean_key] for r in records]
        half = [r[ci_key] if ci_key and math.isfinite(r[ci_key]) else 0.0 for r in records]
        # a Student-t interval of few items can reach past what the metric can take: drawn clipped to it
        errors = [[min(h, m - low) for m, h in zip(means, half)], [min(h, high - m) for m, h in zip(means, half)]]
        bars = ax.bar(range(len(records)), means, yerr=errors, capsize=3, color=[f"C{i}" for i in range(len(records))])
        ax.bar_label(bars, fmt="%.2f", label_type="center", fontsize=8)  # a 0.00 bar is a value, not a gap
        ax.set_xticks(range(len(records)), names, rotation=30, ha="right")
        ax.set_title(label)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.suptitle(title)
    return write_figure(figure, path)
