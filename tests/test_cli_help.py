"""Every command's --help survives the help renderer: typer draws help through rich, whose
markup swallows `[text]`, so a docstring's bracketed text must come out as written."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from rlhfkit.cli import app

BRACKETED = re.compile(r"\[[^\]]*\]")


def _commands(group, path=()):
    """Every command and group under `group`, by its words on the command line."""
    yield path, group
    for name, command in getattr(group, "commands", {}).items():
        yield from _commands(command, (*path, name))


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_found():
    assert {("run",), ("feedback", "pairs"), ("cai", "revise"), ()} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p) or "rlhfkit")
def test_help_keeps_every_bracketed_text_of_the_docstring(path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line a paragraph: nothing wrapped mid-bracket
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    docstring = COMMANDS[path].help or ""
    lost = [s for s in BRACKETED.findall(docstring) if _flat(s) not in shown]
    assert not lost, f"rlhfkit {' '.join(path)} --help loses {lost}: reword them or escape \\["
    # nothing of the docstring is swallowed, brackets or not
    assert _flat(docstring.split("\n\n")[0]) in shown
