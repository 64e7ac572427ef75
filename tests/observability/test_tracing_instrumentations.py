"""Node spans with OpenTelemetry's own client instrumentations (aiohttp-client, asyncpg).

While the application has one of them instrumented, the recipe makes no client span of
its own: the package's spans are the only ones, and each is a child of the node that
made the call, also across a Send fan-out and concurrent runs on one loop.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings
from langgraph.graph import START, StateGraph
from langgraph.types import Send
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from act_operator_lib import AsyncBaseNode, tracing
from tests.http_server import HttpTestServer

AIOHTTP_SCOPE = "opentelemetry.instrumentation.aiohttp_client"
ASYNCPG_SCOPE = "opentelemetry.instrumentation.asyncpg"


class State(TypedDict, total=False):
    item: int
    n: int
    seen: Annotated[list[str], operator.add]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Both instrumentations on, with the same provider as the node spans; off afterwards."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        AsyncPGInstrumentor().uninstrument()
        AioHttpClientInstrumentor().uninstrument()


def from_scope(finished: tuple[ReadableSpan, ...], scope: str) -> list[ReadableSpan]:
    return [
        s for s in finished if s.instrumentation_scope and s.instrumentation_scope.name == scope
    ]


def ours(finished: tuple[ReadableSpan, ...]) -> list[ReadableSpan]:
    return from_scope(finished, "act_operator_lib")


def attribute(span: ReadableSpan, stable: str, older: str) -> Any:
    """An attribute under its stable semantic-convention name, or the older one the
    instrumentations still emit by default (``OTEL_SEMCONV_STABILITY_OPT_IN`` unset)."""
    attributes = dict(span.attributes or {})
    return attributes.get(stable, attributes.get(older))


def parent(span: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    [found] = [s for s in finished if s.context.span_id == span.parent.span_id]
    assert found.context.trace_id == span.context.trace_id
    return found


async def test_package_spans_replace_the_recipes_own_under_the_node(
    spans: InMemorySpanExporter, http_server: HttpTestServer, pg_database: str
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2))

    class FetchAndQuery(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            body = await http.request("GET", "/json")
            n = await db.fetchval("SELECT $1::int + 1", 41)
            return {"n": n, "seen": [str(body["ok"])]}

    builder = StateGraph(State)
    builder.add_node(FetchAndQuery())
    builder.add_edge(START, "FetchAndQuery")
    try:
        assert (await builder.compile().ainvoke({}))["n"] == 42
    finally:
        await http.aclose()
        await db.aclose()
    finished = spans.get_finished_spans()
    # Only the run and the node are the library's: no client span is made twice.
    assert sorted(s.name for s in ours(finished)) == [
        "invoke_workflow LangGraph",
        "node FetchAndQuery",
    ]
    [node] = [s for s in finished if s.name == "node FetchAndQuery"]
    assert "http.response.status_code" not in (node.attributes or {})
    [get] = from_scope(finished, AIOHTTP_SCOPE)
    assert get.kind is SpanKind.CLIENT
    assert parent(get, finished) is node
    assert attribute(get, "http.response.status_code", "http.status_code") == 200
    queries = from_scope(finished, ASYNCPG_SCOPE)
    assert queries, "the asyncpg instrumentation made no span"
    assert all(parent(query, finished) is node for query in queries)
    statements = [attribute(query, "db.query.text", "db.statement") for query in queries]
    assert "SELECT $1::int + 1" in statements


async def test_fanout_and_concurrent_runs_each_request_under_its_own_task(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))

    class Worker(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            tracing.set_attribute("test.item", state["item"])  # on this task's node span
            await asyncio.sleep(0)  # interleave the runs
            await http.request("GET", f"/json?item={state['item']}")
            return {"seen": [str(state["item"])]}

    def plan(state: State) -> list[Send]:
        return [Send("Worker", {"item": state["n"] * 10 + i}) for i in range(5)]

    builder = StateGraph(State)
    builder.add_node(Worker())
    builder.add_conditional_edges(START, plan, ["Worker"])
    graph = builder.compile()
    try:
        results = await asyncio.gather(*(graph.ainvoke({"n": run}) for run in range(8)))
    finally:
        await http.aclose()
    assert all(len(result["seen"]) == 5 for result in results)
    finished = spans.get_finished_spans()
    gets = from_scope(finished, AIOHTTP_SCOPE)
    assert len(gets) == 40
    assert not [s for s in ours(finished) if s.kind is SpanKind.CLIENT]
    for get in gets:
        node = parent(get, finished)
        assert node.name == "node Worker"
        item = dict(node.attributes or {})["test.item"]
        url = attribute(get, "url.full", "http.url")
        assert str(url).endswith(f"/json?item={item}")
    assert len({get.parent.span_id for get in gets if get.parent}) == 40


async def test_without_the_instrumentation_the_recipe_makes_its_own_client_span(
    http_server: HttpTestServer,
) -> None:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    AioHttpClientInstrumentor().instrument(tracer_provider=provider)
    AioHttpClientInstrumentor().uninstrument()  # imported, but not instrumenting
    tracing.enable(provider)
    http = HttpClient(HttpSettings(base_url=http_server.url))

    class Fetch(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            await http.request("GET", "/json")
            return {}

    builder = StateGraph(State)
    builder.add_node(Fetch())
    builder.add_edge(START, "Fetch")
    try:
        await builder.compile().ainvoke({})
    finally:
        tracing.disable()
        await http.aclose()
    finished = exporter.get_finished_spans()
    assert not from_scope(finished, AIOHTTP_SCOPE)
    [get] = [s for s in ours(finished) if s.kind is SpanKind.CLIENT]
    assert parent(get, finished).name == "node Fetch"
    assert dict(get.attributes or {})["http.response.status_code"] == 200
