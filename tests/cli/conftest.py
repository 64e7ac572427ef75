"""One generated project and one venv with it installed, shared by the CLI tests.

Generating, installing and serving are the slow parts, so each happens once per session;
tests that change a project work on a copy (``project_copy``).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACT_OPERATOR = BIN / "act-operator"
"""The real console script pip installed for this checkout."""


@pytest.fixture(scope="session", autouse=True)
def _installed_template() -> Iterator[None]:
    """Every test renders the installed template unless it points at another on purpose."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("ACT_OPERATOR_TEMPLATE_DIR", raising=False)
        yield


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def complete(
    *command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, whatever its exit status, capturing its output as text."""
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to completion; fail the test with its output when it fails."""
    result = complete(*command, cwd=cwd, env=env)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode} in {cwd}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result.stdout


@pytest.fixture(scope="session")
def generated_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``act-operator new my-agent``, through the real console script."""
    parent = tmp_path_factory.mktemp("generated")
    output = run(ACT_OPERATOR, "new", "my-agent", "--path", parent, cwd=parent)
    assert "Created" in output
    return parent / "my-agent"


@pytest.fixture(scope="session")
def project_python(generated_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv's python with the generated project installed (``pip install -e``).

    The venv sees this checkout's packages through a .pth file instead of reinstalling
    them, so this checkout's act-operator-lib is the one the project uses and nothing is
    downloaded; the project itself is installed for real, editable, with pip.
    """
    venv = tmp_path_factory.mktemp("project-venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    site_packages = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv
        ).strip()
    )
    checkout_site = Path(
        next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    )
    (site_packages / "act_operator_checkout.pth").write_text(
        f"import site; site.addsitedir({str(checkout_site)!r})\n"
    )
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-build-isolation", "-e", generated_project,
        cwd=venv,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    return python


@pytest.fixture
def project_copy(generated_project: Path, tmp_path: Path) -> Path:
    """A private copy of the generated project, for tests that change it."""
    copy = tmp_path / "my-agent"
    shutil.copytree(generated_project, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its content: to prove nothing was written."""
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def count_tests(project: Path) -> int:
    """How many test functions a project's tests/ defines: what its pytest run must pass."""
    return sum(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
        for path in (project / "tests").rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
    )
