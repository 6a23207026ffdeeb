"""Every command has a docs page whose Help block is the command's real --help (docs never go stale).

Regenerate the blocks after changing a command:  python tests/test_docs.py --fix
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from editing.cli import COMMANDS, build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli"
BLOCK = re.compile(r"(## Help\n\n```text\n)(.*?)(\n```)", re.S)


def help_texts() -> dict[str, str]:
    """{page name: --help at 100 columns}: one per command, and `index` for `melodia --help`."""
    os.environ["COLUMNS"] = "100"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {"index": parser.format_help().rstrip(),
            **{name: command.format_help().rstrip() for name, command in sub.choices.items()}}


@pytest.mark.parametrize("name", sorted(help_texts()))
def test_cli_page_shows_the_real_help(name):
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"docs/cli/{name}.md is missing"
    match = BLOCK.search(page.read_text())
    assert match, f"docs/cli/{name}.md has no '## Help' text block"
    assert match.group(2) == help_texts()[name], f"docs/cli/{name}.md is stale: python tests/test_docs.py --fix"


def test_every_command_is_listed_in_the_cli_index():
    index = (DOCS / "index.md").read_text()
    assert len(COMMANDS) == len(help_texts()) - 1
    for name in set(help_texts()) - {"index"}:
        assert f"`melodia {name}`" in index


def fix() -> None:
    for name, text in help_texts().items():
        page = DOCS / f"{name}.md"
        page.write_text(BLOCK.sub(lambda m: m.group(1) + text + m.group(3), page.read_text(), count=1))
        print(f"updated {page}")


if __name__ == "__main__" and "--fix" in sys.argv:
    fix()
