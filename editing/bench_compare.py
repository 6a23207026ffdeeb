"""Compare two benchmark runs on the same items: does a condition's paired effect differ between them?

Each run's summary already gives, per item, condition minus its reference (e.g. every layer injected
minus none, at the same t_start). Here that per-item effect of run A minus the same item's effect in
run B, averaged over the items both runs edited, with a 95 % bootstrap interval over items: the
difference of two models' (or two settings') effects, paired twice. Use it for a training
intervention with a control arm (the same start trained on two datasets), or any two models.

    python -m editing.bench_compare results/ft-aaba results/ft-walk

Examples:
    >>> a = [{"item": i, "category": "timbre", "condition": c, "chroma": v}   # run A: all - none is +0.25, +0.125
    ...      for i, c, v in [("x", "none", 0.5), ("x", "all", 0.75), ("y", "none", 0.5), ("y", "all", 0.625)]]
    >>> b = [dict(row, chroma=0.5) for row in a]                              # run B: no effect
    >>> effect_differences(a, b)[0]
    {'group': 'all', 'condition': 'all', 'reference': 'none', 'metric': 'chroma', 'n': 2, 'mean': 0.1875, ...}
    >>> effect_differences(read_rows("results/a"), read_rows("results/b"))   # two runs' rows.csv  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from editing.bench_summary import bootstrap_mean, item_differences, paired_markdown
from editing.benchmark import read_plan, read_rows
from probing.errors import MelodiaError


def effect_differences(rows_a: list[dict], rows_b: list[dict], resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Per condition and metric both runs have: mean over shared items of (A's paired difference - B's), with a
    95 % bootstrap interval over items (records shaped like `paired_differences`', group "all")."""
    a, b = item_differences(rows_a), item_differences(rows_b)
    rng = np.random.default_rng(seed)
    out = []
    for key in [k for k in a if k in b]:
        shared = [i for i in a[key] if i in b[key]]
        if len(shared) >= 2:
            condition, reference, metric = key
            out.append({"group": "all", "condition": condition, "reference": reference, "metric": metric,
                        **bootstrap_mean([a[key][i] - b[key][i] for i in shared], rng, resamples)})
    return out


def setting_differences(plan_a: dict, plan_b: dict) -> list[str]:
    """What the two runs set differently, as notes: per condition both ran, its method, layers (`auto` is each
    model's own band) and edit settings (the run's, with a sweep's values for that condition); each once."""
    def effective(plan: dict, condition: dict) -> dict:
        return {**plan.get("edit", {}), **dict(condition.get("settings", [])),
                "method": condition.get("method"), "layers": condition.get("layers")}

    conditions_b = {c["name"]: c for c in plan_b.get("conditions", [])}
    notes: list[str] = []
    for condition in plan_a.get("conditions", []):
        if condition["name"] not in conditions_b:
            continue
        a, b = effective(plan_a, condition), effective(plan_b, conditions_b[condition["name"]])
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                where = f"{condition['name']}: " if key in ("method", "layers") else ""
                note = f"{where}{key} {a.get(key)} in A, {b.get(key)} in B"
                notes += [note] if note not in notes else []
    return notes


def compare_runs(run_a: str | Path, run_b: str | Path) -> str:
    """The Markdown report of `effect_differences` between two bench folders; MelodiaError where they cannot be
    compared (another manifest, an item defined differently, nothing shared)."""
    plans = read_plan(run_a), read_plan(run_b)
    if plans[0]["manifest"] != plans[1]["manifest"]:
        raise MelodiaError(f"the runs edited different manifests ({plans[0]['manifest']}, {plans[1]['manifest']})")
    digests = [plan.get("item_digests", {}) for plan in plans]
    redefined = sorted(i for i in digests[0].keys() & digests[1].keys() if digests[0][i] != digests[1][i])
    if redefined:
        raise MelodiaError(f"item {redefined[0]} is defined differently in the two runs' manifests")
    rows = read_rows(run_a), read_rows(run_b)
    try:
        records = effect_differences(*rows)
    except ValueError as error:
        raise MelodiaError(f"a rows file holds a value that is not a number ({error})") from None
    if not records:
        raise MelodiaError("the runs share no condition with a reference on two or more items")
    items = [{row["item"] for row in run} for run in rows]
    unshared = [f"{len(items[0] - items[1])} items only in A", f"{len(items[1] - items[0])} only in B"]
    title = f"Paired effects, A ({plans[0]['model']}) minus B ({plans[1]['model']})"
    note = f"(condition - reference) in A minus in B, per item both edited ({'; '.join(unshared)})."
    differences = setting_differences(*plans)
    if differences:
        note += f"\nSet differently: {'; '.join(differences)}."
    return paired_markdown(records, title=title).replace("\n\nmean [", f"\n\n{note}\nmean [", 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="a `melodia bench` output folder")
    parser.add_argument("run_b", type=Path, help="another, on the same manifest and conditions")
    args = parser.parse_args(argv)
    try:
        print(compare_runs(args.run_a, args.run_b))
    except MelodiaError as error:
        print(f"bench_compare: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
