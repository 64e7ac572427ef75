"""Recipe tests run under `langgraph dev`'s blocking-call guard.

Around each test function (not its fixtures: starting and stopping test servers is the
suite's own blocking), the blockbuster guard `langgraph dev` activates is on, configured by
langgraph dev's own function (``tests.helpers.blocking_guard``): a blocking call made on a
running event loop raises ``BlockingError``, so a blocking call added to a recipe fails
here. For now it is on only with ``ACT_OPERATOR_BLOCKING_GUARD=1`` in the environment, until
the test-only blocking in test_files.py (mkdir and rglob on the loop) is moved off the loop
or marked. Sync tests that run a loop (``asyncio.run``, ``run_in_virtual_time``) are covered
too, since the guard checks whichever loop is running in the calling thread. A test that
blocks its loop on purpose says so with ``@pytest.mark.allow_blocking``.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from tests.helpers import blocking_guard


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_blocking: the test blocks its event loop on purpose; run it without"
        " langgraph dev's blocking-call guard",
    )


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    if (
        os.environ.get("ACT_OPERATOR_BLOCKING_GUARD") != "1"
        or pyfuncitem.get_closest_marker("allow_blocking") is not None
    ):
        return (yield)
    with blocking_guard():
        return (yield)
