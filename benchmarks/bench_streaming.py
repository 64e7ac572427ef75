"""Streaming recipes against LangGraph's own streaming path, side by side, in one run.

    python benchmarks/bench_streaming.py            # prints key=value lines

- custom_stream_vs_native: time per chunk for 100 000 chunks streamed by StreamPipelineNode
  (async generator -> bounded queue -> consumer -> runtime.stream_writer) and read with
  astream(stream_mode="custom"), divided by the same for a plain function node that iterates
  the same async generator and calls runtime.stream_writer directly. Target <= 1.10.
- first_token_overhead_ms: time to the first token through graph.astream(stream_mode=
  "messages") over LLMStreamNode and the fake chat model, minus the time to the first token of
  model.astream() called directly. Target <= 5.
- backpressure_peak_mb: tracemalloc peak growth while 1 000 000 items go through the
  pipeline, every item streamed to the caller on the custom stream. Target <= 50.

The machine is shared and noisy: compared things run in interleaved rounds and the
figures are medians of those rounds.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from act_operator_lib.cookbook.llm_stream import LLMStreamNode, MessagesState, fake_chat_model
from act_operator_lib.cookbook.stream_pipeline import PipelinePolicy, StreamPipelineNode
from langchain_core.messages import HumanMessage
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime

CHUNKS = 100_000
CHUNK_ROUNDS = 7
TOKEN_ROUNDS = 41
BACKPRESSURE_ITEMS = 1_000_000
ANSWER = "The quick brown fox jumps over the lazy dog and streams every token to the caller."


class CountState(TypedDict, total=False):
    upto: int
    processed: int


async def numbers(state: CountState) -> AsyncIterator[int]:
    for n in range(state["upto"]):
        yield n


async def same(n: int) -> int:
    return n


async def native_node(state: CountState, runtime: Runtime[Any]) -> dict[str, int]:
    write = runtime.stream_writer
    count = 0
    async for n in numbers(state):
        write(n)
        count += 1
    return {"processed": count}


def graph_of(node: Any, name: str) -> Any:
    builder = StateGraph(CountState)
    builder.add_node(name, node)
    builder.add_edge(START, name)
    return builder.compile()


async def seconds_per_chunk(graph: Any, chunks: int) -> float:
    received = 0
    start = time.perf_counter()
    async for _ in graph.astream({"upto": chunks}, stream_mode="custom"):
        received += 1
    elapsed = time.perf_counter() - start
    assert received == chunks, f"expected {chunks} chunks, got {received}"
    return elapsed / chunks


async def custom_stream_vs_native() -> dict[str, float]:
    recipe = graph_of(
        StreamPipelineNode(numbers, same, PipelinePolicy(progress_every=0)), "pipeline"
    )
    native = graph_of(native_node, "native")
    await seconds_per_chunk(recipe, 1_000)  # warm-up
    await seconds_per_chunk(native, 1_000)
    recipe_times: list[float] = []
    native_times: list[float] = []
    for round_ in range(CHUNK_ROUNDS):
        # Alternate which goes first so neither always runs on a warmer or cooler machine.
        order = [(recipe, recipe_times), (native, native_times)]
        for graph, times in order if round_ % 2 == 0 else reversed(order):
            gc.collect()
            times.append(await seconds_per_chunk(graph, CHUNKS))
    ratios = [r / n for r, n in zip(recipe_times, native_times, strict=True)]
    return {
        "custom_stream_vs_native": statistics.median(ratios),
        "custom_stream_recipe_us_per_chunk": statistics.median(recipe_times) * 1e6,
        "custom_stream_native_us_per_chunk": statistics.median(native_times) * 1e6,
    }


async def first_token_overhead() -> dict[str, float]:
    model = fake_chat_model(ANSWER)
    builder = StateGraph(MessagesState)
    builder.add_node(LLMStreamNode(model))
    builder.add_edge(START, "LLMStreamNode")
    graph = builder.compile()
    inputs = {"messages": [HumanMessage("go")]}

    async def through_graph() -> float:
        start = time.perf_counter()
        first = 0.0
        async for _ in graph.astream(inputs, stream_mode="messages"):
            if not first:
                first = time.perf_counter() - start
        return first

    async def direct() -> float:
        start = time.perf_counter()
        first = 0.0
        async for _ in model.astream(inputs["messages"]):
            if not first:
                first = time.perf_counter() - start
        return first

    await through_graph()  # warm-up: imports, executor threads
    await direct()
    graph_times: list[float] = []
    direct_times: list[float] = []
    for round_ in range(TOKEN_ROUNDS):
        order = [(through_graph, graph_times), (direct, direct_times)]
        for measure, times in order if round_ % 2 == 0 else reversed(order):
            times.append(await measure())
    diffs = [g - d for g, d in zip(graph_times, direct_times, strict=True)]
    return {
        "first_token_overhead_ms": statistics.median(diffs) * 1e3,
        "first_token_graph_ms": statistics.median(graph_times) * 1e3,
        "first_token_direct_ms": statistics.median(direct_times) * 1e3,
    }


async def backpressure_peak() -> dict[str, float]:
    graph = graph_of(
        StreamPipelineNode(numbers, same, PipelinePolicy(queue_size=64, progress_every=0)),
        "pipeline",
    )
    await seconds_per_chunk(graph, 1_000)  # warm-up outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        await seconds_per_chunk(graph, BACKPRESSURE_ITEMS)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    return {
        "backpressure_peak_mb": peak / 1e6,
        "backpressure_items": BACKPRESSURE_ITEMS,
        "backpressure_seconds_traced": elapsed,
    }


async def main() -> None:
    for part in (custom_stream_vs_native, first_token_overhead, backpressure_peak):
        for key, value in (await part()).items():
            print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    asyncio.run(main())
