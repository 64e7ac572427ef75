"""The circuit breaker shared through Redis: one circuit for every worker process."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.circuit_breaker import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitBreakerNode,
    CircuitOpenError,
    circuit_breaker,
)
from act_operator_lib.cookbook.redis_backend import RedisBackend, RedisUnavailableError
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command, interrupt

from tests.redis_server import RedisServer
from tests.workers import start_shared_workers, worker_summaries


class State(TypedDict, total=False):
    order: int
    receipt: str


async def test_a_circuit_opened_in_one_process_refuses_the_next_call_in_another(
    redis_url: str,
) -> None:
    name = f"payments-{uuid.uuid4().hex[:8]}"
    # Starting processes and waiting for them block: in a thread, off the loop.
    opener = await asyncio.to_thread(start_shared_workers, 1, "open", redis_url, name, "3")
    assert await asyncio.to_thread(worker_summaries, opener) == [3]  # process A: three failures
    backend = RedisBackend(redis_url)
    here = CircuitBreaker(
        BreakerPolicy(failure_threshold=3, reset_timeout=30), name=name, shared=backend
    )
    calls = 0

    async def charge(state: State) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"receipt": "ok"}

    builder = StateGraph(State)
    builder.add_node("charge", CircuitBreakerNode(charge, here))
    builder.add_edge(START, "charge")
    try:
        with pytest.raises(CircuitOpenError) as refused:
            await builder.compile().ainvoke({"order": 1})  # this process's very first call
        assert 25 < refused.value.retry_after <= 30
        assert calls == 0
        assert await here.astate() == "open"
    finally:
        await backend.aclose()


async def test_half_open_admits_the_configured_probes_across_all_processes(
    redis_url: str,
) -> None:
    name = f"search-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend(redis_url)
    opener = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, reset_timeout=0.5, half_open_probes=2),
        name=name,
        shared=backend,
    )
    try:
        with pytest.raises(ConnectionError):
            async with opener.guard():
                raise ConnectionError("search down")
        assert await opener.astate() == "open"
    finally:
        await backend.aclose()
    # the workers start well after the 0.5 s open period: the circuit is half-open
    probes = await asyncio.to_thread(start_shared_workers, 4, "probe", redis_url, name, "2", "0.5")
    admitted = await asyncio.to_thread(worker_summaries, probes)
    assert sum(admitted) == 2, admitted


async def test_interrupts_neither_count_nor_hold_a_probe(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, reset_timeout=30),
        name=f"approve-{uuid.uuid4().hex[:8]}",
        shared=backend,
    )

    async def approve(state: State) -> dict[str, Any]:
        answer = interrupt("approve?")
        return {"receipt": str(answer)}

    builder = StateGraph(State)
    builder.add_node("approve", CircuitBreakerNode(approve, breaker))
    builder.add_edge(START, "approve")
    graph = builder.compile(checkpointer=InMemorySaver())
    try:
        for thread in ("a", "b", "c"):
            config = {"configurable": {"thread_id": thread}}
            paused = await graph.ainvoke({"order": 1}, config)
            assert "__interrupt__" in paused
        assert await breaker.astate() == "closed"  # three pending approvals are no failures
        done = await graph.ainvoke(Command(resume="yes"), {"configurable": {"thread_id": "a"}})
        assert done["receipt"] == "yes"
    finally:
        await backend.aclose()


async def test_an_outage_raises_the_typed_error_or_falls_back(own_redis: RedisServer) -> None:
    server = own_redis  # stopped and started in threads: they wait for the process
    strict = RedisBackend(server.url, timeout=0.5)
    lenient = RedisBackend(server.url, timeout=0.5, fallback="local")
    strict_breaker = CircuitBreaker(name="strict", shared=strict)
    lenient_breaker = CircuitBreaker(name="lenient", shared=lenient)
    try:
        await asyncio.to_thread(server.stop)
        with pytest.raises(RedisUnavailableError):
            async with strict_breaker.guard():
                pass
        async with lenient_breaker.guard():  # this process's own circuit meanwhile
            pass
        await asyncio.to_thread(server.start)
        async with strict_breaker.guard():  # back, with no code change
            pass
    finally:
        await strict.aclose()
        await lenient.aclose()


def test_a_shared_breaker_refuses_sync_use_with_a_message() -> None:
    backend = RedisBackend("redis://127.0.0.1:1/0")
    breaker = circuit_breaker(f"sync-{uuid.uuid4().hex[:8]}", shared=backend)
    with pytest.raises(TypeError, match=r"use `async with breaker.guard\(\)`"), breaker.guard():
        pass
    with pytest.raises(ValueError, match="already exists with shared="):
        circuit_breaker(breaker.name)


async def test_a_cancelled_probe_frees_its_slot(redis_url: str) -> None:
    backend = RedisBackend(redis_url)
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=1, reset_timeout=0.1),
        name=f"cancel-{uuid.uuid4().hex[:8]}",
        shared=backend,
    )
    try:
        with pytest.raises(ConnectionError):
            async with breaker.guard():
                raise ConnectionError("down")
        await asyncio.sleep(0.15)
        started = asyncio.Event()

        async def probe() -> None:
            async with breaker.guard():
                started.set()
                await asyncio.sleep(30)

        task = asyncio.create_task(probe())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with breaker.guard():  # the slot is free: this call is the next probe
            pass
        assert await breaker.astate() == "closed"
    finally:
        await backend.aclose()
