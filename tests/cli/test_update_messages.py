"""What `act-operator update` says when the template has not changed."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from act_operator_lib.cli import app
from tests.cli.conftest import run, snapshot


def test_update_with_nothing_new_says_nothing_changed(runner: CliRunner, tmp_path: Path) -> None:
    assert runner.invoke(app, ["new", "my-agent", "--path", str(tmp_path)]).exit_code == 0
    project = tmp_path / "my-agent"
    before = snapshot(project)

    result = runner.invoke(app, ["update", "--path", str(project)])

    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Nothing changed: the project already matches")
    assert "Updated" not in result.stdout
    assert snapshot(project) == before
    assert run("git", "status", "--porcelain", cwd=project) == ""
