"""The command line explains itself: every argument has help text, ``--help`` lists the exit codes,
and the README's command table and exit codes say what the parser does."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vl_datasets.cli import build_parser, main
from vl_datasets.cli.main import EXIT_CODE_MEANINGS, EXIT_CODES

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name ("export", "cache prune"), subcommands included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_commands(sub, f"{prefix}{name} "))
    return found


COMMANDS = _commands(build_parser())


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and (action.help is None or not action.help.strip())
    ]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_argument_has_help_text(name):
    assert _undocumented(COMMANDS[name]) == [], f"`vl-datasets {name}` arguments without help text"


def test_top_level_help_lists_every_exit_code(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out
    listed = {int(code) for code in re.findall(r"^\s+(\d+)\s+\S", out.split("exit codes:")[1], flags=re.M)}
    assert {code for _, code, _ in EXIT_CODES} | {0, 2} <= listed
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(meaning)}$", out, flags=re.M), f"exit code {code} not explained"


def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_readme_lists_every_command_and_the_exit_codes_main_returns():
    section = _readme_section("Command line")
    top_level = {name for name in COMMANDS if " " not in name}
    missing = sorted(name for name in top_level if f"`vl-datasets {name}" not in section)
    assert missing == [], f"commands missing from the README's Command line table: {missing}"
    assert "--api-url" in section
    readme_codes = {int(code) for code in re.findall(r"(\d+) \w", section.split("Exit codes:")[1].split("\n\n")[0])}
    returned = {code for _, code, _ in EXIT_CODES} | {2, 130}  # usage errors, and Ctrl-C
    assert readme_codes == returned, "README's exit codes differ from the CLI's"
    assert returned == set(EXIT_CODE_MEANINGS) - {0}, "--help's exit codes differ from the CLI's"
