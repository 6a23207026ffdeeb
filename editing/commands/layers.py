"""`melodia layers`: the layer table of a model (numbers, module paths, kinds, heads, tokens)."""
from __future__ import annotations

import argparse

from editing.commands.common import add_profile_arguments, formatter, load_profile, print_json

HELP = """Print a model's attention layers, measured by one forward pass.

A layer is an attention position numbered 1..N in forward order; each holds self- and/or
cross-attention modules (kind decided by what they attend to at run time). Layer specs such as
self:8-14 select from this table.

examples:
  melodia layers --model testbed                 # (`melodia layers testbed` works too)
  melodia layers --model tiny-audioldm2 --json
  melodia layers --model testbed --select self:8-14
  melodia layers --reference --select self:8-14    # the real cvssp/audioldm2-music UNet, no download
  melodia layers --model testbed --profile profile.json     # the band `--layers auto` injects, and why
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("layers", help="print the layer table", **formatter(HELP))
    parser.add_argument("model_positional", nargs="?", metavar="MODEL", help=argparse.SUPPRESS)  # the old spelling
    parser.add_argument("--model", default=None, metavar="M", help="model name, folder or hub id (default testbed)")
    parser.add_argument("--select", metavar="SPEC", help="only the modules a layer spec selects")
    parser.add_argument("--reference", action="store_true",
                        help="the real cvssp/audioldm2-music UNet built from its pinned config on the meta "
                             "device (no weights, no network): the paper's layers 1-16")
    add_profile_arguments(parser, "a layer profile (`melodia probe`): show the self-attention layers it selects "
                                  "for editing, with the reasons")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.set_defaults(run=run)


def run(args) -> None:
    from probing.errors import MelodiaError
    from probing.models import DEFAULT_MODEL, check_model_name, load_model

    if args.model and args.model_positional and args.model != args.model_positional:
        raise MelodiaError(f"two models given ({args.model_positional} and --model {args.model}): give one")
    args.model = args.model or args.model_positional or DEFAULT_MODEL
    if not args.reference:
        check_model_name(args.model)  # a typo is answered before torch is imported
    profile = load_profile(args)  # before the model loads
    from probing.layers import LayerTable, measure_layer_table

    if args.reference:
        from probing.models.audioldm2 import reference_layer_table

        table = reference_layer_table()
    else:
        table = measure_layer_table(load_model(args.model, device=args.device))
    selection = profile.select_edit_layers(require_baseline=not args.no_baseline) if profile else None
    spec = args.select or (selection.spec if selection else None)
    if spec:
        table = LayerTable(table.model, tuple(table.select(spec)), table.clip_seconds)
    if args.json:
        print_json({**table.to_json(), **({"selection": {"spec": selection.spec, "reasons": list(selection.reasons)}}
                                          if selection else {})})
    else:
        print(table.format())
        if selection:
            print(selection.explain())
