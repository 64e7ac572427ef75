"""`act-operator demo` (the README's first command): scaffold, then stream the graph."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from act_operator_lib.cli import app
from tests.cli.conftest import ACT_OPERATOR


def _demo_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("act-operator-demo-*"))


def test_demo_console_script_streams_tokens_and_updates() -> None:
    before = _demo_dirs()

    result = subprocess.run(
        [str(ACT_OPERATOR), "demo"], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("$ act-operator new demo-agent") for line in lines)
    custom = next(line for line in lines if line.startswith("[custom]"))
    updates = [line for line in lines if line.startswith("[updates]")]
    assert custom.removeprefix("[custom]  ").startswith("For act-operator-lib users:")
    assert [line.split(":")[0] for line in updates] == [
        "[updates] DraftPrompt",
        "[updates] StreamAnswer",
    ]
    assert custom.removeprefix("[custom]  ") in updates[1]  # the streamed tokens are the answer
    table = lines[lines.index("$ per-node metrics") + 1 :]
    assert table[0].split() == [
        "node",
        "calls",
        "errors",
        "in_flight",
        "p50_ms",
        "p95_ms",
        "p99_ms",
    ]
    assert [row.split()[:3] for row in table[1:3]] == [
        ["DraftPrompt", "1", "0"],
        ["StreamAnswer", "1", "0"],
    ]
    assert _demo_dirs() == before  # the temporary project is gone
    removed = next(line for line in lines if line.startswith("Removed the temporary folder"))
    assert "act-operator-demo-" in removed
    assert not Path(removed.split()[4]).exists()
    assert lines[-1].startswith("Next: act-operator new my-agent")


def test_demo_keeps_the_project_at_path(runner: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "demo"

    result = runner.invoke(app, ["demo", "--path", str(target)])

    assert result.exit_code == 0, result.output
    assert "[custom]" in result.stdout
    assert (target / "src" / "demo_agent" / "graph.py").is_file()
    assert (target / "tests" / "integration_tests" / "test_graph.py").is_file()
    assert "demo_agent" not in sys.modules  # imported for the run only
    assert f"The demo project stays in {target}" in result.stdout
    assert "Removed" not in result.stdout
    assert result.stdout.splitlines()[-1].startswith("Next: act-operator new my-agent")


def test_demo_refuses_a_non_empty_path(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")

    result = runner.invoke(app, ["demo", "--path", str(tmp_path)])

    assert result.exit_code == 1
    assert "already exists and is not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
