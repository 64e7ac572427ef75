#!/usr/bin/env python3
"""Project tasks that need nothing but Python 3.11 and pip.

    python3 dev.py demo         # the main job: scaffold a demo project and stream its graph
    python3 dev.py test [ARGS]  # ruff, mypy and the whole pytest suite (ARGS go to pytest)
    python3 dev.py bench        # every benchmarks/bench_*.py
    python3 dev.py setup        # only create .venv/ and install

Each creates .venv/ and installs the project with its dev extras on first use (again
whenever pyproject.toml changes).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
# OpenTelemetry's aiohttp and asyncpg instrumentations, which the tracing tests run with.
# Their newest release pins opentelemetry-semantic-conventions one pre-release behind the
# one langgraph-cli[inmem] needs, so pip's resolver refuses the pair; both import and run
# with the newer one, so they are installed without their pins (--no-deps) after the rest.
UNPINNED = (
    "opentelemetry-instrumentation-aiohttp-client==0.66b1",
    "opentelemetry-instrumentation-asyncpg==0.66b1",
    "opentelemetry-util-http==0.66b1",  # the aiohttp-client instrumentation's helper
)


def run(*cmd: str | Path, check: bool = True) -> int:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, check=check).returncode


def install(python: Path, *args: str) -> None:
    """pip install, silent unless it fails (then its whole output, to see why)."""
    cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"dev.py: `{' '.join(cmd)}` failed (exit {done.returncode})")


def ensure_venv() -> Path:
    python = BIN / "python"
    stamp = VENV / ".installed"
    pyproject = (ROOT / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(pyproject + "\n".join(UNPINNED).encode()).hexdigest()
    if not python.exists() or not stamp.exists() or stamp.read_text() != digest:
        # The only slow step, so it is the only one that talks: later runs say nothing.
        if python.exists():
            what = "pyproject.toml changed: reinstalling act-operator-lib[dev] into .venv/"
        else:
            what = "first run: creating .venv/ and installing act-operator-lib[dev] into it"
        print(
            f"dev.py: {what} (2-3 minutes on a fresh machine, seconds with a warm pip cache)...",
            flush=True,
        )
        started = time.monotonic()
        if not python.exists():
            venv.create(VENV, with_pip=True)
            install(python, "--upgrade", "pip")
        install(python, "-e", ".[dev]")
        install(python, "--no-deps", *UNPINNED)
        stamp.write_text(digest)
        print(f"dev.py: .venv/ ready ({time.monotonic() - started:.0f}s)", flush=True)
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    os.environ["VIRTUAL_ENV"] = str(VENV)
    return python


def ensure_servers() -> None:
    """The tests start their own PostgreSQL and Redis; install the server binaries where missing."""
    missing = []
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        missing.append("postgresql")
    if not shutil.which("redis-server"):
        missing.append("redis-server")
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        run("apt-get", "update", "-q")
        run("apt-get", "install", "-y", "-q", *missing)
    else:
        sys.exit(f"server binaries are needed for the tests: install the packages {missing}")


def main() -> int:
    task, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if task not in ("demo", "test", "bench", "setup"):
        sys.exit(__doc__)
    python = ensure_venv()
    if task == "setup":
        return 0
    if task == "demo":
        return run(BIN / "act-operator", "demo", *args, check=False)
    if task == "bench":
        for bench in sorted(ROOT.glob("benchmarks/bench_*.py")):
            print(f"# {bench.name}", flush=True)
            run(python, bench)
        return 0
    ensure_servers()
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")
    return run(python, "-m", "pytest", *args, check=False)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
