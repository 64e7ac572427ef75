"""The README's first command: scaffold a demo project, then stream its graph end to end.

    act-operator demo                    # into a temporary directory, removed afterwards
    act-operator demo --path ./demo      # keep the project to read and change
    python -m act_operator_lib.demo

The project is exactly what ``act-operator new demo-agent`` generates; its answer node
streams from langchain-core's fake chat model, so this needs no API key and no network.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from act_operator_lib import metrics
from act_operator_lib._internal.scaffold import create_project

__all__ = ["run_demo"]

DEMO_NAME = "demo-agent"
NEXT_STEP_NAME = "my-agent"


def run_demo(path: Path | None = None) -> None:
    """Generate the demo project at ``path`` (or a temporary directory) and stream its graph."""
    if path is not None:
        _generate_and_stream(path)
        print(f"\nThe demo project stays in {path.absolute()}: read it, change it, run its tests.")
    else:
        with tempfile.TemporaryDirectory(prefix="act-operator-demo-") as parent:
            _generate_and_stream(Path(parent) / DEMO_NAME)
        print(
            f"\nRemoved the temporary folder {parent}"
            " (keep the project with `act-operator demo --path ./demo`)."
        )
    print(
        f"Next: act-operator new {NEXT_STEP_NAME}   # your own project, tests passing", flush=True
    )


def _generate_and_stream(target: Path) -> None:
    project = create_project(DEMO_NAME, target.parent, target=target, git=False)
    print(f"$ act-operator new {DEMO_NAME}  ->  {project.root}", flush=True)
    for file in sorted(project.package_dir.glob("*.py")):
        print(f"    {file.relative_to(project.root)}", flush=True)
    with _importable(project.root / "src", project.package):
        graph = importlib.import_module(f"{project.package}.graph").graph
        context = importlib.import_module(f"{project.package}.state").Context
        print(f"\n$ streaming {project.package}.graph (stream_mode=['updates', 'custom'])")
        with metrics.collecting():
            asyncio.run(_stream(graph, context(audience="act-operator-lib users")))
            print(f"\n$ per-node metrics\n{metrics.format_table()}", flush=True)


async def _stream(graph: Any, context: Any) -> None:
    tokens_open = False
    async for mode, chunk in graph.astream(
        {"question": "Why build LangGraph nodes as classes?"},
        {"configurable": {"thread_id": "demo"}},
        context=context,
        stream_mode=["updates", "custom"],
    ):
        if mode == "custom":
            if not tokens_open:
                print("[custom]  ", end="", flush=True)
                tokens_open = True
            print(chunk["token"], end="", flush=True)
            continue
        if tokens_open:
            print(flush=True)
            tokens_open = False
        for node, update in chunk.items():
            print(f"[updates] {node}: {update}", flush=True)


@contextmanager
def _importable(source_root: Path, package: str) -> Iterator[None]:
    """Make ``package`` importable from ``source_root`` for the block, then forget it."""
    sys.path.insert(0, str(source_root))
    try:
        yield
    finally:
        sys.path.remove(str(source_root))
        for module in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
            del sys.modules[module]


if __name__ == "__main__":
    run_demo(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
