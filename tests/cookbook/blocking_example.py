# ruff: noqa: ASYNC251 - blocking on the loop is what these check
"""A stand-in recipe whose ``__main__`` example blocks its event loop (for test_blocking_guard)."""

from __future__ import annotations

import asyncio
import time


async def main() -> None:
    time.sleep(0.01)  # the blocking call the guard must refuse
    print("slept on the loop")


if __name__ == "__main__":
    asyncio.run(main())
