"""Recipe events on node spans and metrics through the OpenTelemetry metrics API: real graphs,
the SDK's in-memory span exporter and in-memory metric reader."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.batching import BatchLoader, BatchPolicy
from act_operator_lib.cookbook.cache import AsyncCache, CacheSettings
from act_operator_lib.cookbook.circuit_breaker import BreakerPolicy, circuit_breaker
from act_operator_lib.cookbook.fanout import FanoutPolicy, bounded_map
from act_operator_lib.cookbook.rate_limit import RateLimit, RateLimitedNode, RateLimiter
from act_operator_lib.cookbook.retry import retry_call
from langgraph.graph import START, StateGraph
from langgraph.types import RetryPolicy
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from act_operator_lib import AsyncBaseNode, BaseNode, BlockingDetector, metrics, tracing
from act_operator_lib._internal import node_classes


class State(TypedDict, total=False):
    n: int
    out: list[Any]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    metrics.disable()
    metrics.reset()


def node_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in exporter.get_finished_spans() if span.name == f"node {name}"]
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


async def run_node(node: Any, name: str | None = None, state: State | None = None) -> Any:
    builder = StateGraph(State)
    if name is None:
        builder.add_node(node)
        name = node.name
    else:
        builder.add_node(name, node)
    builder.add_edge(START, name)
    return await builder.compile().ainvoke(state or {})


# -- recipe events on the node span --------------------------------------------------------


async def test_rate_limiter_waits_are_events_with_their_duration(
    spans: InMemorySpanExporter,
) -> None:
    async def call(state: State) -> dict[str, Any]:
        return {"n": 1}

    limiter = RateLimiter(RateLimit(rate=20, capacity=1), name="api")
    node = RateLimitedNode(call, limiter)
    builder = StateGraph(State)
    builder.add_node("limited", node)
    builder.add_edge(START, "limited")
    graph = builder.compile()
    for _ in range(2):  # the second waits about 50 ms for its token
        await graph.ainvoke({})
    nodes = sorted(
        (s for s in spans.get_finished_spans() if s.name == "node limited"),
        key=lambda s: s.start_time or 0,
    )
    assert len(nodes) == 2
    waits = [events(span, "rate_limiter_wait_seconds") for span in nodes]
    assert [len(w) for w in waits] == [1, 1]
    assert waits[0][0]["name"] == "api"
    assert waits[0][0]["value"] < 0.02
    assert 0.02 < waits[1][0]["value"] < 1.0


async def test_retries_are_events_with_attempt_delay_and_error_type(
    spans: InMemorySpanExporter,
) -> None:
    class Flaky(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            calls = 0

            async def operation() -> int:
                nonlocal calls
                calls += 1
                if calls < 3:
                    raise ConnectionError("down")
                return calls

            outcome = await retry_call(
                operation, RetryPolicy(max_attempts=3, initial_interval=0.01), name="fetch"
            )
            return {"n": outcome.value}

    assert (await run_node(Flaky()))["n"] == 3
    retries = events(node_span(spans, "Flaky"), "retry_attempts")
    assert [(r["attempt"], r["error.type"], r["name"]) for r in retries] == [
        (1, "ConnectionError", "fetch"),
        (2, "ConnectionError", "fetch"),
    ]
    assert all(0 < r["delay"] < 1 for r in retries)
    assert retries[1]["delay"] > retries[0]["delay"] * 1.1  # backoff, with jitter


async def test_circuit_transitions_are_events(spans: InMemorySpanExporter) -> None:
    breaker = circuit_breaker(
        f"events-{uuid.uuid4().hex}", BreakerPolicy(failure_threshold=2, reset_timeout=0.05)
    )

    class Guarded(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            for _ in range(2):
                with pytest.raises(ConnectionError):
                    async with breaker.guard():
                        raise ConnectionError("down")
            await asyncio.sleep(0.08)
            async with breaker.guard():  # the probe succeeds: closed again
                pass
            return {}

    await run_node(Guarded())
    changes = events(node_span(spans, "Guarded"), "circuit_state_changes")
    assert [change["state"] for change in changes] == ["open", "half_open", "closed"]
    assert {change["name"] for change in changes} == {breaker.name}


async def test_cache_hit_miss_and_single_flight_join_are_events(
    spans: InMemorySpanExporter,
) -> None:
    cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=60, name="profiles"))

    class Lookup(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            async def load() -> int:
                await asyncio.sleep(0.01)
                return 7

            first = await asyncio.gather(*(cache.get_or_load("k", load) for _ in range(2)))
            again = await cache.get_or_load("k", load)
            return {"out": [*first, again]}

    assert (await run_node(Lookup()))["out"] == [7, 7, 7]
    names = [event.name for event in node_span(spans, "Lookup").events]
    assert names == ["cache_misses", "singleflight_joins", "cache_hits"]
    assert events(node_span(spans, "Lookup"), "cache_hits") == [{"value": 1.0, "name": "profiles"}]


async def test_fanout_deadline_expiry_and_batches_are_events(
    spans: InMemorySpanExporter,
) -> None:
    async def fetch_many(keys: list[int]) -> list[int]:
        return [key * 10 for key in keys]

    loader: BatchLoader[int, int] = BatchLoader(
        fetch_many, BatchPolicy(max_batch=3, max_delay=0.01), name="users"
    )

    class Work(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            async def slow(item: int) -> int:
                await asyncio.sleep(1 if item == 2 else 0)
                return item

            outcome = await bounded_map(
                slow, [1, 2], FanoutPolicy(limit=2, item_timeout=0.05, on_error="collect")
            )
            values = await loader.load_many([1, 2, 3])
            return {"out": [*outcome.results, *values]}

    assert (await run_node(Work()))["out"] == [1, None, 10, 20, 30]
    span = node_span(spans, "Work")
    assert events(span, "fanout_timeouts") == [{"value": 1.0, "node": "Work"}]
    (batch,) = events(span, "batch_calls")
    assert batch["name"] == "users"
    assert batch["trigger"] == "full"
    assert events(span, "batch_keys") == [{"value": 3.0, "name": "users"}]


async def test_a_stall_is_an_event_on_the_node_it_blocked(spans: InMemorySpanExporter) -> None:
    class Blocker(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            time.sleep(0.3)  # noqa: ASYNC251 - the bug the detector finds
            return {}

    class After(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            await asyncio.sleep(0.05)
            return {}

    builder = StateGraph(State)
    builder.add_node(Blocker())
    builder.add_node(After())
    builder.add_edge(START, "Blocker")
    builder.add_edge("Blocker", "After")
    async with BlockingDetector(threshold=0.1) as detector:
        await builder.compile().ainvoke({})
    (stall,) = detector.stalls
    assert stall.node == "Blocker"
    blocker = node_span(spans, "Blocker")
    (event,) = [event for event in blocker.events if event.name == "event_loop_stall_seconds"]
    attributes = dict(event.attributes or {})
    assert attributes["node"] == "Blocker"
    assert 0.2 < attributes["value"] <= stall.duration + 0.05
    assert blocker.start_time is not None
    assert blocker.start_time <= event.timestamp < blocker.start_time + 100_000_000
    assert events(node_span(spans, "After"), "event_loop_stall_seconds") == []


async def test_no_events_and_no_sink_when_tracing_is_off() -> None:
    limiter = RateLimiter(RateLimit(rate=1000, capacity=5))

    async def call(state: State) -> dict[str, Any]:
        return {}

    assert metrics._active is False  # record() returns after its one flag test
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.recording(provider):
        assert metrics._active is True
        await run_node(RateLimitedNode(call, limiter), "limited")
    assert metrics._active is False
    await run_node(RateLimitedNode(call, limiter), "limited")
    (span,) = exporter.get_finished_spans()[:1]
    assert [event.name for event in span.events] == ["rate_limiter_wait_seconds"]
    assert len(exporter.get_finished_spans()) == 2  # node and run, the first time only


def test_enable_without_a_provider_installs_nothing() -> None:
    class Plain(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return {}

    tracing.enable()  # no global provider is ever set in the test process
    try:
        assert tracing.enabled()
        assert Plain.__call__ is node_classes.generated_call(Plain)
        assert metrics._active is False
        assert tracing.client_span(lambda: ("GET", {})) is tracing._NO_SPAN
    finally:
        tracing.disable()


# -- metrics through the OpenTelemetry metrics API -----------------------------------------


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    metrics.export_otel(MeterProvider(metric_readers=[reader]))
    yield reader
    metrics.disable()
    metrics.reset()


def points(reader: InMemoryMetricReader) -> dict[str, tuple[Any, list[Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, tuple[Any, list[Any]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "act_operator_lib"
            for metric in scope.metrics:
                found[metric.name] = (metric, list(metric.data.data_points))
    return found


async def test_otel_metrics_node_series_and_recipe_series(reader: InMemoryMetricReader) -> None:
    class Fails(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            raise ValueError("bad")

    async def call(state: State) -> dict[str, Any]:
        return {}

    limiter = RateLimiter(RateLimit(rate=1000, capacity=5), name="api")
    for _ in range(3):
        await run_node(RateLimitedNode(call, limiter), "limited")
    with pytest.raises(ValueError, match="bad"):
        await run_node(Fails())
    metrics.record("pool_size", 4, name="pg")
    metrics.record("pool_size", -1, name="pg")
    found = points(reader)

    metric = found["act.node_calls"][0]
    assert metric.unit == "{call}"
    assert metric.data.is_monotonic
    by_node = {p.attributes["node"]: p.value for p in found["act.node_calls"][1]}
    assert by_node == {"limited": 3, "Fails": 1}
    (error,) = found["act.node_errors"][1]
    assert dict(error.attributes) == {"node": "Fails", "error": "ValueError"}
    assert error.value == 1
    assert {p.attributes["node"]: p.value for p in found["act.node_in_flight"][1]} == {
        "limited": 0,
        "Fails": 0,
    }
    assert not found["act.node_in_flight"][0].data.is_monotonic  # an UpDownCounter
    latency, latency_points = found["act.node_latency"]
    assert latency.unit == "s"
    limited_latency = next(p for p in latency_points if p.attributes["node"] == "limited")
    assert limited_latency.count == 3
    assert tuple(limited_latency.explicit_bounds) == metrics.LATENCY_BUCKETS
    (wait,) = found["act.rate_limiter_wait"][1]
    assert found["act.rate_limiter_wait"][0].unit == "s"
    assert dict(wait.attributes) == {"name": "api"}
    assert wait.count == 3
    (pool,) = found["act.pool_size"][1]
    assert pool.value == 3
    # The in-process path keeps working beside it: the same values in the snapshot.
    assert metrics.snapshot().nodes["limited"].calls == 3


def test_every_declared_metric_is_an_instrument_with_its_unit_and_kind() -> None:
    from act_operator_lib._internal.otel_metrics import instrument_name

    reader = InMemoryMetricReader()
    metrics.export_otel(MeterProvider(metric_readers=[reader]))
    try:
        for declared in metrics.METRICS.values():
            if declared.recorded:
                labels = {label: "x" for label in declared.labels}
                metrics.record(declared.name, 1.0, **labels)
        found = points(reader)
    finally:
        metrics.disable()
        metrics.reset()
    for declared in metrics.METRICS.values():
        if not declared.recorded:
            continue
        metric, _ = found[instrument_name(declared)]
        assert metric.unit == declared.unit
        assert metric.description == declared.description
        kind = type(metric.data).__name__
        assert kind == {"counter": "Sum", "gauge": "Sum", "observation": "Histogram"}[declared.kind]
    assert instrument_name(metrics.METRICS["event_loop_stall_seconds"]) == "act.event_loop_stall"


def test_disable_stops_the_otel_export() -> None:
    reader = InMemoryMetricReader()
    metrics.export_otel(MeterProvider(metric_readers=[reader]))
    metrics.record("cache_hits", name="c")
    metrics.disable()
    assert metrics._active is False
    metrics.record("cache_hits", name="c")
    (point,) = points(reader)["act.cache_hits"][1]
    assert point.value == 1
    metrics.reset()
