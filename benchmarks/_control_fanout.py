"""Fan-out figures for bench_control.py: the FanoutNode against the ideal and against Send.

    python benchmarks/_control_fanout.py

Prints ``key=value`` lines:

- ``fanout_ratio_to_ideal``: wall time of a compiled graph whose FanoutNode maps 1 000 items
  of 20 ms simulated I/O (``asyncio.sleep(0.02)``) at limit 50, over the ideal
  1 000 / 50 x 20 ms = 0.4 s (target <= 1.10).
- ``fanout_vs_send``: that time over the same work done the LangGraph-native way, one
  ``Send`` per item to a worker node with ``max_concurrency=50`` (target <= 0.75).
- ``gather_ratio_to_ideal``: for reference, a bare ``asyncio.Semaphore`` + ``gather`` over
  the same items outside any graph: the floor the event loop allows on this machine now.

Rounds alternate fanout, send, gather, fanout, send, ... and medians are compared, so a busy
neighbour slows both sides alike. Wall time is what counts here: the work is waiting.
"""

from __future__ import annotations

import asyncio
import operator
import statistics
import time
from typing import Annotated, Any, TypedDict

from act_operator_lib.cookbook.fanout import FanoutNode, FanoutPolicy
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

ITEMS = 1_000
LIMIT = 50
IO_SECONDS = 0.02
IDEAL = ITEMS / LIMIT * IO_SECONDS
ROUNDS = 5


class State(TypedDict, total=False):
    items: list[int]
    results: Annotated[list[int], operator.add]


class WorkerState(TypedDict):
    item: int


async def simulated_io(item: int) -> int:
    await asyncio.sleep(IO_SECONDS)
    return item


def fanout_graph() -> Any:
    builder = StateGraph(State)
    builder.add_node(FanoutNode(simulated_io, FanoutPolicy(limit=LIMIT)))
    builder.add_edge(START, "FanoutNode")
    builder.add_edge("FanoutNode", END)
    return builder.compile()


def send_graph() -> Any:
    async def worker(state: WorkerState) -> dict[str, Any]:
        return {"results": [await simulated_io(state["item"])]}

    def one_send_per_item(state: State) -> list[Send]:
        return [Send("worker", {"item": item}) for item in state["items"]]

    builder = StateGraph(State)
    builder.add_node("worker", worker)
    builder.add_conditional_edges(START, one_send_per_item, ["worker"])
    builder.add_edge("worker", END)
    return builder.compile()


async def timed(graph: Any, config: dict[str, Any]) -> float:
    started = time.perf_counter()
    out = await graph.ainvoke({"items": list(range(ITEMS))}, config)
    elapsed = time.perf_counter() - started
    assert sorted(out["results"]) == list(range(ITEMS))
    return elapsed


async def timed_gather() -> float:
    slots = asyncio.Semaphore(LIMIT)

    async def one(item: int) -> int:
        async with slots:
            return await simulated_io(item)

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in range(ITEMS)))
    return time.perf_counter() - started


async def measure() -> tuple[list[float], list[float], list[float]]:
    fanout, send = fanout_graph(), send_graph()
    await timed(fanout, {})  # warm up both: first runs pay for lazy imports
    await timed(send, {"max_concurrency": LIMIT})
    fanout_times: list[float] = []
    send_times: list[float] = []
    gather_times: list[float] = []
    for _ in range(ROUNDS):
        fanout_times.append(await timed(fanout, {}))
        send_times.append(await timed(send, {"max_concurrency": LIMIT}))
        gather_times.append(await timed_gather())
    return fanout_times, send_times, gather_times


def main() -> None:
    fanout_times, send_times, gather_times = asyncio.run(measure())
    fanout, send = statistics.median(fanout_times), statistics.median(send_times)
    print(f"fanout_seconds={fanout:.4f}")
    print(f"send_seconds={send:.4f}")
    print(f"send_ratio_to_ideal={send / IDEAL:.3f}")
    print(f"gather_ratio_to_ideal={statistics.median(gather_times) / IDEAL:.3f}")
    print(f"fanout_ratio_to_ideal={fanout / IDEAL:.3f}")
    print(f"fanout_vs_send={fanout / send:.3f}")


if __name__ == "__main__":
    main()
