"""What enabling metrics costs a 20-node chain of class nodes, side by side in one run.

    python benchmarks/bench_metrics.py

Prints:
    metrics_overhead_ratio=        20-node BaseNode chain, invoke, metrics on / off (target <= 1.05)
    async_metrics_overhead_ratio=  20-node AsyncBaseNode chain, ainvoke, on / off (target <= 1.05)
    metrics_call_overhead_us=      node(state) with metrics on minus off, per call
    off_call_is_plain=             1 when, metrics off, node classes run base_node's own __call__

Rounds alternate between on and off (enable()/disable() swap each class's __call__);
the median of the on/off ratios of neighbouring rounds is printed, so a busy machine
slows both sides alike.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from act_operator_lib import AsyncBaseNode, BaseNode, metrics

NODES = 20
ROUNDS = 61
INVOKES_PER_ROUND = 10


class State(TypedDict):
    n: int


class Step(BaseNode):
    def execute(self, state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}


class AsyncStep(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, int]:
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


def on_off_ratio(run_round: Callable[[], float]) -> float:
    ratios = []
    for index in range(ROUNDS):
        # Alternate which side goes first so drift in machine load favours neither, and
        # compare each pair of neighbouring rounds: the median of those ratios shrugs off
        # the bursts of other work on a shared machine.
        times = {}
        for enabled in (True, False) if index % 2 else (False, True):
            if enabled:
                metrics.enable()
                times[enabled] = run_round()
                metrics.disable()
            else:
                times[enabled] = run_round()
        ratios.append(times[True] / times[False])
    return statistics.median(ratios)


def metrics_overhead_ratio() -> float:
    graph = chain(Step)

    def run_round() -> float:
        start = time.perf_counter()
        for _ in range(INVOKES_PER_ROUND):
            assert graph.invoke({"n": 0})["n"] == NODES
        return time.perf_counter() - start

    run_round()  # warm up
    return on_off_ratio(run_round)


def async_metrics_overhead_ratio() -> float:
    graph = chain(AsyncStep)

    async def run() -> float:
        start = time.perf_counter()
        for _ in range(INVOKES_PER_ROUND):
            assert (await graph.ainvoke({"n": 0}))["n"] == NODES
        return time.perf_counter() - start

    with asyncio.Runner() as runner:
        runner.run(run())  # warm up
        return on_off_ratio(lambda: runner.run(run()))


def metrics_call_overhead_us(number: int = 50_000) -> float:
    node, state = Step(), {"n": 0}
    on_times, off_times = [], []
    for _ in range(9):
        metrics.enable()
        on_times.append(timeit.timeit(lambda: node(state), number=number) / number * 1e6)
        metrics.disable()
        off_times.append(timeit.timeit(lambda: node(state), number=number) / number * 1e6)
    return statistics.median(on_times) - statistics.median(off_times)


def main() -> None:
    print(f"metrics_overhead_ratio={metrics_overhead_ratio():.3f}", flush=True)
    print(f"async_metrics_overhead_ratio={async_metrics_overhead_ratio():.3f}", flush=True)
    print(f"metrics_call_overhead_us={metrics_call_overhead_us():.3f}", flush=True)
    calls = metrics.snapshot().nodes["n0"].calls
    assert calls > 0, "metrics recorded nothing while enabled"
    plain = not hasattr(Step.__dict__["__call__"], "_act_plain_call")
    print(f"off_call_is_plain={int(plain)}", flush=True)


if __name__ == "__main__":
    main()
