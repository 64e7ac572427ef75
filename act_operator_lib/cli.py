"""The ``act-operator`` command: scaffold LangGraph projects, add nodes and cookbook recipes.

    act-operator new my-agent                 # ./my-agent, whose tests pass right away
    act-operator add node Summarise --async   # a node class and its test, in the project
    act-operator cookbook list                # recipes, one line each, with their extras
    act-operator cookbook add fanout          # the recipe (and what it imports) into the project
    act-operator update                       # merge a newer template into the project
    act-operator demo                         # scaffold a demo project and stream its graph

Every command runs without prompts, exits non-zero with a one-line reason on bad input,
and writes nothing when it fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "main"]

# Plain click help: flags read `--force`, not `--force <bool>`, and `-h` works everywhere.
_HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="act-operator",
    help="Scaffold LangGraph projects built from act-operator-lib class nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=_HELP,
)
add_app = typer.Typer(
    help="Add parts to a generated project.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_HELP,
)
cookbook_app = typer.Typer(
    help="Prebuilt async nodes to copy into a project.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=_HELP,
)
app.add_typer(add_app, name="add")
app.add_typer(cookbook_app, name="cookbook")


def _print_version(value: bool) -> None:
    if value:
        from act_operator_lib import __version__

        typer.echo(f"act-operator {__version__} (act-operator-lib)")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the act-operator-lib version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Scaffold LangGraph projects built from act-operator-lib class nodes."""


ProjectPath = Annotated[
    Path,
    typer.Option(
        "--path",
        help="The generated project (or a directory inside it).",
        file_okay=False,
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Overwrite files that differ.")]


@contextmanager
def _refusals() -> Iterator[None]:
    """Report a refusal or an OS error as ``error: ...`` on stderr and exit with status 1."""
    from act_operator_lib._internal.scaffold import ScaffoldError

    try:
        yield
    except (ScaffoldError, OSError) as error:  # OSError: e.g. a directory we may not write to
        typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None


@app.command(short_help="Generate a LangGraph project.")
def new(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Project name, e.g. my-agent (package my_agent).")
    ],
    path: Annotated[
        Path, typer.Option("--path", help="Directory to create the project in.", file_okay=False)
    ] = Path("."),
    git: Annotated[
        bool, typer.Option(help="Make the project a git repository (`update` needs one).")
    ] = True,
) -> None:
    """Generate a LangGraph project: nodes, graph, tests, langgraph.json."""
    import shutil

    from act_operator_lib._internal.scaffold import create_project

    with _refusals():
        project = create_project(name, path, git=git)
    typer.echo(f"Created {project.root} (package {project.package})")
    if git and shutil.which("git") is None:
        typer.secho(
            "warning: git is not on PATH, so the project is not a git repository and records"
            " no template version: `act-operator update` cannot merge later templates into"
            " it; install git and run `act-operator new` again to get both",
            err=True,
            fg=typer.colors.YELLOW,
        )
    typer.echo(
        f"Next:\n  cd {project.root}\n  pip install -e '.[dev]'\n  python -m pytest\n"
        "  cp .env.example .env   # API keys, once a node needs one\n  langgraph dev"
    )


@add_app.command("node", short_help="Add a node class and its test.")
def add_node(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="Node name, e.g. Summarise or summarise-text.")
    ],
    is_async: Annotated[
        bool, typer.Option("--async", help="An AsyncBaseNode (default: a BaseNode).")
    ] = False,
    path: ProjectPath = Path("."),
    force: Force = False,
) -> None:
    """Add a node class and its unit test to the project."""
    from act_operator_lib._internal import scaffold

    with _refusals():
        written = scaffold.add_node(path, name, is_async=is_async, force=force)
        class_name, _ = scaffold.node_names(name)
    for file in written:
        typer.echo(f"wrote {file}")
    typer.echo(f"Add it to the graph in graph.py: builder.add_node({class_name}())")


@app.command(short_help="Merge a newer project template in.")
def update(path: ProjectPath = Path(".")) -> None:
    """Merge this act-operator-lib's project template into the project (commit first).

    The template is rendered with the project's answers and committed as a pristine
    render whose parent is the last one the project took in (found in the project's own
    git history), then merged with `git merge`: your edits stay, the template's changes
    arrive, and a clean merge is committed. Conflicts are left marked in the files, the
    command exits 1 naming them; finish with `git add` and `git commit`, or undo with
    `git merge --abort`. Needs the project's full git history, nothing else.
    """
    from act_operator_lib._internal.scaffold import update_project

    with _refusals():
        outcome = update_project(path)
    if not outcome.changed:
        typer.echo(
            "Nothing changed: the project already matches the act-operator-lib"
            f" {outcome.version} template"
        )
        return
    if outcome.conflicts:
        typer.secho(
            f"error: the act-operator-lib {outcome.version} template conflicts with your edits"
            f" in {', '.join(outcome.conflicts)}: the rest is merged; resolve the conflict"
            " markers (<<<<<<< ... >>>>>>>) in those files, then `git add` them and"
            " `git commit` to finish the update, or undo it with `git merge --abort`",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    typer.echo(
        f"Updated to the act-operator-lib {outcome.version} template and committed the merge;"
        " review it with `git diff HEAD^1 HEAD`"
    )


@cookbook_app.command("list", short_help="List the recipes and their extras.")
def cookbook_list() -> None:
    """List the recipes, each with its one-line description and the extras it needs."""
    from act_operator_lib._internal.cookbook_index import find_recipes, needed_extras

    with _refusals():
        recipes = find_recipes()
        width = max((len(name) for name in recipes), default=0)
        for name, recipe in recipes.items():
            extras = needed_extras(recipes, [name])
            needs = f"  [extras: {', '.join(extras)}]" if extras else ""
            typer.echo(f"{name:<{width}}  {recipe.summary}{needs}")


@cookbook_app.command("show", short_help="Print a recipe's source.")
def cookbook_show(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="A recipe name.")],
) -> None:
    """Print a recipe's source."""
    from act_operator_lib._internal.cookbook_index import dependency_closure, find_recipes

    with _refusals():
        recipes = find_recipes()
        dependency_closure(recipes, [recipe])  # rejects unknown names with the list
        typer.echo(recipes[recipe].path.read_text(encoding="utf-8"), nl=False)


@cookbook_app.command("add", short_help="Copy recipes into the project.")
def cookbook_add(
    recipes: Annotated[list[str], typer.Argument(metavar="RECIPE", help="Recipe names.")],
    path: ProjectPath = Path("."),
    force: Force = False,
) -> None:
    """Copy recipes, and the recipes they import, into <package>/cookbook/."""
    from act_operator_lib._internal.cookbook_index import copy_recipes, find_recipes
    from act_operator_lib._internal.scaffold import find_project

    with _refusals():
        project = find_project(path)
        copy = copy_recipes(project, recipes, force=force, recipes=find_recipes())
    for file in copy.written:
        typer.echo(f"wrote {file}")
    modules = ", ".join(f"{project.package}.cookbook.{name}" for name in copy.recipes)
    typer.echo(f"Recipes in the project: {modules}")
    if not copy.extras:
        typer.echo("They need no extra beyond act-operator-lib.")
        return
    extras = f"act-operator-lib[{','.join(copy.extras)}]"
    if copy.requirement is None:
        typer.echo(
            "act-operator-lib is not among the dependencies in pyproject.toml (or is written"
            f" in a form this command does not edit): add {extras} there yourself"
        )
    elif copy.added:
        typer.echo(
            f"Added act-operator-lib[{','.join(copy.added)}] to the dependencies in"
            f" pyproject.toml (now {copy.requirement!r}), so `langgraph build` and"
            " deployments install what the recipes import"
        )
    else:
        typer.echo(f"pyproject.toml already lists {extras} ({copy.requirement!r})")
    typer.echo(f"Install them here: pip install -e . (or pip install '{extras}')")


@app.command(short_help="Scaffold a demo project and stream it.")
def demo(
    path: Annotated[
        Path | None,
        typer.Option(
            "--path", help="Where to generate the demo project (default: a temporary directory)."
        ),
    ] = None,
) -> None:
    """Scaffold a demo project and stream its graph: no API key, no network."""
    from act_operator_lib.demo import run_demo

    with _refusals():
        run_demo(path)


def main() -> None:
    """The console script's entry point."""
    app()


if __name__ == "__main__":
    main()
