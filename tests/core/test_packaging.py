"""The built wheel: minimal requirements, no generic top-level names, cookbook and templates inside."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("act_operator_lib-*.whl")
    return built


def test_only_act_operator_lib_is_installed_at_the_top_level(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"act_operator_lib"}


def test_cookbook_templates_and_typing_marker_ship_inside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    recipes = {p.name for p in (ROOT / "cookbook").glob("*.py")}
    assert {f"act_operator_lib/cookbook/{name}" for name in recipes} <= names
    templates = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "templates").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert {f"act_operator_lib/{path}" for path in templates} <= names
    assert "act_operator_lib/templates/project/template/.gitignore.jinja" in names
    assert "act_operator_lib/py.typed" in names


def test_required_dependencies_are_only_langgraph_and_langchain_core(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    required = {
        req.split(">")[0].split("<")[0].split("=")[0].strip()
        for req in headers.get_all("Requires-Dist") or []
        if "extra ==" not in req
    }
    assert required == {"langgraph", "langchain-core"}
    assert {"http", "postgres", "files", "metrics", "cli"} <= set(headers.get_all("Provides-Extra"))


def test_an_installed_copy_lists_recipes_and_scaffolds(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(target),
        "ACT_OPERATOR_TEMPLATE_HISTORY": str(tmp_path / "h"),
    }

    def run(*args: str) -> str:
        return subprocess.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    where = run("-c", "import act_operator_lib.cookbook.fanout as m; print(m.__file__)")
    assert where.startswith(str(target))
    assert "fanout" in run("-m", "act_operator_lib.cli", "cookbook", "list")
    run("-m", "act_operator_lib.cli", "new", "shipped", "--path", str(tmp_path), "--no-git")
    assert (tmp_path / "shipped" / "src" / "shipped" / "graph.py").is_file()
