"""What OpenTelemetry tracing costs per node, side by side in one run.

    python benchmarks/bench_otel.py

Prints:
    otel_node_added_us=   median time a node execution gains with tracing on (SDK tracer
                          provider, BatchSpanProcessor, in-memory exporter), 20-node async
                          chain under an application span, per node (run_spans=False)
    otel_node_added_with_run_spans_us=  the same with run_spans=True (a LangChain callback
                          handler on every run, for runs with no current span)
    bare_span_us=         the floor: time a node execution gains from one bare SDK span with
                          the same six attributes (constant), made current and ended by the
                          thinnest call wrapper around the node, in the same graph, same
                          provider, rounds interleaved with the traced and untraced ones
    bare_span_loop_us=    the same bare span timed alone in a tight loop (warm caches, no
                          graph): for reference, it is not a node's floor
    otel_vs_bare_span=    otel_node_added_us / bare_span_us (target <= 1.3)
    otel_off_vs_plain=    the chain with tracing enabled but no tracer provider configured /
                          the chain with tracing never enabled (target <= 1.02)
    otel_parented_pct=    share of HTTP client spans whose parent is their own node's span,
                          golden graphs (Send fan-out of 3 requests) run 100 at once on one
                          loop against a local aiohttp server (target 100)

Rounds alternate between the sides and medians are compared; graph rounds are timed in
process CPU time, which other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from act_operator_lib import AsyncBaseNode, tracing
from act_operator_lib._internal import node_classes
from tests.http_server import HttpTestServer

NODES = 20
ROUNDS = 31
INVOKES_PER_ROUND = 20


class State(TypedDict, total=False):
    n: int
    path: str
    seen: list[str]


class Step(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, int]:
        return {"n": state["n"] + 1}


def chain() -> Any:
    builder = StateGraph(State)
    previous = START
    for index in range(NODES):
        builder.add_node(f"n{index}", Step())
        builder.add_edge(previous, f"n{index}")
        previous = f"n{index}"
    builder.add_edge(previous, END)
    return builder.compile()


def paired(
    measure_a: Callable[[], float], measure_b: Callable[[], float]
) -> list[tuple[float, float]]:
    return [(a, b) for a, b in interleaved(measure_a, measure_b)]


def interleaved(*measures: Callable[[], float]) -> list[tuple[float, ...]]:
    """Each round runs every measure once, in an order that rotates from round to round."""
    rounds = []
    gc.disable()
    try:
        for index in range(ROUNDS):
            results = [0.0] * len(measures)
            for offset in range(len(measures)):
                which = (index + offset) % len(measures)
                gc.collect()
                results[which] = measures[which]()
            rounds.append(tuple(results))
    finally:
        gc.enable()
    return rounds


ATTRIBUTES = {
    "langgraph.node.name": "n0",
    "langgraph.step": 1,
    "gen_ai.conversation.id": "t",
    "langgraph.task.id": "00000000-0000-0000-0000-000000000000",
    "langgraph.node.attempt": 1,
    "langgraph.checkpoint.ns": "n0:00000000-0000-0000-0000-000000000000",
}


def bare_span_wrapper(tracer: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The thinnest node call wrapper making a span: the floor a node span can reach."""

    def wrap(plain: Callable[..., Any]) -> Callable[..., Any]:
        async def call(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            span = tracer.start_span("node n0", attributes=ATTRIBUTES)
            token = otel_context.attach(trace.set_span_in_context(span))
            try:
                return await plain(self, state, *args, **kwargs)
            finally:
                otel_context.detach(token)
                span.end()

        return call

    return wrap


def node_cost(provider: TracerProvider, *, run_spans: bool = False) -> tuple[float, float, float]:
    """(µs added per node by tracing, by a bare span wrapper, µs of one bare span alone in
    a loop), medians over interleaved rounds."""
    graph = chain()
    app = provider.get_tracer("app")

    async def run() -> float:
        with app.start_as_current_span("request"):  # the usual case: a request span
            start = time.process_time()
            for _ in range(INVOKES_PER_ROUND):
                await graph.ainvoke({"n": 0})
            return time.process_time() - start

    tracer = provider.get_tracer("bare")
    attributes = ATTRIBUTES

    def bare(number: int = 2000) -> float:
        start = time.process_time()
        for _ in range(number):
            span = tracer.start_span("node n0", attributes=attributes)
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.end()
        return (time.process_time() - start) / number * 1e6

    with asyncio.Runner() as runner:

        def on() -> float:
            tracing.enable(provider, run_spans=run_spans)
            return runner.run(run())

        def off() -> float:
            tracing.disable()
            return runner.run(run())

        def floor() -> float:
            tracing.disable()
            node_classes.add_call_wrapper("bare_span", bare_span_wrapper(tracer))
            try:
                return runner.run(run())
            finally:
                node_classes.remove_call_wrapper("bare_span")

        on(), off(), floor()  # warm up
        rounds = interleaved(on, off, floor)
        tracing.disable()
    per_node = [(a - b) / (INVOKES_PER_ROUND * NODES) * 1e6 for a, b, _ in rounds]
    floors = [(c - b) / (INVOKES_PER_ROUND * NODES) * 1e6 for _, b, c in rounds]
    bares = [bare() for _ in range(ROUNDS)]
    return statistics.median(per_node), statistics.median(floors), statistics.median(bares)


def off_vs_plain() -> float:
    graph = chain()

    async def run() -> float:
        start = time.process_time()
        for _ in range(INVOKES_PER_ROUND):
            await graph.ainvoke({"n": 0})
        return time.process_time() - start

    with asyncio.Runner() as runner:

        def enabled_no_provider() -> float:
            tracing.enable()  # follows the global provider, which is never set here
            return runner.run(run())

        def plain() -> float:
            tracing.disable()
            return runner.run(run())

        enabled_no_provider(), plain()
        pairs = paired(enabled_no_provider, plain)
        tracing.disable()
    return statistics.median(a / b for a, b in pairs)


def parented_pct(provider: TracerProvider, exporter: InMemorySpanExporter) -> float:
    with HttpTestServer() as server:

        async def main() -> None:
            http = HttpClient(HttpSettings(base_url=server.url))

            class Work(AsyncBaseNode):
                async def execute(self, state: State) -> dict[str, Any]:
                    await http.request("GET", state["path"])
                    return {}

            def plan(state: State) -> list[Send]:
                return [Send("Work", {"path": "/json"}) for _ in range(3)]

            builder = StateGraph(State)
            builder.add_node(Work())
            builder.add_conditional_edges(START, plan, ["Work"])
            graph = builder.compile()
            try:
                await asyncio.gather(*(graph.ainvoke({}) for _ in range(100)))
            finally:
                await http.aclose()

        exporter.clear()
        tracing.enable(provider)
        try:
            asyncio.run(main())
        finally:
            tracing.disable()
    provider.force_flush()
    finished = exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    gets = [span for span in finished if span.name == "GET"]
    good = 0
    for get in gets:
        node = by_id.get(get.parent.span_id) if get.parent else None
        if node is not None and node.name == "node Work" and node.end_time >= get.end_time:  # type: ignore[operator]
            good += 1
    assert len(gets) == 300, len(gets)
    return 100.0 * good / len(gets)


def main() -> None:
    started = time.perf_counter()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16))
    added, bare, loop = node_cost(provider)
    with_runs, _, _ = node_cost(provider, run_spans=True)
    print(f"otel_node_added_us={added:.2f}")
    print(f"otel_node_added_with_run_spans_us={with_runs:.2f}")
    print(f"bare_span_us={bare:.2f}")
    print(f"bare_span_loop_us={loop:.2f}")
    print(f"otel_vs_bare_span={added / bare:.2f}")
    print(f"otel_off_vs_plain={off_vs_plain():.3f}")
    print(f"otel_parented_pct={parented_pct(provider, exporter):.1f}")
    print(f"rounds={ROUNDS}")
    print(f"bench_seconds={time.perf_counter() - started:.1f}")
    provider.shutdown()


if __name__ == "__main__":
    main()
