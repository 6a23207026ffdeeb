"""`melodia probe`: train probes on a capture store and write the layer profile (JSON + plot)."""
from __future__ import annotations

import argparse

from editing.commands.common import check_output, formatter, print_json

HELP = """Which layers encode instrument, style and mood? Train one probe per layer x kind x attribute.

Each probe reads one layer's maps (pooled over the stored denoising steps) through a feature
family: self-attention maps flattened; cross-attention as the attribute word's own heat map over
the music (word-aligned: the store knows each slot word's tokens), as a position-free summary of
the key axis, and flattened (position-bound: blind across templates). It is cross-validated under
two splits, template (folds grouped by prompt template: the honest one) and random (the usual
protocol of probing papers), scored by balanced accuracy with a 95 % bootstrap interval, next to
its control task (a random class per template: rises when the features carry the template), the
chance level, a linear probe, and a probe on the prompt's text embedding alone. With
--random-baseline, the same probes run on the maps of a randomly initialised denoiser (captured
from the same prompts with the same noise protocol: `melodia capture --random-denoiser 0`).
The profile also names the self-attention band the editor injects with --layers auto, and why;
that choice needs the baseline (or --no-baseline).

examples:
  melodia capture --prompts datasets/probing/testbed.yaml --store maps.zarr --steps 5
  melodia capture --prompts datasets/probing/testbed.yaml --store random.zarr --steps 5 --random-denoiser 0
  melodia probe maps.zarr -o profile.json --plot profile.png --random-baseline random.zarr
  melodia probe maps.zarr -o p.json --split template --features word --attributes instrument --no-baseline
  melodia edit piano.wav --to "violin" -o out.wav --profile profile.json     # layers from the profile
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("probe", help="probe every layer of a capture store -> layer profile",
                            **formatter(HELP))
    parser.add_argument("store", help="capture store (path or fsspec URL) written by `melodia capture`")
    parser.add_argument("-o", "--output", required=True, help="profile JSON to write")
    parser.add_argument("--plot", help="also draw the profile to this PNG")
    parser.add_argument("--random-baseline", metavar="STORE", help="store captured with --random-denoiser")
    parser.add_argument("--no-baseline", action="store_true",
                        help="select the injection band without a random-denoiser baseline (else none is selected)")
    parser.add_argument("--split", default="template,random",
                        help="cross-validation protocols, comma separated: template (grouped by prompt template) "
                             "and/or random (default both)")
    parser.add_argument("--features", default="all",
                        help="feature families, comma separated: flat, word, keys (default all the store supports)")
    parser.add_argument("--attributes", help="comma-separated labels to probe (default: all in the store)")
    parser.add_argument("--step-indices", default="all", metavar="I,J",
                        help="stored step indices to pool, e.g. 0,1 (default all)")
    parser.add_argument("--steps", dest="step_indices", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    parser.add_argument("--hidden", type=int, default=None, help="MLP width (default 32; 0 makes the MLP probe linear too)")
    parser.add_argument("--components", type=int, default=None, help="principal components per layer (default 64)")
    parser.add_argument("--folds", type=int, default=None, help="grouped CV folds (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the profile JSON to stdout")
    parser.set_defaults(run=run)


def _choices(text: str, known: tuple[str, ...], option: str) -> tuple[str, ...]:
    from probing.errors import MelodiaError

    chosen = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    unknown = [v for v in chosen if v not in known]
    if unknown or not chosen:
        raise MelodiaError(f"{option} {text!r}: unknown {unknown[0] if unknown else 'empty'} (known: {', '.join(known)})")
    return chosen


def _settings(args):
    from dataclasses import replace

    from probing.probes import ProbeSettings

    given = {"hidden": args.hidden, "components": args.components, "folds": args.folds, "seed": args.seed}
    return replace(ProbeSettings(), **{k: v for k, v in given.items() if v is not None})


def run(args) -> None:
    from editing.commands.capture import parse_step_indices
    from probing.protocols import FEATURE_FAMILIES, SPLITS

    splits = _choices(args.split, SPLITS, "--split")  # the options first: one line, before anything loads
    families = None if args.features == "all" else _choices(args.features, FEATURE_FAMILIES, "--features")
    steps = parse_step_indices(args.step_indices)
    check_output(args.output, ".json")
    if args.plot:
        check_output(args.plot, ".png")
    from tqdm import tqdm

    from probing.errors import MelodiaError
    from probing.features import word_features_unavailable
    from probing.plots import plot_profile
    from probing.profile import build_profile, format_profile, labelled
    from probing.store import open_capture

    store = open_capture(args.store)
    random_store = open_capture(args.random_baseline) if args.random_baseline else None
    settings = _settings(args)
    attributes = args.attributes.split(",") if args.attributes else None
    labelled(store, attributes)  # an unlabelled store fails before the progress bar starts
    no_words = families and "word" in families and word_features_unavailable(store)
    if no_words:
        raise MelodiaError(no_words)
    n_folds = settings.folds * (1 + len(splits)) * (1 + (random_store is not None))
    with tqdm(total=n_folds, desc=f"probing (folds: control + {', '.join(splits)})") as bar:
        profile = build_profile(store, settings, random_store, attributes, steps, bar.update, splits, families)
    selection = (profile.select_edit_layers(require_baseline=not args.no_baseline)
                 if profile.has_baseline or args.no_baseline else None)
    profile.save(args.output)
    if args.plot:
        plot_profile(profile, args.plot, selection=selection.layers if selection else None)
    if args.json:
        print_json(profile.to_json())
    else:
        print(format_profile(profile, selection))
        print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
