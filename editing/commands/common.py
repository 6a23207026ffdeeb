"""Argument helpers shared by the subcommands.

Examples:
    >>> parser = argparse.ArgumentParser(); add_model_argument(parser)
    >>> parser.parse_args([]).model
    'testbed'
"""
from __future__ import annotations

import argparse
import json
import sys

from probing.models import DEFAULT_MODEL, TINY_NAMES


def refinements(text: str) -> int:
    """argparse type of --refine: a whole number >= 0."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


REFINE_HELP = ("fixed-point iterations per inversion step (melodia, inversion/ddim; default: the model's, 4 on "
               "Stable Audio Open, else 0, the explicit step the papers invert with): 1 brings the UNet "
               "testbeds' round trip to noise and back 5x closer for one more evaluation per inverted step")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="M",
                        help="testbed (default, shipped UNet v1), testbed-v2 (shipped UNet v2: finer attention, "
                             "follows its prompts better), testbed-dit (shipped flow-matching DiT), "
                             f"{', '.join(TINY_NAMES)} (random weights, offline), a local pipeline folder, or a "
                             "Hugging Face id such as cvssp/audioldm2-music")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def add_output_argument(parser: argparse.ArgumentParser, help: str, *, metavar: str | None = None,
                        default: str | None = None, old: str = "--out") -> None:
    """`-o/--output` into `args.out`; `old` (the spelling scripts used before) still works, unlisted."""
    parser.add_argument("-o", "--output", dest="out", metavar=metavar, default=default, help=help)
    parser.add_argument(old, dest="out", metavar=metavar, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def formatter(parser_description: str):
    """Keep the examples in a --help text laid out as written."""
    return {"description": parser_description, "formatter_class": argparse.RawDescriptionHelpFormatter}


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def add_profile_arguments(parser: argparse.ArgumentParser, help: str) -> None:
    """--profile JSON (what `--layers auto` means) and --no-baseline (accept a profile without baseline)."""
    parser.add_argument("--profile", metavar="JSON", help=help)
    parser.add_argument("--no-baseline", action="store_true",
                        help="accept a --profile without the random-denoiser baseline for choosing layers (its "
                             "selection then counts what a random network's maps show as encoded)")


def load_profile(args):
    """The --profile of `args`, checked for layer selection before any model loads (None without one)."""
    if not args.profile:
        return None
    from pathlib import Path

    from probing.errors import MelodiaError

    if not Path(args.profile).is_file():
        raise MelodiaError(f"layer profile {args.profile} does not exist (make one with `melodia probe STORE -o "
                           f"{args.profile}`)")
    from probing.profile import LayerProfile

    profile = LayerProfile.load(args.profile)
    profile.select_edit_layers(require_baseline=not args.no_baseline)  # one clear line now, not after loading
    return profile


def check_output(path: str, suffix: str) -> None:
    """One clear error, before any work, when an output cannot be written: a wrong suffix, a folder in the
    way, or no writable folder to create it in (missing folders are created when the output is written)."""
    import os
    from pathlib import Path

    from probing.errors import MelodiaError

    output = Path(path)
    if output.suffix.lower() != suffix:
        raise MelodiaError(f"output {path}: expected a {suffix} file")
    if output.is_dir():
        raise MelodiaError(f"output {path} is a folder; give a {suffix} file name")
    existing = next(p for p in output.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise MelodiaError(f"output {path}: cannot write under {existing}")
