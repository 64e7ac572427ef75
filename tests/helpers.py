"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
from typing import Any


async def other_tasks_after(before: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks still alive that were not there before, after letting cancellations settle."""
    for _ in range(100):
        if not asyncio.all_tasks() - before:
            break
        await asyncio.sleep(0.01)
    return asyncio.all_tasks() - before
