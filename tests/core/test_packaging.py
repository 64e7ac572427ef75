"""The built sdist and wheel: no warnings, minimal requirements, no generic top-level names,
every recipe and template file inside act_operator_lib, one version, and a working install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
SOURCE_VERSION = re.search(
    r'^__version__ = "([^"]+)"$', (ROOT / "act_operator_lib" / "__init__.py").read_text(), re.M
)


def _shipped(folder: str) -> set[str]:
    """Every file under the repository's ``folder`` that an install must carry."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(wheel, sdist, build output): the sdist, then the wheel built from that sdist.

    --no-isolation builds with the hatchling of the dev extra, so no download is needed.
    """
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("act_operator_lib-*.whl")
    (sdist,) = out.glob("act_operator_lib-*.tar.gz")
    return wheel, sdist, done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(built: tuple[Path, Path, str]) -> Path:
    return built[0]


def test_the_build_prints_no_warning(built: tuple[Path, Path, str]) -> None:
    output = built[2]
    assert "warning" not in output.lower(), output
    assert "Successfully built" in output


def test_the_version_is_written_once_in_act_operator_lib(wheel: Path) -> None:
    assert SOURCE_VERSION is not None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    questions = yaml.safe_load((ROOT / "templates" / "project" / "copier.yml").read_text())
    assert "default" not in questions["act_operator_lib_version"]
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(archive.read(metadata).decode())
    assert headers["Version"] == SOURCE_VERSION.group(1)


def test_only_act_operator_lib_is_installed_at_the_top_level(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert {name for name in top if not name.endswith(".dist-info")} == {"act_operator_lib"}


def test_cookbook_templates_and_typing_marker_ship_inside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    recipes = {p.name for p in (ROOT / "cookbook").glob("*.py")}
    assert {f"act_operator_lib/cookbook/{name}" for name in recipes} <= names
    assert {f"act_operator_lib/{path}" for path in _shipped("templates")} <= names
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


def _fresh_venv(where: Path) -> Path:
    """A new venv without pip whose dependencies come from this one: offline and fast.

    A .pth line puts this environment's site-packages after the new one's, so langgraph,
    copier and pip import without a download; act-operator-lib itself is only the copy
    installed into the new venv (this environment's editable install is a .pth of its
    own, which a plain path entry does not run).
    """
    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "_dev_dependencies.pth").write_text(ours + "\n")
    return Path(purelib)


@pytest.mark.slow
@pytest.mark.parametrize("artifact", ["wheel", "sdist"])
def test_a_fresh_venv_installs_every_file_and_act_operator_new_works(
    built: tuple[Path, Path, str], artifact: str, tmp_path: Path
) -> None:
    wheel, sdist, _ = built
    env_dir = tmp_path / "venv"
    site = _fresh_venv(env_dir)
    python = env_dir / "bin" / "python"
    # --ignore-installed: never touch the editable install this environment also sees.
    installed = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--ignore-installed",
            "--disable-pip-version-check",
            str(wheel if artifact == "wheel" else sdist),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = installed.stdout + installed.stderr
    assert installed.returncode == 0, output
    assert "warning" not in output.lower(), output

    package = site / "act_operator_lib"
    found = {
        p.relative_to(package).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert _shipped("cookbook") | _shipped("templates") <= found
    assert "templates/project/template/.env.example" in found
    assert "templates/project/template/.github/workflows/ci.yml" in found

    env = dict(os.environ)
    env.pop("PYTHONPATH", None)

    def run(*args: str | Path) -> str:
        done = subprocess.run(
            [str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    where = run(python, "-c", "import act_operator_lib.cookbook.fanout as m; print(m.__file__)")
    assert Path(where.strip()) == package / "cookbook" / "fanout.py"
    assert "fanout" in run(env_dir / "bin" / "act-operator", "cookbook", "list")
    run(env_dir / "bin" / "act-operator", "new", "shipped", "--path", tmp_path, "--no-git")
    project = tmp_path / "shipped"
    assert (project / "src" / "shipped" / "graph.py").is_file()
    assert (project / ".env.example").is_file()
    assert (project / ".github" / "workflows" / "ci.yml").is_file()
    assert SOURCE_VERSION is not None
    assert (
        f"act-operator-lib>={SOURCE_VERSION.group(1)}" in (project / "pyproject.toml").read_text()
    )
