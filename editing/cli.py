"""The `melodia` command: one subcommand per job, each in editing/commands/.

Every command prints one clear line and exits 2 on bad input, shows a progress bar on long
work, and has --help with an example. Run `melodia COMMAND --help`.
"""
from __future__ import annotations

import argparse
import os
import sys

from editing.commands import bench, capture, demo, edit, generate, layers, probe, synth
from editing.commands import eval as eval_command  # plain `eval` would shadow the builtin
from probing.errors import MelodiaError
from probing.threads import configure_threads

COMMANDS = (demo, synth, generate, layers, capture, probe, edit, eval_command, bench)
USER_ERRORS = (MelodiaError, FileNotFoundError)  # the store's errors are MelodiaErrors too


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melodia",
        description="Open up text-to-music diffusion models: capture attention, probe layers, edit music.",
        epilog="Start with: melodia demo   |   melodia COMMAND --help for examples")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own warnings and log messages (hidden by default)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch threads of this process (default: torch's, or under torchrun / RANK+WORLD_SIZE "
                             "the cores divided among the ranks; MELODIA_THREADS and OMP_NUM_THREADS also set it)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def quiet_libraries() -> None:
    """Hide library chatter (deprecation warnings, hub and loading logs): melodia says what matters in one
    line. Set before the libraries are imported (they read their verbosity then)."""
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    for variable in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(variable, "error")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        configure_threads(args.threads)
        if getattr(args, "model", None) is not None:
            from probing.models import check_model_name

            check_model_name(args.model)  # a typo or a missing folder: one line, before anything loads
        args.run(args)
    except USER_ERRORS as error:
        print(f"melodia {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stdout = open(os.devnull, "w")
    except KeyboardInterrupt:
        print(f"melodia {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
