"""The command line itself: -h everywhere, --version, flags shown as flags."""

from __future__ import annotations

import subprocess

import pytest
from typer.testing import CliRunner

import act_operator_lib
from act_operator_lib.cli import app
from tests.cli.conftest import ACT_OPERATOR

COMMANDS = [
    [],
    ["new"],
    ["add"],
    ["add", "node"],
    ["cookbook"],
    ["cookbook", "list"],
    ["cookbook", "show"],
    ["cookbook", "add"],
    ["update"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "act-operator")
def test_dash_h_is_help_and_flags_show_no_bool_value(runner: CliRunner, command: list[str]) -> None:
    short = runner.invoke(app, [*command, "-h"])
    long = runner.invoke(app, [*command, "--help"])

    assert short.exit_code == 0, short.output
    assert short.stdout == long.stdout
    assert short.stdout.startswith("Usage: ")
    assert "<bool>" not in short.stdout
    assert "-h, --help" in short.stdout


def test_flags_are_listed_as_plain_flags(runner: CliRunner) -> None:
    add_node = runner.invoke(app, ["add", "node", "-h"]).stdout
    new = runner.invoke(app, ["new", "-h"]).stdout

    assert "  --async " in add_node
    assert "  --force " in add_node
    assert "  --git / --no-git " in new


def test_version_from_the_console_script() -> None:
    result = subprocess.run(
        [str(ACT_OPERATOR), "--version"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"act-operator {act_operator_lib.__version__} (act-operator-lib)\n"


@pytest.mark.parametrize(
    "group", [[], ["add"], ["cookbook"]], ids=["act-operator", "add", "cookbook"]
)
def test_command_lists_show_whole_summaries(runner: CliRunner, group: list[str]) -> None:
    help_text = runner.invoke(app, [*group, "-h"]).stdout
    listed = help_text.split("Commands:\n")[1].splitlines()

    assert listed
    for line in listed:
        assert not line.rstrip().endswith("..."), line
