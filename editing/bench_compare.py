"""Compare two benchmark runs on the same items: does a condition's paired effect differ between them?

Each run's summary already gives, per item, condition minus its reference (e.g. every layer injected
minus none, at the same t_start). Here that per-item effect of run A minus the same item's effect in
run B, averaged over the items both runs edited, with a 95 % bootstrap interval over items: the
difference of two models' (or two settings') effects, paired twice. Use it for a training
intervention with a control arm (the same start trained on two datasets), or any two models.

    python -m editing.bench_compare results/ft-aaba results/ft-walk

Examples:
    >>> rows = effect_differences(read_rows("results/a"), read_rows("results/b"))
    >>> rows[0]["condition"], rows[0]["metric"], rows[0]["mean"]
    ('all@t_start=0.6', 'melody_raw_chroma', 0.036)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from editing.bench_summary import bootstrap_mean, item_differences, paired_markdown
from editing.benchmark import PLAN_FILE, read_rows
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


def _plan(folder: Path) -> dict:
    path = folder / PLAN_FILE
    if not path.is_file():
        raise MelodiaError(f"{folder} holds no benchmark run ({PLAN_FILE} missing)")
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path, help="a `melodia bench` output folder")
    parser.add_argument("run_b", type=Path, help="another, on the same manifest and conditions")
    args = parser.parse_args(argv)
    try:
        plans = _plan(args.run_a), _plan(args.run_b)
        if plans[0]["manifest"] != plans[1]["manifest"]:
            raise MelodiaError(f"the runs edited different manifests ({plans[0]['manifest']}, {plans[1]['manifest']})")
        records = effect_differences(read_rows(args.run_a), read_rows(args.run_b))
        if not records:
            raise MelodiaError("the runs share no condition with a reference on two or more items")
    except MelodiaError as error:
        print(f"bench_compare: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    title = f"Paired effects, {plans[0]['model']} minus {plans[1]['model']}: (condition - reference) in A - in B"
    print(paired_markdown(records, title=title))


if __name__ == "__main__":
    main()
