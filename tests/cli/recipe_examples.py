"""Run the ``__main__`` examples of recipes copied into a generated project, each in its own fork.

    python tests/cli/recipe_examples.py PROJECT_SRC PACKAGE LOG_DIR RECIPE...

Prints one JSON line per recipe: ``{"recipe": ..., "status": ..., "log": ...}``. The
heavy imports happen once, before forking, so a dozen examples take seconds, and every
example still runs in a fresh process (its own event loop, signals, cwd). Importing
``act_operator_lib.cookbook`` fails here: the copies must work without it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import json
import os
import runpy
import signal
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE_TIMEOUT = 90
PARALLEL = 3


class _NoInstalledCookbook(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "act_operator_lib.cookbook" or name.startswith("act_operator_lib.cookbook."):
            raise ImportError(f"{name} is blocked: a copied recipe must not need it")
        return None


def _warm_up() -> None:
    for module in ("langgraph.graph", "langchain_core.language_models", "aiohttp", "asyncpg"):
        with contextlib.suppress(ImportError):  # an extra that is not installed
            importlib.import_module(module)


def _run_child(module: str, log_path: Path) -> None:
    with open(log_path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child exits right after
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    os.chdir(tempfile.mkdtemp(prefix="recipe-example-"))
    signal.alarm(EXAMPLE_TIMEOUT)
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    source, package, log_dir, *recipes = sys.argv[1:]
    sys.path.insert(0, source)
    sys.meta_path.insert(0, _NoInstalledCookbook())
    _warm_up()
    # A few at a time: most examples wait on servers and sleeps, not on the CPU.
    running: dict[int, tuple[str, float]] = {}
    pending = list(reversed(recipes))
    while pending or running:
        while pending and len(running) < PARALLEL:
            recipe = pending.pop()
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(f"{package}.cookbook.{recipe}", Path(log_dir) / f"{recipe}.log")
            running[pid] = (recipe, time.monotonic())
        pid, status = os.wait()
        recipe, started = running.pop(pid)
        line = {
            "recipe": recipe,
            "status": status,
            "seconds": round(time.monotonic() - started, 2),
            "log": str(Path(log_dir) / f"{recipe}.log"),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
