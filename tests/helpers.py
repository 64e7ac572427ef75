"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any


async def other_tasks_after(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks still alive that were not there before, after letting cancellations settle."""
    for _ in range(100):
        if not asyncio.all_tasks() - before:
            break
        await asyncio.sleep(0.01)
    return asyncio.all_tasks() - before


def run_example(module: str, *, timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """Run ``python -W error -m act_operator_lib.cookbook.<module>``; its stdout (fails on exit != 0)."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", f"act_operator_lib.cookbook.{module}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
        env=env,
    ).stdout
