"""The cookbook as ``act-operator cookbook`` sees it: recipes read with ``ast``, never imported.

    recipes = find_recipes()                    # {"fanout": Recipe(...), ...}
    recipes["race"].summary, needed_extras(recipes, ["race"])
    copy_recipes(project, ["race"])             # race.py and deadline.py into <package>/cookbook/

A recipe is every non-underscore module of ``act_operator_lib.cookbook``, found when asked,
so recipes added later show up with no list to maintain. Recipes import each other only
relatively (``from .deadline import remaining``), which keeps a copy working once it sits
in the project's own ``cookbook`` package; absolute ``act_operator_lib.cookbook`` imports
are rewritten to relative ones on the way.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from act_operator_lib._internal.scaffold import Project, ScaffoldError, write_files

__all__ = [
    "EXTRA_FOR_IMPORT",
    "Recipe",
    "copy_recipes",
    "dependency_closure",
    "find_recipes",
    "needed_extras",
]

_COOKBOOK = "act_operator_lib.cookbook"

EXTRA_FOR_IMPORT: Mapping[str, str] = {
    "aiohttp": "http",
    "asyncpg": "postgres",
    "psycopg": "postgres",
    "langgraph.checkpoint.postgres": "postgres",
    "aiofiles": "files",
    "prometheus_client": "metrics",
    "redis": "redis",
}
"""Which act-operator-lib extra installs a third-party import (dotted prefixes match)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """One cookbook module, as read from its source."""

    name: str
    """The module name: ``act-operator cookbook add NAME``."""
    path: Path
    """Its source file."""
    summary: str
    """The first line of its docstring."""
    recipes: frozenset[str]
    """The other recipes it imports."""
    extras: frozenset[str]
    """The act-operator-lib extras its own third-party imports need."""


def cookbook_dir() -> Path:
    """The installed cookbook package's directory (the repo's ``cookbook/`` when editable)."""
    spec = importlib.util.find_spec(_COOKBOOK)
    if spec is None or not spec.submodule_search_locations:
        raise ScaffoldError(f"the {_COOKBOOK} package is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def find_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    """Every recipe in the cookbook, by name, sorted."""
    directory = directory or cookbook_dir()
    recipes: dict[str, Recipe] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        recipes[path.stem] = read_recipe(path)
    return recipes


def read_recipe(path: Path) -> Recipe:
    """Parse one recipe module for its summary, the recipes it imports and its extras."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise ScaffoldError(f"cookbook recipe {path} does not parse: {error}") from None
    docstring = ast.get_docstring(tree) or ""
    summary = docstring.strip().splitlines()[0].strip() if docstring.strip() else "(no docstring)"
    recipes: set[str] = set()
    extras: set[str] = set()
    for node in ast.walk(tree):
        for module in _imported_modules(node):
            if module.startswith("."):
                recipes.add(module[1:].split(".")[0])
            elif module == _COOKBOOK or module.startswith(f"{_COOKBOOK}."):
                recipes.add(module.removeprefix(f"{_COOKBOOK}.").split(".")[0])
            else:
                extras.update(
                    extra
                    for prefix, extra in EXTRA_FOR_IMPORT.items()
                    if module == prefix or module.startswith(f"{prefix}.")
                )
    recipes.discard("")
    recipes.discard(_COOKBOOK.rsplit(".", 1)[-1])
    recipes.discard(path.stem)
    return Recipe(path.stem, path, summary, frozenset(recipes), frozenset(extras))


def _imported_modules(node: ast.AST) -> Iterable[str]:
    """Dotted names an import statement brings in; a leading '.' marks a sibling recipe."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        module = node.module or ""
        if module == _COOKBOOK:  # from act_operator_lib.cookbook import deadline
            return [f"{_COOKBOOK}.{alias.name}" for alias in node.names]
        return [module]
    if node.level == 1:
        if node.module:  # from .deadline import remaining
            return [f".{node.module}"]
        return [f".{alias.name}" for alias in node.names]  # from . import deadline
    return []  # beyond the cookbook package: not a recipe


def dependency_closure(recipes: Mapping[str, Recipe], names: Iterable[str]) -> list[str]:
    """``names`` and every recipe they import, transitively, sorted; unknown names raise."""
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in wanted:
            continue
        if name not in recipes:
            raise ScaffoldError(
                f"unknown cookbook recipe {name!r}; available: {', '.join(recipes) or 'none'}"
            )
        wanted.add(name)
        pending.extend(recipes[name].recipes)
    return sorted(wanted)


def needed_extras(recipes: Mapping[str, Recipe], names: Iterable[str]) -> list[str]:
    """The extras ``names`` and the recipes they import need, sorted."""
    return sorted(
        {extra for name in dependency_closure(recipes, names) for extra in recipes[name].extras}
    )


def localise_imports(source: str) -> str:
    """Rewrite absolute ``act_operator_lib.cookbook`` imports in ``source`` to relative ones.

    A plain ``import act_operator_lib.cookbook.x`` has no relative form: ScaffoldError.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == _COOKBOOK or alias.name.startswith(f"{_COOKBOOK}."):
                    raise ScaffoldError(
                        f"line {node.lineno}: `import {alias.name}` cannot be made relative,"
                        " so the copy would need the installed cookbook; write"
                        " `from act_operator_lib.cookbook import ...` or a relative import"
                    )
    lines = source.splitlines(keepends=True)
    # Edit from the end so earlier positions stay valid.
    edits = sorted(
        (
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and (node.module == _COOKBOOK or node.module.startswith(f"{_COOKBOOK}."))
        ),
        key=lambda node: (node.lineno, node.col_offset),
        reverse=True,
    )
    for node in edits:
        assert node.module is not None
        line = lines[node.lineno - 1]
        start = line.index(node.module, node.col_offset)
        relative = "." + node.module.removeprefix(_COOKBOOK).removeprefix(".")
        lines[node.lineno - 1] = line[:start] + relative + line[start + len(node.module) :]
    return "".join(lines)


def copy_recipes(
    project: Project,
    names: Iterable[str],
    *,
    force: bool = False,
    recipes: Mapping[str, Recipe] | None = None,
) -> tuple[list[str], list[Path]]:
    """Copy recipes and their dependencies into ``<package>/cookbook/``.

    ``recipes`` is the index to copy from (default: ``find_recipes()``). Returns the recipes
    involved and the files written (identical copies are skipped).
    """
    recipes = find_recipes() if recipes is None else recipes
    closure = dependency_closure(recipes, names)
    package = Path("src") / project.package / "cookbook"
    files: dict[Path, bytes] = {}
    init = project.root / package / "__init__.py"
    if not init.exists():
        files[package / "__init__.py"] = (
            b'"""Recipes copied from the act-operator-lib cookbook'
            b' (`act-operator cookbook add`)."""\n'
        )
    for name in closure:
        source = recipes[name].path.read_text(encoding="utf-8")
        files[package / f"{name}.py"] = localise_imports(source).encode("utf-8")
    return closure, write_files(project.root, files, force=force)
