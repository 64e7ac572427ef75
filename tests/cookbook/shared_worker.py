"""One worker process of the shared-state tests: runs a compiled graph against one Redis.

    python -m tests.cookbook.shared_worker MODE REDIS_URL START_AT LOG [ARGS...]

Every worker waits until the wall-clock time ``START_AT`` so that several processes really
run at once, then appends one line per event to ``LOG`` (``O_APPEND`` writes of one line
are atomic, so workers never interleave within a line) and prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, TypedDict

from act_operator_lib.cookbook.cache import AsyncCache, CachedNode, CacheSettings
from act_operator_lib.cookbook.redis_backend import RedisBackend
from langgraph.graph import START, StateGraph


class State(TypedDict, total=False):
    key: str
    value: str


def log_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def cache_mode(url: str, log: str, callers: int, load_seconds: float, crash: bool) -> Any:
    shared = RedisBackend(url)
    cache: AsyncCache[dict[str, Any]] = AsyncCache(
        CacheSettings(ttl=60, name="geo", lock_timeout=2.0), shared=shared
    )

    async def geocode(state: State) -> dict[str, Any]:
        log_line(log, f"load {os.getpid()}")
        await asyncio.sleep(load_seconds)
        if crash:
            os._exit(3)  # dies mid-load, holding the lock
        return {"value": f"{state['key']}@{os.getpid()}"}

    builder = StateGraph(State)
    builder.add_node("geocode", CachedNode(geocode, cache, key=lambda s: s["key"]))
    builder.add_edge(START, "geocode")
    graph = builder.compile()
    try:
        results = await asyncio.gather(*(graph.ainvoke({"key": "oslo"}) for _ in range(callers)))
    finally:
        await shared.aclose()
    return sorted({r["value"] for r in results})


def main() -> None:
    mode, url, start_at, log, *args = sys.argv[1:]
    delay = float(start_at) - time.time()
    if delay > 0:
        time.sleep(delay)
    if mode == "cache":
        callers, load_seconds, crash = int(args[0]), float(args[1]), args[2] == "crash"
        result = asyncio.run(cache_mode(url, log, callers, load_seconds, crash))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
