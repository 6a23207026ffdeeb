"""`melodia probe`: train probes on a capture store and write the layer profile (JSON + plot)."""
from __future__ import annotations

from editing.commands.common import formatter, print_json

HELP = """Which layers encode instrument, style and mood? Train one probe per layer x kind x attribute.

Each probe reads one layer's maps (pooled over the stored denoising steps), is cross-validated
with folds grouped by prompt template, and is scored by balanced accuracy with a 95 % cluster-
bootstrap interval, next to its control task (labels permuted between prompts), the chance level,
a linear probe, and a probe on the prompt's text embedding alone. With --random-baseline, the
same probes run on the maps of a randomly initialised denoiser (captured from the same prompts
with `melodia capture --random-denoiser 0`). The profile also names the self-attention band the
editor injects with --layers auto, and why.

examples:
  melodia capture --prompts datasets/probing/testbed.yaml --store maps.zarr
  melodia probe maps.zarr -o profile.json --plot profile.png
  melodia capture --prompts datasets/probing/testbed.yaml --store random.zarr --random-denoiser 0
  melodia probe maps.zarr -o profile.json --random-baseline random.zarr --attributes instrument
  melodia edit piano.wav --to "violin" -o out.wav --profile profile.json     # layers from the profile
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("probe", help="probe every layer of a capture store -> layer profile",
                            **formatter(HELP))
    parser.add_argument("store", help="capture store (path or fsspec URL) written by `melodia capture`")
    parser.add_argument("-o", "--output", required=True, help="profile JSON to write")
    parser.add_argument("--plot", help="also draw the profile to this PNG")
    parser.add_argument("--random-baseline", metavar="STORE", help="store captured with --random-denoiser")
    parser.add_argument("--attributes", help="comma-separated labels to probe (default: all in the store)")
    parser.add_argument("--steps", default="all", help="stored step indices to pool, e.g. 0,1 (default all)")
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (default 32; 0 makes the MLP probe linear too)")
    parser.add_argument("--components", type=int, default=None, help="principal components per layer (default 64)")
    parser.add_argument("--folds", type=int, default=None, help="grouped CV folds (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the profile JSON to stdout")
    parser.set_defaults(run=run)


def _settings(args):
    from dataclasses import replace

    from probing.probes import ProbeSettings

    given = {"hidden": args.hidden, "components": args.components, "folds": args.folds, "seed": args.seed}
    return replace(ProbeSettings(), **{k: v for k, v in given.items() if v is not None})


def format_profile(profile, selection) -> str:
    """Plain-text table: per attribute and layer, self and cross accuracy with CIs; then the selection."""
    lines = []
    for attribute, classes in profile.attributes.items():
        lines.append(f"{attribute} ({len(classes)} classes, chance {1 / len(classes):.1%}); "
                     "balanced accuracy [95% CI] / control")
        lines.append(f"{'layer':>5}  {'self':>24}  {'cross':>24}")
        for layer in range(1, profile.n_layers + 1):
            cells = []
            for kind in ("self", "cross"):
                s = profile.score(attribute, f"{kind}:{layer}")
                cells.append("-" if s is None else f"{s.accuracy:.0%} [{s.ci[0]:.0%}-{s.ci[1]:.0%}] / {s.control:.0%}")
            lines.append(f"{layer:>5}  {cells[0]:>24}  {cells[1]:>24}")
        text = profile.score(attribute, "text")
        if text is not None:
            lines.append(f"{'text':>5}  text embedding alone: {text.accuracy:.0%} [{text.ci[0]:.0%}-{text.ci[1]:.0%}]")
        lines.append("")
    lines.append(selection.explain())
    return "\n".join(lines)


def run(args) -> None:
    from tqdm import tqdm

    from editing.commands.capture import parse_step_indices
    from probing.plots import plot_profile
    from probing.profile import build_profile
    from probing.store import open_capture

    store = open_capture(args.store)
    random_store = open_capture(args.random_baseline) if args.random_baseline else None
    settings = _settings(args)
    attributes = args.attributes.split(",") if args.attributes else None
    n_folds = settings.folds * (1 + (random_store is not None))
    with tqdm(total=n_folds, desc="probing (folds)") as bar:
        profile = build_profile(store, settings, random_store, attributes, parse_step_indices(args.steps), bar.update)
    selection = profile.select_edit_layers()
    profile.save(args.output)
    if args.plot:
        plot_profile(profile, args.plot, selection=selection.layers)
    if args.json:
        print_json(profile.to_json())
    else:
        print(format_profile(profile, selection))
        print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
