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
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from act_operator_lib._internal.scaffold import Project, ScaffoldError, write_files

__all__ = [
    "EXTRA_FOR_IMPORT",
    "Recipe",
    "RecipeCopy",
    "add_extras_to_dependencies",
    "arrange_imports",
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


# Modules a generated project always has (act-operator-lib's own requirements): a copy's
# imports of anything else belong to an extra and go behind the guard naming it.
_BASE_MODULES = frozenset(
    {"act_operator_lib", "langgraph", "langchain_core", "pydantic", "typing_extensions"}
)
_DISTRIBUTION = "act-operator-lib"


class RecipeCopy(NamedTuple):
    """What ``copy_recipes`` did."""

    recipes: list[str]
    """The recipes copied: those asked for and every recipe they import, sorted."""
    written: list[Path]
    """The files written (identical copies are skipped), pyproject.toml included."""
    extras: list[str]
    """The extras the recipes need, sorted."""
    added: list[str]
    """Those extras newly added to the project's act-operator-lib dependency."""
    requirement: str | None
    """The act-operator-lib dependency after the copy; None when pyproject.toml has none."""


def copy_recipes(
    project: Project,
    names: Iterable[str],
    *,
    force: bool = False,
    recipes: Mapping[str, Recipe] | None = None,
) -> RecipeCopy:
    """Copy recipes and their dependencies into ``<package>/cookbook/``.

    ``recipes`` is the index to copy from (default: ``find_recipes()``). Each copy's imports
    are made relative, sorted for the project's ruff, and its optional third-party imports
    put behind a guard naming the extra to install; the extras are added to the project's
    ``act-operator-lib`` dependency in ``pyproject.toml``. Returns a ``RecipeCopy``
    (it used to return ``(recipes, written)``).
    """
    recipes = find_recipes() if recipes is None else recipes
    closure = dependency_closure(recipes, names)
    extras = needed_extras(recipes, closure)
    package = Path("src") / project.package / "cookbook"
    files: dict[Path, bytes] = {}
    init = project.root / package / "__init__.py"
    if not init.exists():
        files[package / "__init__.py"] = (
            b'"""Recipes copied from the act-operator-lib cookbook'
            b' (`act-operator cookbook add`)."""\n'
        )
    for name in closure:
        source = localise_imports(recipes[name].path.read_text(encoding="utf-8"))
        copy = arrange_imports(
            source, first_party=project.package, guard_extras=sorted(recipes[name].extras)
        )
        files[package / f"{name}.py"] = copy.encode("utf-8")
    pyproject = project.root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    updated, requirement, added = add_extras_to_dependencies(text, extras)
    written = write_files(project.root, files, force=force)
    if updated != text:
        # The project's own file: edited in place, never a clash to refuse.
        written += write_files(project.root, {Path("pyproject.toml"): updated.encode()}, force=True)
    return RecipeCopy(closure, written, extras, added, requirement)


def add_extras_to_dependencies(
    text: str, extras: Iterable[str]
) -> tuple[str, str | None, list[str]]:
    """Add ``extras`` to the ``act-operator-lib`` requirement of a pyproject.toml's text.

    Returns the new text (only that requirement's string changes), the requirement after
    the change (None when the project does not list act-operator-lib) and the extras added.
    """
    try:
        dependencies = tomllib.loads(text).get("project", {}).get("dependencies", [])
    except tomllib.TOMLDecodeError as error:
        raise ScaffoldError(f"pyproject.toml is not valid TOML: {error}") from None
    for entry in dependencies if isinstance(dependencies, list) else []:
        try:
            requirement = Requirement(entry)
        except (InvalidRequirement, TypeError):
            continue
        if canonicalize_name(requirement.name) != _DISTRIBUTION:
            continue
        added = sorted(set(extras) - requirement.extras)
        if not added:
            return text, entry, []
        requirement.extras |= set(added)
        new_entry = _format_requirement(requirement)
        quoted = [f'"{entry}"', f"'{entry}'"]
        matches = [q for q in quoted if q in text]
        if len(matches) != 1 or text.count(matches[0]) != 1:
            return text, None, []  # written in a way we cannot edit safely: say so instead
        quote = matches[0][0]
        return text.replace(matches[0], f"{quote}{new_entry}{quote}"), new_entry, added
    return text, None, []


def _format_requirement(requirement: Requirement) -> str:
    """A requirement as a user writes it: ``act-operator-lib[http,postgres]>=0.1.0``."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    if requirement.url:
        text = f"{requirement.name}{extras} @ {requirement.url}"
    else:
        text = f"{requirement.name}{extras}{requirement.specifier}"
    if requirement.marker is not None:
        text += f"{' ' if requirement.url else ''}; {requirement.marker}"
    return text


# --- import layout of a copy ------------------------------------------------------------


_SECTIONS = ("future", "stdlib", "third-party", "first-party", "local")


def _section(statement: ast.Import | ast.ImportFrom, first_party: str) -> str:
    if isinstance(statement, ast.ImportFrom) and statement.level > 0:
        return "local"
    module = (
        statement.module or "" if isinstance(statement, ast.ImportFrom) else statement.names[0].name
    )
    top = module.split(".")[0]
    if top == "__future__":
        return "future"
    if top in sys.stdlib_module_names:
        return "stdlib"
    return "first-party" if top == first_party else "third-party"


def _sort_key(statement: ast.Import | ast.ImportFrom) -> tuple[int, int, str, str]:
    # ruff's isort defaults: `import x` before `from x import y` within a section, modules
    # compared case-insensitively, relative imports from the furthest package first.
    if isinstance(statement, ast.Import):
        module = statement.names[0].name
        return (0, 0, module.lower(), module)
    module = statement.module or ""
    return (1, -statement.level, module.lower(), module)


def _needs_extra(statement: ast.Import | ast.ImportFrom) -> bool:
    """Whether an import is of a module no act-operator-lib install without extras has."""
    if isinstance(statement, ast.ImportFrom):
        if statement.level > 0:
            return False
        modules = [statement.module or ""]
    else:
        modules = [alias.name for alias in statement.names]
    for module in modules:
        if any(module == prefix or module.startswith(f"{prefix}.") for prefix in EXTRA_FOR_IMPORT):
            return True
        top = module.split(".")[0]
        if top not in sys.stdlib_module_names and top not in _BASE_MODULES and top != "__future__":
            return True
    return False


def arrange_imports(source: str, *, first_party: str, guard_extras: Sequence[str] = ()) -> str:
    """Lay out every import block of ``source`` the way the project's ruff (isort) wants it.

    In the cookbook ``act_operator_lib`` is first-party; in a project it is third-party,
    so the copy's blocks are regrouped: ``__future__``, stdlib, third-party, the project
    (``first_party``), relative. With ``guard_extras`` the module-level block's imports
    that need them go into ``try: ... except ModuleNotFoundError`` naming the extra, placed
    right after the stdlib imports so it runs before anything else can fail. Statements
    are kept verbatim; a block with a comment line inside is left as it is.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    replacements: list[tuple[int, int, list[str]]] = []
    for body, top_level in _statement_lists(tree):
        for block in _import_runs(body):
            layout = _layout_block(block, lines, first_party, guard_extras if top_level else ())
            if layout is not None:
                replacements.append((block[0].lineno - 1, _end(block[-1]), layout))
    for start, end, layout in sorted(replacements, reverse=True):
        lines[start:end] = layout
    return "".join(lines)


def _end(statement: ast.stmt) -> int:
    return statement.end_lineno or statement.lineno


def _statement_lists(tree: ast.Module) -> Iterable[tuple[list[ast.stmt], bool]]:
    """Every list of statements in the module (bodies, else and handler blocks)."""
    yield tree.body, True
    for node in ast.walk(tree):
        if node is tree:
            continue
        for field in ("body", "orelse", "finalbody", "handlers"):
            value = getattr(node, field, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                yield value, False


def _import_runs(body: list[ast.stmt]) -> Iterable[list[ast.Import | ast.ImportFrom]]:
    run: list[ast.Import | ast.ImportFrom] = []
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            run.append(statement)
            continue
        if run:
            yield run
        run = []
    if run:
        yield run


def _layout_block(
    block: list[ast.Import | ast.ImportFrom],
    lines: list[str],
    first_party: str,
    guard_extras: Sequence[str],
) -> list[str] | None:
    indent = lines[block[0].lineno - 1][: block[0].col_offset]
    covered: set[int] = set()
    texts: dict[int, list[str]] = {}
    for statement in block:
        rows = range(statement.lineno - 1, _end(statement))
        if covered.intersection(rows) or statement.col_offset != len(indent):
            return None  # two statements on one line: leave the block alone
        covered.update(rows)
        texts[id(statement)] = [line.removeprefix(indent) for line in lines[rows.start : rows.stop]]
    span = range(block[0].lineno - 1, _end(block[-1]))
    if any(lines[row].strip() for row in span if row not in covered):
        return None  # a comment between imports belongs where the author put it
    guarded = [s for s in block if guard_extras and _needs_extra(s)]
    sections: dict[str, list[ast.Import | ast.ImportFrom]] = {name: [] for name in _SECTIONS}
    for statement in block:
        if statement not in guarded:
            sections[_section(statement, first_party)].append(statement)

    def render(statements: list[ast.Import | ast.ImportFrom], prefix: str) -> list[str]:
        ordered = sorted(statements, key=_sort_key)
        return [prefix + row for s in ordered for row in texts[id(s)]]

    groups = [render(sections[name], indent) for name in ("future", "stdlib")]
    if guarded:
        groups.append(_guard(render(guarded, indent + "    "), indent, guard_extras))
    groups += [render(sections[name], indent) for name in ("third-party", "first-party", "local")]
    layout: list[str] = []
    for group in filter(None, groups):
        if layout:
            layout.append("\n")
        layout += group
    return layout


def _guard(imports: list[str], indent: str, extras: Sequence[str]) -> list[str]:
    """``imports`` inside a try whose except names the extra that installs them."""
    extra = f"{_DISTRIBUTION}[{','.join(extras)}]"
    return [
        f"{indent}try:\n",
        *imports,
        f"{indent}except ModuleNotFoundError as error:\n",
        f"{indent}    raise ModuleNotFoundError(\n",
        f"{indent}        f\"{{__name__}} needs {{error.name}}: pip install '{extra}'\",\n",
        f"{indent}        name=error.name,\n",
        f"{indent}    ) from error\n",
    ]
