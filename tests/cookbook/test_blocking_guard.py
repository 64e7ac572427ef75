# ruff: noqa: ASYNC251 - blocking on the loop is what these check
"""The recipe tests and examples run under langgraph dev's blocking-call guard, on by default."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
from blockbuster import BlockingError

from tests.helpers import run_example


async def test_a_blocking_call_in_a_test_body_fails() -> None:
    with pytest.raises(BlockingError, match=r"time\.sleep"):
        time.sleep(0.001)


def test_a_sync_test_running_a_loop_is_guarded_too() -> None:
    async def block() -> None:
        time.sleep(0.001)

    with pytest.raises(BlockingError, match=r"time\.sleep"):
        asyncio.run(block())
    time.sleep(0.001)  # no loop runs here: a sync test may block its own thread


async def test_a_thread_may_block() -> None:
    await asyncio.to_thread(time.sleep, 0.001)


@pytest.fixture
async def arranged_by_blocking() -> AsyncIterator[str]:
    time.sleep(0.001)  # a fixture is the suite's own work, outside the guard
    yield "arranged"
    time.sleep(0.001)


async def test_fixtures_run_outside_the_guard(arranged_by_blocking: str) -> None:
    assert arranged_by_blocking == "arranged"
    with pytest.raises(BlockingError):
        time.sleep(0.001)  # while the test body is guarded


@pytest.mark.allow_blocking  # it checks that the marker turns the guard off
async def test_allow_blocking_turns_the_guard_off() -> None:
    time.sleep(0.001)


def test_an_example_that_blocks_its_loop_fails() -> None:
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_example("blocking_example", package="tests.cookbook")
    assert "BlockingError: Blocking call to time.sleep" in failed.value.stderr
    # Unguarded, the same example runs: the guard is what refused it.
    unguarded = run_example("blocking_example", package="tests.cookbook", guard=False)
    assert unguarded == "slept on the loop\n"
