"""`act-operator new`: the generated project installs, passes its own tests and lints clean."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]
from act_operator_lib.templates import __file__ as templates_init
from typer.testing import CliRunner

from act_operator_lib.cli import app
from tests.cli.conftest import ACT_OPERATOR, BIN, REPO, complete, count_tests, run, snapshot

TEMPLATE = Path(templates_init).parent / "project"


def test_generated_project_has_the_canonical_layout(generated_project: Path) -> None:
    files = set(snapshot(generated_project))

    assert {
        "pyproject.toml",
        "langgraph.json",
        "README.md",
        ".gitignore",
        "Makefile",
        ".copier-answers.yml",
        "src/my_agent/state.py",
        "src/my_agent/nodes.py",
        "src/my_agent/graph.py",
        "tests/unit_tests/test_nodes.py",
        "tests/integration_tests/test_graph.py",
        "src/my_agent/review.py",
        "tests/integration_tests/test_review.py",
        ".env.example",
        ".github/workflows/ci.yml",
    } <= files
    config = json.loads((generated_project / "langgraph.json").read_text())
    assert config["graphs"] == {
        "my_agent": "./src/my_agent/graph.py:graph",
        "my_agent_reviewed": "./src/my_agent/graph.py:reviewed_graph",
    }
    assert config["env"] == ".env"
    pyproject = (generated_project / "pyproject.toml").read_text()
    assert '"act-operator-lib>=' in pyproject
    assert '"ASYNC"' in pyproject
    nodes = (generated_project / "src/my_agent/nodes.py").read_text()
    assert "class DraftPrompt(BaseNode)" in nodes
    assert "class StreamAnswer(AsyncBaseNode)" in nodes
    # A git repository with everything committed: what `act-operator update` needs.
    status = run("git", "status", "--porcelain", cwd=generated_project)
    assert status == ""


def test_installed_project_passes_its_own_tests(
    generated_project: Path, project_python: Path, tmp_path: Path
) -> None:
    # Imported from a neutral directory, the package comes from the pip install and its
    # act-operator-lib from this checkout.
    where = run(
        project_python,
        "-c",
        "import act_operator_lib, my_agent.graph;"
        " print(my_agent.graph.__file__); print(act_operator_lib.__file__)",
        cwd=tmp_path,
    ).split()
    assert Path(where[0]).is_relative_to(generated_project)
    assert Path(where[1]).is_relative_to(REPO)

    output = run(
        project_python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=generated_project
    )

    assert f"{count_tests(generated_project)} passed" in output
    assert "test_review.py" in run(
        project_python,
        "-m",
        "pytest",
        "--co",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=generated_project,
    )


def test_env_example_lists_keys_and_env_stays_out_of_git(project_copy: Path) -> None:
    example = (project_copy / ".env.example").read_text()

    assert "OPENAI_API_KEY=" in example
    assert "LANGSMITH_API_KEY=" in example
    (project_copy / ".env").write_text("OPENAI_API_KEY=sk-secret\n")

    assert run("git", "check-ignore", ".env", cwd=project_copy).strip() == ".env"
    assert run("git", "status", "--porcelain", cwd=project_copy) == ""


def test_ci_workflow_runs_the_projects_lint_and_tests(generated_project: Path) -> None:
    workflow = yaml.safe_load((generated_project / ".github/workflows/ci.yml").read_text())

    # YAML reads the bare key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert set(triggers) == {"push", "pull_request"}
    [job] = workflow["jobs"].values()
    uses = [step["uses"].split("@")[0] for step in job["steps"] if "uses" in step]
    assert uses == ["actions/checkout", "actions/setup-python"]
    commands = [step["run"] for step in job["steps"] if "run" in step]
    assert commands == ['pip install -e ".[dev]"', "make lint", "make test"]
    # Run what CI runs after installing (this venv already has the dev tools).
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for command in commands[1:]:
        output = run("bash", "-c", command, cwd=generated_project, env=env)
    assert f"{count_tests(generated_project)} passed" in output


def test_generated_project_is_ruff_clean_with_its_own_config(generated_project: Path) -> None:
    run(BIN / "ruff", "check", "--no-cache", ".", cwd=generated_project)
    run(BIN / "ruff", "format", "--check", "--no-cache", ".", cwd=generated_project)


def test_new_normalises_the_package_name(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "Support.Bot-2", "--path", str(tmp_path), "--no-git"])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "Support.Bot-2" / "src" / "support_bot_2" / "graph.py").is_file()
    assert not (tmp_path / "Support.Bot-2" / ".git").exists()


def test_new_fills_an_existing_empty_directory(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()

    result = runner.invoke(app, ["new", "agent", "--path", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert (tmp_path / "agent" / "src" / "agent" / "nodes.py").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["agent"]  # no staging directory left


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("a/b", "path separator"),
        ("..", "path separator or '..'"),
        ("../escape", "path separator"),
        ("a\\b", "path separator"),
        ("class", "Python keyword"),
        ("match", "Python keyword"),
        ("1agent", "not a Python identifier"),
        ("my agent", "is not allowed"),
        ("agent-", "is not allowed"),
        ("agent!", "is not allowed"),
        ("json", "would shadow the standard library's 'json' module"),
        ("langgraph", "would shadow"),
    ],
)
def test_new_rejects_bad_names_and_writes_nothing(
    runner: CliRunner, tmp_path: Path, name: str, message: str
) -> None:
    result = runner.invoke(app, ["new", name, "--path", str(tmp_path)])

    assert result.exit_code == 1
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_a_non_empty_target(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / "notes.txt").write_text("mine")

    result = runner.invoke(app, ["new", "agent", "--path", str(tmp_path)])

    assert result.exit_code == 1
    assert "already exists and is not empty" in result.stderr
    assert snapshot(tmp_path) == {"agent/notes.txt": b"mine"}


def test_new_refuses_a_missing_parent(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "agent", "--path", str(tmp_path / "missing")])

    assert result.exit_code == 1
    assert "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_console_script_reports_errors_with_exit_status(tmp_path: Path) -> None:
    result = complete(ACT_OPERATOR, "new", "for", "--path", tmp_path)

    assert result.returncode == 1
    assert "error: project name 'for' gives package 'for', a Python keyword" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_module_entry_point_shows_help() -> None:
    result = complete(sys.executable, "-m", "act_operator_lib.cli", "--help")

    assert result.returncode == 0
    for command in ("new", "add", "cookbook", "update", "demo"):
        assert command in result.stdout


def test_a_failing_template_leaves_nothing_behind(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-template"
    shutil.copytree(TEMPLATE, broken)
    graph = broken / "template" / "src" / "{{ package_name }}" / "graph.py.jinja"
    graph.write_text(graph.read_text() + "{% if %}\n")  # a Jinja syntax error, late in the render
    monkeypatch.setenv("ACT_OPERATOR_TEMPLATE_DIR", str(broken))
    target_parent = tmp_path / "projects"
    target_parent.mkdir()

    result = runner.invoke(app, ["new", "agent", "--path", str(target_parent)])

    assert result.exit_code == 1
    assert "error:" in result.stderr
    assert list(target_parent.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["pydantic", "langsmith", "httpx", "aiohttp", "requests", "yaml", "openai"]
)
def test_new_refuses_a_name_that_shadows_a_dependency(
    runner: CliRunner, tmp_path: Path, name: str
) -> None:
    result = runner.invoke(app, ["new", name, "--path", str(tmp_path)])

    assert result.exit_code == 1
    assert f"gives package {name!r}, which would shadow the {name!r} module" in result.stderr
    assert "they would import the project instead and its tests would fail" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_refuses_modules_found_in_the_installed_dependency_closure(
    runner: CliRunner, tmp_path: Path
) -> None:
    # jsonpatch (langchain-core) and pluggy (pytest) are named in no list of ours: they are
    # found by walking the installed requirements of what a generated project depends on.
    for name, distribution in [("jsonpatch", "jsonpatch"), ("pluggy", "pluggy")]:
        result = runner.invoke(app, ["new", name, "--path", str(tmp_path)])

        assert result.exit_code == 1
        assert f"would shadow the {name!r} module (installed by {distribution})" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_new_without_git_on_path_says_so_and_update_names_the_real_cause(
    tmp_path: Path,
) -> None:
    no_git = tmp_path / "bin-without-git"
    no_git.mkdir()
    projects = tmp_path / "projects"
    projects.mkdir()

    made = complete(
        ACT_OPERATOR, "new", "agent", "--path", projects, env={**os.environ, "PATH": str(no_git)}
    )

    assert made.returncode == 0, made.stderr
    assert "warning: git is not on PATH" in made.stderr
    assert "`act-operator update` cannot merge" in made.stderr
    assert not (projects / "agent" / ".git").exists()

    updated = complete(ACT_OPERATOR, "update", "--path", projects / "agent")

    assert updated.returncode == 1
    assert "generated without git (git was not on PATH)" in updated.stderr
    assert "--no-git" not in updated.stderr


def test_new_with_no_git_flag_gives_no_git_warning(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "agent", "--no-git", "--path", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
