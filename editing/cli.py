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
from probing.store import NotACaptureStoreError, StoreMismatchError

COMMANDS = (demo, synth, generate, layers, capture, probe, edit, eval_command, bench)
USER_ERRORS = (MelodiaError, StoreMismatchError, NotACaptureStoreError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="melodia",
        description="Open up text-to-music diffusion models: capture attention, probe layers, edit music.",
        epilog="Start with: melodia demo   |   melodia COMMAND --help for examples")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
