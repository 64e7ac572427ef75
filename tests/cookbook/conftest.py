"""Recipe tests run under `langgraph dev`'s blocking-call guard.

Around each test function (not its fixtures: starting and stopping test servers is the
suite's own blocking), the blockbuster guard `langgraph dev` activates is on, configured by
langgraph dev's own function (``tests.helpers.blocking_guard``): a blocking call made on a
running event loop raises ``BlockingError``, so a blocking call added to a recipe fails
here. Test-only blocking (arranging files, listing leftovers, reading a child's pipe) goes
in fixtures or ``asyncio.to_thread``. Sync tests that run a loop (``asyncio.run``,
``run_in_virtual_time``) are covered too, since the guard checks whichever loop is running
in the calling thread. A test that blocks its loop on purpose says so with
``@pytest.mark.allow_blocking`` and a reason (the marker is registered in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.helpers import blocking_guard
from tests.redis_server import RedisServer


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    if pyfuncitem.get_closest_marker("allow_blocking") is not None:
        return (yield)
    with blocking_guard():
        return (yield)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, for a test that stops and restarts it; started here, off the loop."""
    with RedisServer() as server:
        yield server
