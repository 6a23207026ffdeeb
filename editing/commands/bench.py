"""`melodia bench`: edit every item of a benchmark manifest with several methods (or layer bands) and tabulate."""
from __future__ import annotations

import math
import sys

from editing.commands.common import (REFINE_HELP, add_model_argument, add_output_argument, add_profile_arguments,
                                     formatter, load_profile, print_json, refinements)

DEFAULT_METHODS = "melodia,ddim,sdedit,ddpm-friendly"  # on DDPM-family models
DEFAULT_FLOW_METHODS = "melodia,inversion,sdedit,flowedit"  # on flow-matching models
HELP = f"""Run edit methods over a benchmark manifest; write one row per (item, method), then the summary.

MANIFEST is a shipped name (testbed, musicdelta, melodiaedit, zome-bench; datasets/editing/) or a
YAML file. testbed renders every source and its ideal edit with the synthesizer (no download);
the others read audio files from --data-dir (the manifest says what to download). Each edit is
scored with the metrics that can run here: chroma and melody (pYIN contour) to the source; on the
testbed, the classifier's adherence and the log-mel, chroma and melody distance to the ideal;
CLAP and LPAPS only with --clap and --lpaps. Writes into -o DIR: rows.csv (appended and flushed per edit), bench.json (the settings),
summary.csv, summary.md (mean ± 95 % CI per method, ASB/AMB across methods) and summary.png.

--sweep t_start=0.4,0.6,0.8,1.0 runs every method (or band) at every value (also guidance=...;
two --sweep give every combination, without a frontier) and adds the frontier: adherence against
structure, one curve per method, and structure at matched adherence per pair of methods
(frontier.png, frontier.csv, a table in summary.md).
--ablation layers runs melodia with the paper's layer bands: none, all (self:*), 6-16, 8-14,
10-12, and auto (the band --profile selects; skipped without --profile); --bands none,all keeps
those two (the injection's positive control: every self-attention layer against none).
--resume skips the edits already in DIR. Under torchrun (RANK, WORLD_SIZE) each rank edits
items[rank::world] into rows.rank<R>.csv; then --summarize merges them. Details: docs/cli/bench.md.

examples:
  melodia bench testbed -o results/testbed --limit 8 --steps 25
  melodia bench testbed --methods {DEFAULT_METHODS} -o results/testbed --resume
  melodia bench testbed --model testbed-dit -o results/testbed-dit       # {DEFAULT_FLOW_METHODS}
  melodia bench testbed --ablation layers --category timbre --profile profile.json -o results/ablation
  melodia bench testbed --ablation layers --bands none,all --category timbre --sweep t_start=0.6,0.8,1.0 -o results/control
  melodia bench testbed --sweep t_start=0.4,0.6,0.8,1.0 --methods melodia,ddim,sdedit,ddpm-friendly -o results/frontier
  melodia bench musicdelta --data-dir ~/MedleyDB/Audio --model cvssp/audioldm2-music --clap clap/ \\
      --lpaps lpaps.pth -o results/musicdelta
  torchrun --nproc-per-node 2 -m editing.cli bench testbed -o results/testbed
  melodia bench --summarize -o results/testbed
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("bench", help="benchmark edit methods (or layer bands) on a manifest", **formatter(HELP))
    parser.add_argument("manifest", nargs="?", help="benchmark manifest: shipped name or YAML file")
    add_output_argument(parser, "output folder (rows, summary, plot); required", metavar="DIR")
    parser.add_argument("--methods", help=f"comma-separated methods (default {DEFAULT_METHODS}; on "
                        f"flow-matching models {DEFAULT_FLOW_METHODS}; on Stable Audio Open those but flowedit)")
    parser.add_argument("--ablation", choices=["layers"], help="the layer ablation with melodia instead of methods")
    parser.add_argument("--bands", metavar="NAMES", help="with --ablation: only these bands, comma-separated "
                        "(none, all, 6-16, 8-14, 10-12, auto), e.g. none,all")
    add_model_argument(parser)
    parser.add_argument("--layers", default="auto", help="melodia's layer spec (default auto: --profile's band, "
                        "else the model's default)")
    add_profile_arguments(parser, "layer profile (`melodia probe`): the auto band")
    parser.add_argument("--category", help="only these categories, comma-separated: timbre, style, mood")
    parser.add_argument("--limit", type=_positive, metavar="N", help="only the first N items (after --category)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder holding the manifest's audio files")
    parser.add_argument("--t-start", type=float, default=0.6, help="inverted fraction of the schedule, (0, 1]")
    parser.add_argument("--sweep", action="append", metavar="SETTING=V1,V2,...",
                        help="run every condition at each value of t_start or guidance (overrides --t-start / "
                        "--guidance); repeat for a grid")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refine", type=refinements, metavar="N", help=REFINE_HELP)
    parser.add_argument("--clap", metavar="CHECKPOINT", help="CLAP checkpoint (folder or cached id): adds CLAP")
    parser.add_argument("--lpaps", metavar="WEIGHTS", help="LPAPS weights file: adds LPAPS")
    parser.add_argument("--resume", action="store_true", help="continue the run in DIR, skipping finished edits")
    parser.add_argument("--summarize", action="store_true", help="only (re)write the summary of DIR")
    parser.add_argument("--save-audio", action="store_true", help="also write DIR/audio/<item>/<method>.wav")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def _positive(text: str) -> int:
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run(args) -> None:
    if not args.out:  # optional in argparse only so that the old --out spelling can stand in for it
        from probing.errors import MelodiaError

        raise MelodiaError("give the output folder: -o/--output DIR")
    from editing.bench_summary import summarize
    from editing.benchmark import BenchPlan, EditOptions, Scorer, Shard, parse_sweeps, run_benchmark, swept_conditions
    from editing.editor import Melodia
    from editing.manifests import load_manifest
    from probing.errors import MelodiaError
    from probing.models import load_model

    if not args.summarize:
        if not args.manifest:
            raise MelodiaError("give a MANIFEST (e.g. testbed), or --summarize -o DIR to summarize a finished run")
        _check_options(args)
        grid = parse_sweeps(args.sweep or [])
        manifest = load_manifest(args.manifest)
        categories = [c.strip() for c in args.category.split(",")] if args.category else None
        items = manifest.select(categories, args.limit)
        shard = Shard.from_env()
        manifest.check_files(items[shard.rank::shard.world], args.data_dir)  # before the model loads
        profile = load_profile(args)
        scorer = Scorer.load(args.clap, args.lpaps)
        editor = Melodia(load_model(args.model, device=args.device), profile=profile,
                         require_baseline=not args.no_baseline)
        plan = BenchPlan(manifest, swept_conditions(_conditions(args, editor), grid), args.model,
                         EditOptions(args.t_start, args.steps, args.guidance, args.seed, args.refine), items,
                         "layers" if args.ablation else "methods", {"clap": args.clap, "lpaps": args.lpaps})
        rows = run_benchmark(plan, editor, args.out, scorer, shard=shard, resume=args.resume,
                             data_dir=args.data_dir, save_audio=args.save_audio)
        if shard.world > 1:
            print(f"rank {shard.rank}: wrote {rows}; when every rank is done: melodia bench --summarize -o {args.out}")
            return
    summary = summarize(args.out)
    if args.json:
        records = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                   for r in summary.records]  # JSON has no NaN
        print_json({"out": args.out, "records": records, "notes": summary.notes})
        return
    print(summary.markdown, end="")
    print(f"wrote {args.out}/: {', '.join(summary.files)}")


def _check_options(args) -> None:
    from probing.errors import MelodiaError

    if args.ablation and (args.methods or args.layers != "auto"):
        raise MelodiaError("--ablation layers runs melodia with each layer band: drop --methods and --layers")
    if args.bands is not None:
        from editing.benchmark import parse_bands

        if not args.ablation:
            raise MelodiaError("--bands picks bands of the layer ablation: add --ablation layers")
        args.bands = parse_bands(args.bands, auto_available=bool(args.profile))  # the checked list from here on
        if "none" not in args.bands:
            print("melodia bench: without the 'none' band the summary has no paired differences to no injection",
                  file=sys.stderr)


def _conditions(args, editor) -> list:
    """The compared columns: the methods, or the layer ablation ("auto" only with a profile)."""
    from editing.benchmark import ablation_conditions, method_conditions

    if args.ablation:
        if editor.profile is None and args.bands is None:
            print("melodia bench: the 'auto' row is skipped: give --profile (from `melodia probe`)", file=sys.stderr)
        return ablation_conditions(editor.auto_layers() if editor.profile else None, args.bands)
    from editing.methods import METHODS_BY_PREDICTION
    from probing.errors import MelodiaError

    layers = editor.auto_layers() if args.layers == "auto" else args.layers
    runs = METHODS_BY_PREDICTION[editor.model.prediction]
    default = [m for m in (DEFAULT_FLOW_METHODS if editor.flow else DEFAULT_METHODS).split(",") if m in runs]
    methods = args.methods.split(",") if args.methods else default
    foreign = [m for m in methods if m not in runs]
    if foreign:  # before anything is written
        raise MelodiaError(f"--methods {','.join(foreign)}: not for {editor.model.name}; it runs {', '.join(runs)}")
    return method_conditions(methods, layers)
