"""Does injection keep the source because of the source's own Q/K? Own vs none, another clip's, mirrored times, flat.

    python benchmarks/injection_specificity.py --model testbed-dit --t-start 1.0 --limit 16
    python benchmarks/injection_specificity.py --model testbed --model testbed-dit --t-start 0.6 --t-start 1.0

For each model and t_start, the first --limit timbre edits of the manifest (synthesizer sources, their
target prompts), each denoised from the same inverted latent with no injection, the source's own Q/K,
the own Q/K at the mirrored timesteps, the Q/K of the next item's source at the same timesteps, and
flat attention (zero queries: every row uniform, no routing) (editing/injection_control.py). Prints each
control's mean chroma to the source, latent distance to the source and shift from the `none` edit, then
the paired differences own - none, own - foreign, own - reversed and flat - none with 95 % bootstrap
intervals over items. `none` is the baseline: the same edit without injection. `flat - none` is how much
the model's output depends on where its self-attention routes at all: a model that hardly depends on
it gives injection nothing to act through. `--rows FILE` writes the per-item rows as CSV.
Any model melodia loads: `--model cvssp/audioldm2-music` asks the same of AudioLDM 2.
"""
from __future__ import annotations

import argparse
import csv
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from editing.injection_control import CONTROLS, SUFFIXES, specificity_differences, specificity_rows  # noqa: E402
from editing.manifests import load_manifest  # noqa: E402
from probing.models import load_model  # noqa: E402


def report(label: str, rows: list[dict]) -> None:
    print(f"\n{label}: {len(rows)} items")
    print("| control | chroma to source | latent distance | shift from none |\n|---|---|---|---|")
    for control in CONTROLS:
        means = [np.mean([r[control + suffix] for r in rows]) for suffix in SUFFIXES.values()]
        print(f"| {control} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    print("\n| paired | metric | mean [95 % CI] |\n|---|---|---|")
    for d in specificity_differences(rows):
        print(f"| {d['pair']} | {d['metric']} | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a model name or pipeline folder (repeat; default testbed-dit)")
    parser.add_argument("--t-start", type=float, action="append", help="repeat for several (default 1.0)")
    parser.add_argument("--limit", type=int, default=16, help="timbre items from the start of the manifest")
    parser.add_argument("--manifest", default="testbed")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--layers", default="self:*", help="the injected layers (default every self-attention layer)")
    parser.add_argument("--rows", help="write the per-item rows here (CSV)")
    args = parser.parse_args()
    manifest = load_manifest(args.manifest)
    items = manifest.select(["timbre"], args.limit)
    written = []
    for name in args.model or ["testbed-dit"]:
        model = load_model(name)
        sources = [manifest.source_audio(item, model.sample_rate) for item in items]
        prompts = [item.target_prompt for item in items]
        for t_start in args.t_start or [1.0]:
            rows = specificity_rows(model, sources, prompts, t_start, args.steps, args.guidance, args.layers)
            report(f"{name}, t_start {t_start}, {args.layers}, guidance {args.guidance}", rows)
            written += [{"model": name, "t_start": t_start, "item": items[r["source"]].id, **r} for r in rows]
    if args.rows:
        with open(args.rows, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(written[0]))
            writer.writeheader()
            writer.writerows(written)


if __name__ == "__main__":
    main()
