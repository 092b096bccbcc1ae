"""The command line's help, version and small wording: what a new user reads first."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from nettrain import __version__
from nettrain.cli import app

runner = CliRunner()


def command_paths(group=None, prefix=()):
    """Every command and sub-command of the CLI, as argument lists: ["train"], ["data", "download"]."""
    group = group or typer.main.get_command(app)
    for name, command in sorted(getattr(group, "commands", {}).items()):
        yield [*prefix, name]
        yield from command_paths(command, (*prefix, name))


COMMANDS = list(command_paths())


def options_section(text: str) -> str:
    return text.split("Options:", 1)[1] if "Options:" in text else ""


@pytest.mark.parametrize("path", [[]] + COMMANDS, ids=lambda p: " ".join(p) or "nettrain")
def test_help_reads_like_normal_cli_help(path):
    for flag in ("--help", "-h"):
        result = runner.invoke(app, [*path, flag], env={"COLUMNS": "100"})
        assert result.exit_code == 0, result.output
        assert "-h, --help" in result.output
        options = options_section(result.output)
        # flags take no value, and options name what they take rather than a Python type
        assert not re.search(r"<(bool|str|int|float|list\[\w+\]|path)", options), options
        assert "╭" not in result.output  # plain help, as click and argparse print it
        if "--set" in options:
            assert "--set KEY=VALUE" in options
        for line in options.splitlines():
            if re.match(r"\s+(-\w, )?--(quiet|no-plot|fast)\b", line):
                assert not re.match(r"\s+(-\w, )?--[\w-]+ [A-Z<]", line), line


def test_there_are_commands_to_check():
    assert {"train", "eval", "bench", "predict"} <= {p[0] for p in COMMANDS}
    assert ["data", "download"] in COMMANDS


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_option(flag):
    result = runner.invoke(app, [flag])
    assert result.exit_code == 0 and result.output == f"nettrain {__version__}\n"
    assert runner.invoke(app, ["version"]).output == result.output
