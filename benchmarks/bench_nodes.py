"""Class nodes against plain function nodes, side by side in one run.

    python benchmarks/bench_nodes.py

Prints:
    sync_graph_ratio=          20-node BaseNode chain / 20-node function chain, invoke (target <= 1.02)
    async_graph_ratio=         20-node AsyncBaseNode chain / async function chain, ainvoke (target <= 1.02)
    direct_call_overhead_us=   node(state) minus function(state), per call (target <= 0.5)
    async_direct_call_overhead_us=  the same for await node(state)

Rounds alternate between the two sides and the medians are compared, so a busy
machine slows both sides alike; graph rounds are timed in process CPU time, which
other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from act_operator_lib import AsyncBaseNode, BaseNode

NODES = 20
ROUNDS = 61
INVOKES_PER_ROUND = 20


class State(TypedDict):
    n: int


class Step(BaseNode):
    def execute(self, state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}


class AsyncStep(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}


def step(state: State) -> dict[str, int]:
    return {"n": state["n"] + 1}


async def async_step(state: State) -> dict[str, int]:
    return {"n": state["n"] + 1}


def chain(make: Callable[[], Any]) -> Any:
    builder = StateGraph(State)
    previous = START
    for index in range(NODES):
        name = f"n{index}"
        builder.add_node(name, make())
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile()


def median_ratio(measure_a: Callable[[], float], measure_b: Callable[[], float]) -> float:
    """Median over rounds of a/b, each round timing both sides back to back."""
    ratios = []
    gc.disable()  # a collection landing in one side's round would skew that pair
    try:
        for index in range(ROUNDS):
            gc.collect()
            if index % 2:
                a, b = measure_a(), measure_b()
            else:
                b, a = measure_b(), measure_a()
            ratios.append(a / b)
    finally:
        gc.enable()
    return statistics.median(ratios)


def sync_graph_ratio() -> float:
    by_class, by_function = chain(Step), chain(lambda: step)

    def timed(graph: Any) -> Callable[[], float]:
        def run() -> float:
            start = time.process_time()
            for _ in range(INVOKES_PER_ROUND):
                assert graph.invoke({"n": 0})["n"] == NODES
            return time.process_time() - start

        return run

    timed(by_class)(), timed(by_function)()  # warm up
    return median_ratio(timed(by_class), timed(by_function))


def async_graph_ratio() -> float:
    by_class, by_function = chain(AsyncStep), chain(lambda: async_step)

    async def run(graph: Any) -> float:
        start = time.process_time()
        for _ in range(INVOKES_PER_ROUND):
            assert (await graph.ainvoke({"n": 0}))["n"] == NODES
        return time.process_time() - start

    with asyncio.Runner() as runner:
        runner.run(run(by_class)), runner.run(run(by_function))  # warm up
        return median_ratio(lambda: runner.run(run(by_class)), lambda: runner.run(run(by_function)))


def per_call_us(call: Callable[[], Any], number: int = 200_000) -> float:
    return timeit.timeit(call, number=number) / number * 1e6


def direct_call_overhead_us() -> float:
    node, state = Step(), {"n": 0}
    node_times, function_times = [], []
    for _ in range(ROUNDS):
        node_times.append(per_call_us(lambda: node(state)))
        function_times.append(per_call_us(lambda: step(state)))
    return statistics.median(node_times) - statistics.median(function_times)


def async_direct_call_overhead_us() -> float:
    node, state = AsyncStep(), {"n": 0}

    def drive(make: Callable[[], Any]) -> None:
        # Run the coroutine to completion without an event loop: it never suspends.
        with contextlib.suppress(StopIteration):
            make().send(None)

    node_times, function_times = [], []
    for _ in range(ROUNDS):
        node_times.append(per_call_us(lambda: drive(lambda: node(state)), 100_000))
        function_times.append(per_call_us(lambda: drive(lambda: async_step(state)), 100_000))
    return statistics.median(node_times) - statistics.median(function_times)


def main() -> None:
    print(f"sync_graph_ratio={sync_graph_ratio():.3f}", flush=True)
    print(f"async_graph_ratio={async_graph_ratio():.3f}", flush=True)
    print(f"direct_call_overhead_us={direct_call_overhead_us():.3f}", flush=True)
    print(f"async_direct_call_overhead_us={async_direct_call_overhead_us():.3f}", flush=True)


if __name__ == "__main__":
    main()
