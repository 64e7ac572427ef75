"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
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


async def cancel_after_first_chunk(stream: AsyncIterator[Any]) -> list[Any]:
    """Read ``stream`` in a task and cancel the task once a chunk arrived; the chunks read.

    Fails if no chunk comes within 10 s, or if the stream ends or fails instead of being
    cancelled.
    """
    received: list[Any] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk)
            first.set()

    run = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    run.cancel()
    try:
        await run
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the test itself is being cancelled
        return received
    raise AssertionError(
        f"the stream ended after {len(received)} chunks instead of being cancelled"
    )
