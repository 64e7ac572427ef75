"""`act-operator cookbook list/show/add`: every recipe, copied into a project, still runs."""

from __future__ import annotations

import ast
import json
import os
import sys
import tomllib
from pathlib import Path

import pytest
from act_operator_lib.cookbook import __file__ as cookbook_init
from packaging.requirements import Requirement
from typer.testing import CliRunner

import act_operator_lib
from act_operator_lib._internal.cookbook_index import (
    EXTRA_FOR_IMPORT,
    arrange_imports,
    dependency_closure,
    find_recipes,
    localise_imports,
    needed_extras,
)
from act_operator_lib._internal.scaffold import ScaffoldError
from act_operator_lib.cli import app
from tests.cli.conftest import BIN, run, snapshot

COOKBOOK = Path(cookbook_init).parent
# Discovered the way the CLI does, so recipes added later are tested with no edit here.
RECIPES = sorted(p.stem for p in COOKBOOK.glob("*.py") if not p.name.startswith("_"))


def _first_docstring_line(recipe: str) -> str:
    tree = ast.parse((COOKBOOK / f"{recipe}.py").read_text())
    return (ast.get_docstring(tree) or "").strip().splitlines()[0]


def _recipe_imports(recipe: str) -> set[str]:
    tree = ast.parse((COOKBOOK / f"{recipe}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found - {recipe}


def _closure(recipe: str) -> set[str]:
    seen: set[str] = set()
    pending = [recipe]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(_recipe_imports(name))
    return seen


def test_list_shows_every_recipe_with_its_first_docstring_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cookbook", "list"])

    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert sorted(lines) == RECIPES
    for recipe in RECIPES:
        assert _first_docstring_line(recipe) in lines[recipe]


def _third_party_extras(recipe: str) -> set[str]:
    extras = {
        "aiohttp": "http",
        "asyncpg": "postgres",
        "aiofiles": "files",
        "redis": "redis",
        "prometheus_client": "metrics",
    }
    tree = ast.parse((COOKBOOK / f"{recipe}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {extras[name] for name in found if name in extras}


def test_list_names_the_extras_each_recipe_and_its_dependencies_need(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cookbook", "list"])

    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert any(_third_party_extras(recipe) for recipe in RECIPES)  # e.g. http_client: http
    for recipe in RECIPES:
        expected = set().union(*(_third_party_extras(name) for name in _closure(recipe)))
        for extra in expected:
            assert extra in lines[recipe].split("[extras: ")[1], lines[recipe]
        if not expected:
            assert "[extras:" not in lines[recipe]


def test_extras_are_derived_from_imports_through_relative_dependencies(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "_private.py").write_text('"""Not a recipe."""\n')
    (tmp_path / "client.py").write_text('"""HTTP things."""\nimport aiohttp\n')
    (tmp_path / "store.py").write_text(
        '"""Stores rows, fetched over HTTP.\n\nMore text."""\n'
        "from asyncpg import Pool\n"
        "from .client import session\n"
        "from act_operator_lib.base_node import AsyncBaseNode\n"
    )
    (tmp_path / "spool.py").write_text(
        '"""Spools to files."""\nfrom . import store\n\ndef f():\n    import aiofiles\n'
    )

    recipes = find_recipes(tmp_path)

    assert sorted(recipes) == ["client", "spool", "store"]
    assert recipes["store"].summary == "Stores rows, fetched over HTTP."
    assert recipes["store"].recipes == {"client"}
    assert dependency_closure(recipes, ["spool"]) == ["client", "spool", "store"]
    assert needed_extras(recipes, ["spool"]) == ["files", "http", "postgres"]
    assert needed_extras(recipes, ["client"]) == ["http"]


def test_absolute_cookbook_imports_are_made_relative() -> None:
    source = (
        "from act_operator_lib.cookbook.deadline import remaining\n"
        "from act_operator_lib.cookbook import race\n"
        "from act_operator_lib.base_node import BaseNode\n"
    )

    assert localise_imports(source) == (
        "from .deadline import remaining\nfrom . import race\n"
        "from act_operator_lib.base_node import BaseNode\n"
    )


def test_a_plain_import_of_a_recipe_is_refused_rather_than_copied_broken() -> None:
    source = "import act_operator_lib.cookbook.deadline as deadline\n"

    with pytest.raises(
        ScaffoldError, match=r"line 1: `import act_operator_lib\.cookbook\.deadline`"
    ):
        localise_imports(source)


def test_show_prints_the_source(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cookbook", "show", RECIPES[0]])

    assert result.exit_code == 0
    assert result.stdout == (COOKBOOK / f"{RECIPES[0]}.py").read_text()


def test_show_rejects_an_unknown_recipe(runner: CliRunner) -> None:
    result = runner.invoke(app, ["cookbook", "show", "teleport"])

    assert result.exit_code == 1
    assert "unknown cookbook recipe 'teleport'; available:" in result.stderr
    assert RECIPES[0] in result.stderr


@pytest.mark.parametrize("recipe", RECIPES)
def test_add_copies_the_recipe_and_what_it_imports(
    runner: CliRunner, project_copy: Path, recipe: str
) -> None:
    result = runner.invoke(app, ["cookbook", "add", recipe, "--path", str(project_copy)])

    assert result.exit_code == 0, result.output
    copied = project_copy / "src" / "my_agent" / "cookbook"
    assert {p.stem for p in copied.glob("*.py")} == _closure(recipe) | {"__init__"}
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse((copied / f"{recipe}.py").read_text()))
        if isinstance(node, ast.ImportFrom)
    }
    assert not any(module.startswith("act_operator_lib.cookbook") for module in imported)
    extras = set().union(*(_third_party_extras(name) for name in _closure(recipe)))
    requirement = _act_operator_requirement(project_copy)
    assert set(requirement.extras) == extras  # what `langgraph build` or a deployment installs
    assert str(requirement.specifier) == ">=" + act_operator_lib.__version__
    if extras:
        listed = ",".join(sorted(extras))
        assert f"Added act-operator-lib[{listed}] to the dependencies in pyproject.toml" in (
            result.stdout
        )
        assert f"pip install 'act-operator-lib[{listed}]'" in result.stdout
    else:
        assert "They need no extra beyond act-operator-lib." in result.stdout
        assert "pyproject.toml" not in result.stdout


def _act_operator_requirement(project: Path) -> Requirement:
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    found = [
        Requirement(text)
        for text in pyproject["project"]["dependencies"]
        if Requirement(text).name == "act-operator-lib"
    ]
    assert len(found) == 1, pyproject["project"]["dependencies"]
    return found[0]


def test_add_merges_extras_into_the_dependency_and_keeps_the_file_as_written(
    runner: CliRunner, project_copy: Path
) -> None:
    pyproject = project_copy / "pyproject.toml"
    before = pyproject.read_text()

    first = runner.invoke(app, ["cookbook", "add", "http_client", "--path", str(project_copy)])
    second = runner.invoke(app, ["cookbook", "add", "postgres", "--path", str(project_copy)])
    again = runner.invoke(app, ["cookbook", "add", "http_client", "--path", str(project_copy)])

    assert first.exit_code == second.exit_code == again.exit_code == 0
    after = pyproject.read_text()
    version = act_operator_lib.__version__
    assert after == before.replace(
        f'"act-operator-lib>={version}"', f'"act-operator-lib[http,postgres]>={version}"'
    )
    assert "Added act-operator-lib[postgres] to the dependencies" in second.stdout
    assert "already lists act-operator-lib[http]" in again.stdout


def test_a_refused_add_leaves_the_dependencies_alone(runner: CliRunner, project_copy: Path) -> None:
    assert (
        runner.invoke(app, ["cookbook", "add", "resources", "--path", str(project_copy)]).exit_code
        == 0
    )
    (project_copy / "src/my_agent/cookbook/resources.py").write_text("# mine\n")
    before = snapshot(project_copy)

    # postgres needs an extra and imports resources, whose copy was changed: refused whole.
    result = runner.invoke(app, ["cookbook", "add", "postgres", "--path", str(project_copy)])

    assert result.exit_code == 1
    assert "would overwrite src/my_agent/cookbook/resources.py" in result.stderr
    assert snapshot(project_copy) == before


def test_add_explains_a_project_whose_dependencies_lack_act_operator_lib(
    runner: CliRunner, project_copy: Path
) -> None:
    pyproject = project_copy / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(
        text.replace(f'    "act-operator-lib>={act_operator_lib.__version__}",\n', "")
    )

    result = runner.invoke(app, ["cookbook", "add", "http_client", "--path", str(project_copy)])

    assert result.exit_code == 0, result.output
    assert "act-operator-lib is not among the dependencies in pyproject.toml" in result.stdout
    assert "add act-operator-lib[http]" in result.stdout


@pytest.fixture(scope="module")
def project_with_every_recipe(
    generated_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the generated project with every recipe added, one `cookbook add` each."""
    runner = CliRunner()
    project = tmp_path_factory.mktemp("cookbook") / "my-agent"
    run("cp", "-r", generated_project, project, cwd=project.parent)
    for recipe in RECIPES:  # dependencies added earlier are identical: no clash
        result = runner.invoke(app, ["cookbook", "add", recipe, "--path", str(project)])
        assert result.exit_code == 0, result.output
    return project


@pytest.fixture(scope="module")
def example_results(
    project_with_every_recipe: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, object]]:
    """Each recipe's example run from the project's copy: its exit status and log."""
    logs = tmp_path_factory.mktemp("recipe-logs")
    output = run(
        sys.executable,
        Path(__file__).with_name("recipe_examples.py"),
        project_with_every_recipe / "src",
        "my_agent",
        logs,
        # Slowest first (those starting a PostgreSQL server), so the quick ones overlap them.
        *sorted(RECIPES, key=lambda recipe: "postgres" not in _third_party_extras(recipe)),
        cwd=project_with_every_recipe,
    )
    return {line["recipe"]: line for line in map(json.loads, output.splitlines())}


def test_project_with_every_recipe_passes_its_own_lint_and_tests(
    project_with_every_recipe: Path,
) -> None:
    # The project's Makefile targets, as its CI runs them, with this venv's ruff and python.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}

    run("make", "lint", cwd=project_with_every_recipe, env=env)
    output = run("make", "test", cwd=project_with_every_recipe, env=env)

    assert " passed" in output
    assert " failed" not in output
    requirement = _act_operator_requirement(project_with_every_recipe)
    every_extra = set().union(*(_third_party_extras(recipe) for recipe in RECIPES))
    assert set(requirement.extras) == every_extra


_IMPORT_WITHOUT_EXTRAS = """
import importlib, importlib.abc, json, sys

BLOCKED = {blocked!r}


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == module or name.startswith(module + ".") for module in BLOCKED):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
results = {{}}
for recipe in {recipes!r}:
    try:
        importlib.import_module(f"my_agent.cookbook.{{recipe}}")
        results[recipe] = None
    except ModuleNotFoundError as error:
        results[recipe] = [str(error), error.name]
print(json.dumps(results))
"""


def test_importing_a_copy_without_its_extra_names_the_extra_to_install(
    project_with_every_recipe: Path,
) -> None:
    script = _IMPORT_WITHOUT_EXTRAS.format(blocked=sorted(EXTRA_FOR_IMPORT), recipes=RECIPES)
    output = run(
        sys.executable,
        "-c",
        script,
        cwd=project_with_every_recipe,
        env={**os.environ, "PYTHONPATH": str(project_with_every_recipe / "src")},
    )
    results = json.loads(output)

    for recipe in RECIPES:
        own = _third_party_extras(recipe)
        needed = set().union(*(_third_party_extras(name) for name in _closure(recipe)))
        if not needed:
            assert results[recipe] is None, (recipe, results[recipe])
            continue
        assert results[recipe] is not None, f"{recipe} imported without {needed}"
        message, missing = results[recipe]
        assert missing in EXTRA_FOR_IMPORT, message  # the real missing module's name
        named = {extra for extra in needed if f"pip install 'act-operator-lib[{extra}]'" in message}
        assert named == own if own else named, (recipe, message)


@pytest.mark.parametrize("recipe", RECIPES)
def test_copied_recipe_example_runs_without_the_installed_cookbook(
    example_results: dict[str, dict[str, object]], recipe: str
) -> None:
    result = example_results[recipe]
    log = Path(str(result["log"])).read_text()

    assert result["status"] == 0, f"{recipe} example failed:\n{log[-4000:]}"
    assert log.strip(), f"{recipe} example printed nothing"


def test_add_refuses_to_overwrite_a_changed_copy_without_force(
    runner: CliRunner, project_copy: Path
) -> None:
    recipe = RECIPES[0]
    assert (
        runner.invoke(app, ["cookbook", "add", recipe, "--path", str(project_copy)]).exit_code == 0
    )
    copy = project_copy / "src" / "my_agent" / "cookbook" / f"{recipe}.py"
    original = copy.read_text()
    copy.write_text("# my local change\n")
    before = snapshot(project_copy)

    refused = runner.invoke(app, ["cookbook", "add", recipe, "--path", str(project_copy)])

    assert refused.exit_code == 1
    assert f"would overwrite src/my_agent/cookbook/{recipe}.py" in refused.stderr
    assert snapshot(project_copy) == before

    forced = runner.invoke(app, ["cookbook", "add", recipe, "--path", str(project_copy), "--force"])

    assert forced.exit_code == 0
    assert copy.read_text() == original


def test_add_rejects_an_unknown_recipe_and_writes_nothing(
    runner: CliRunner, project_copy: Path
) -> None:
    before = snapshot(project_copy)

    result = runner.invoke(app, ["cookbook", "add", "teleport", "--path", str(project_copy)])

    assert result.exit_code == 1
    assert "unknown cookbook recipe 'teleport'" in result.stderr
    assert snapshot(project_copy) == before


def test_add_outside_a_generated_project_writes_nothing(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'other'\n")

    result = runner.invoke(app, ["cookbook", "add", RECIPES[0], "--path", str(tmp_path)])

    assert result.exit_code == 1
    assert "is not inside a project generated by `act-operator new`" in result.stderr
    assert snapshot(tmp_path) == {"pyproject.toml": b"[project]\nname = 'other'\n"}


def test_copy_imports_are_regrouped_for_a_project_where_the_library_is_third_party() -> None:
    source = (
        '"""Doc."""\n\nfrom __future__ import annotations\n\nimport asyncio\n\n'
        "from langgraph.types import RetryPolicy\nfrom yarl import URL\n\n"
        "from act_operator_lib.base_node import AsyncBaseNode\n\n"
        "from .deadline import remaining\nfrom . import race\n\n"
        "X = 1\n\n\ndef main():\n    from my_agent.state import State\n\n"
        "    import aiohttp\n    # keep my comment\n    import abc\n"
    )

    arranged = arrange_imports(source, first_party="my_agent", guard_extras=["http"])

    assert arranged == (
        '"""Doc."""\n\nfrom __future__ import annotations\n\nimport asyncio\n\n'
        "try:\n    from yarl import URL\nexcept ModuleNotFoundError as error:\n"
        "    raise ModuleNotFoundError(\n"
        "        f\"{__name__} needs {error.name}: pip install 'act-operator-lib[http]'\",\n"
        "        name=error.name,\n    ) from error\n\n"
        "from act_operator_lib.base_node import AsyncBaseNode\n"
        "from langgraph.types import RetryPolicy\n\n"
        "from . import race\nfrom .deadline import remaining\n\n"
        "X = 1\n\n\ndef main():\n    from my_agent.state import State\n\n"
        "    import aiohttp\n    # keep my comment\n    import abc\n"
    )
    assert arrange_imports(arranged, first_party="my_agent") == arranged  # already in order
