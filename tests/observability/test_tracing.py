"""OpenTelemetry traces of real graphs: the whole span tree, read from the SDK's in-memory
exporter, for class nodes, cookbook clients against the test servers, offload, Send,
subgraphs, interrupts, retries, rate limits and concurrent runs."""

from __future__ import annotations

import asyncio
import operator
import threading
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.offload import Offloader, OffloadSettings
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings
from act_operator_lib.cookbook.rate_limit import RateLimit, RateLimitedNode, RateLimiter
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph
from langgraph.types import Command, RetryPolicy, Send, interrupt
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from act_operator_lib import AsyncBaseNode, BaseNode, metrics, tracing
from act_operator_lib._internal import node_classes
from tests.http_server import HttpTestServer


class State(TypedDict, total=False):
    path: str
    n: int
    seen: Annotated[list[str], operator.add]


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider()


@pytest.fixture
def spans(provider: TracerProvider) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    yield exporter
    tracing.disable()
    metrics.disable()
    metrics.reset()


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


def only(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = by_name(finished, name)
    assert len(found) == 1, [span.name for span in finished]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None, f"{child.name} has no parent"
    return (
        child.parent.span_id == parent.context.span_id
        and child.context.trace_id == parent.context.trace_id
    )


# -- class nodes, http_client and postgres -----------------------------------------------


class FetchAndQuery(AsyncBaseNode):
    def __init__(self, http: HttpClient, db: PostgresPool) -> None:
        super().__init__()
        self.http = http
        self.db = db

    async def execute(self, state: State) -> dict[str, Any]:
        body = await self.http.request("GET", state["path"])
        n = await self.db.fetchval("SELECT $1::int + 1", 41)
        return {"n": n, "seen": [str(body["ok"])]}


class Count(BaseNode):
    def execute(self, state: State) -> dict[str, Any]:
        return {"seen": ["count"]}


async def test_golden_tree_class_nodes_http_and_postgres(
    spans: InMemorySpanExporter, http_server: HttpTestServer, pg_database: str
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))
    db = PostgresPool(PostgresSettings(dsn=pg_database, max_size=2))
    builder = StateGraph(State)
    builder.add_node(FetchAndQuery(http, db))
    builder.add_node(Count())
    builder.add_edge(START, "FetchAndQuery")
    builder.add_edge("FetchAndQuery", "Count")
    graph = builder.compile(checkpointer=InMemorySaver())
    try:
        result = await graph.ainvoke({"path": "/json"}, {"configurable": {"thread_id": "t-1"}})
    finally:
        await http.aclose()
        await db.aclose()
    assert result["n"] == 42
    finished = spans.get_finished_spans()
    run = only(finished, "invoke_workflow LangGraph")
    fetch = only(finished, "node FetchAndQuery")
    count = only(finished, "node Count")
    get = only(finished, "GET")
    select = only(finished, "SELECT")
    # The whole tree: run > nodes > client calls, nothing else.
    assert run.parent is None
    assert is_child(fetch, run)
    assert is_child(count, run)
    assert is_child(get, fetch)
    assert is_child(select, fetch)
    assert len(finished) == 5
    assert run.attributes == {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": "LangGraph",
        "langgraph.graph.name": "LangGraph",
        "gen_ai.conversation.id": "t-1",
    }
    attributes = dict(fetch.attributes or {})
    assert attributes["langgraph.node.name"] == "FetchAndQuery"
    assert attributes["langgraph.step"] == 1
    assert attributes["gen_ai.conversation.id"] == "t-1"
    assert attributes["langgraph.node.attempt"] == 1
    assert str(attributes["langgraph.checkpoint.ns"]).startswith("FetchAndQuery:")
    assert attributes["langgraph.task.id"] in str(attributes["langgraph.checkpoint.ns"])
    assert dict(count.attributes or {})["langgraph.step"] == 2
    assert fetch.kind is SpanKind.INTERNAL
    assert get.kind is SpanKind.CLIENT
    assert get.attributes is not None
    assert get.attributes["http.request.method"] == "GET"
    assert get.attributes["http.response.status_code"] == 200
    assert get.attributes["url.full"] == f"{http_server.url}/json"
    assert get.attributes["server.address"] == "127.0.0.1"
    assert select.attributes is not None
    assert select.attributes["db.system.name"] == "postgresql"
    assert select.attributes["db.query.text"] == "SELECT $1::int + 1"
    assert run.start_time is not None
    assert fetch.start_time is not None
    assert run.start_time <= fetch.start_time
    assert run.end_time >= count.end_time


async def test_an_application_span_is_the_parent_and_no_run_span_is_made(
    spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    builder = StateGraph(State)
    builder.add_node(Count())
    builder.add_edge(START, "Count")
    graph = builder.compile()
    with provider.get_tracer("app").start_as_current_span("request"):
        await graph.ainvoke({})
    finished = spans.get_finished_spans()
    assert [span.name for span in finished] == ["node Count", "request"]
    assert is_child(finished[0], finished[1])


async def test_failed_http_call_marks_the_client_span(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))

    class Fetch(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            await http.request("GET", "/status/500")
            return {}

    builder = StateGraph(State)
    builder.add_node(Fetch())
    builder.add_edge(START, "Fetch")
    try:
        with pytest.raises(Exception, match="500"):
            await builder.compile().ainvoke({})
    finally:
        await http.aclose()
    finished = spans.get_finished_spans()
    get, node = only(finished, "GET"), only(finished, "node Fetch")
    assert is_child(get, node)
    assert get.status.status_code is StatusCode.ERROR
    assert get.attributes is not None
    assert get.attributes["http.response.status_code"] == 500
    assert node.status.status_code is StatusCode.ERROR
    assert [event.name for event in node.events] == ["exception"]


# -- offload, Send, subgraphs --------------------------------------------------------------


def traced_work(label: str) -> str:
    # What an application's own instrumentation does inside blocking code.
    with trace.get_tracer("app").start_as_current_span(f"work {label}"):
        return threading.current_thread().name


async def test_offloaded_work_and_sync_nodes_stay_under_their_node(
    spans: InMemorySpanExporter, provider: TracerProvider
) -> None:
    threads = Offloader(OffloadSettings(max_workers=2))
    app_tracer = provider.get_tracer("app")

    class Blocking(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            def work() -> str:
                with app_tracer.start_as_current_span("work offloaded"):
                    return threading.current_thread().name

            name = await threads.run(work)
            return {"seen": [name]}

    class SyncWork(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            with app_tracer.start_as_current_span("work sync"):
                return {"seen": [threading.current_thread().name]}

    builder = StateGraph(State)
    builder.add_node(Blocking())
    builder.add_node(SyncWork())
    builder.add_edge(START, "Blocking")
    builder.add_edge("Blocking", "SyncWork")
    try:
        result = await builder.compile().ainvoke({})
    finally:
        await threads.aclose()
    main = threading.current_thread().name
    assert all(name != main for name in result["seen"])  # really in other threads
    finished = spans.get_finished_spans()
    run = only(finished, "invoke_workflow LangGraph")
    blocking, sync_node = only(finished, "node Blocking"), only(finished, "node SyncWork")
    assert is_child(blocking, run)
    assert is_child(sync_node, run)
    assert is_child(only(finished, "work offloaded"), blocking)
    assert is_child(only(finished, "work sync"), sync_node)


async def test_send_fanout_of_five_each_client_span_under_its_own_task(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))

    class Worker(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            await http.request("GET", state["path"])
            return {"seen": [state["path"]]}

    def plan(state: State) -> list[Send]:
        return [Send("Worker", {"path": f"/json?item={i}"}) for i in range(5)]

    builder = StateGraph(State)
    builder.add_node(Worker())
    builder.add_conditional_edges(START, plan, ["Worker"])
    try:
        result = await builder.compile().ainvoke({})
    finally:
        await http.aclose()
    assert len(result["seen"]) == 5
    finished = spans.get_finished_spans()
    run = only(finished, "invoke_workflow LangGraph")
    workers = by_name(finished, "node Worker")
    gets = by_name(finished, "GET")
    assert len(workers) == 5
    assert len(gets) == 5
    assert all(is_child(worker, run) for worker in workers)
    # Each request under the task that made it, one per task.
    assert sorted(parent_of(get) for get in gets) == sorted(w.context.span_id for w in workers)
    task_ids = {dict(worker.attributes or {})["langgraph.task.id"] for worker in workers}
    assert len(task_ids) == 5


async def test_subgraph_invoked_from_a_node_is_under_that_node(
    spans: InMemorySpanExporter,
) -> None:
    class Inner(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            return {"seen": ["inner"]}

    inner_builder = StateGraph(State)
    inner_builder.add_node(Inner())
    inner_builder.add_edge(START, "Inner")
    inner = inner_builder.compile()

    class Outer(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            out = await inner.ainvoke({})
            return {"seen": out["seen"]}

    builder = StateGraph(State)
    builder.add_node(Outer())
    builder.add_edge(START, "Outer")
    assert (await builder.compile().ainvoke({}))["seen"] == ["inner"]
    finished = spans.get_finished_spans()
    run, outer, inner_span = (
        only(finished, "invoke_workflow LangGraph"),
        only(finished, "node Outer"),
        only(finished, "node Inner"),
    )
    assert is_child(outer, run)
    assert is_child(inner_span, outer)
    assert str(dict(inner_span.attributes or {})["langgraph.checkpoint.ns"]).startswith("Outer:")


# -- interrupts, retries, rate limits ------------------------------------------------------


async def test_interrupt_is_an_event_and_resume_is_a_new_run(
    spans: InMemorySpanExporter,
) -> None:
    class Review(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            answer = interrupt("approve?")
            return {"seen": [str(answer)]}

    builder = StateGraph(State)
    builder.add_node(Review())
    builder.add_edge(START, "Review")
    graph = builder.compile(checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "review-1"}}
    paused = await graph.ainvoke({}, config)
    assert "__interrupt__" in paused
    resumed = await graph.ainvoke(Command(resume="yes"), config)
    assert resumed["seen"] == ["yes"]
    finished = spans.get_finished_spans()
    runs = by_name(finished, "invoke_workflow LangGraph")
    reviews = by_name(finished, "node Review")
    assert len(runs) == 2
    assert len(reviews) == 2
    first, second = sorted(reviews, key=lambda span: span.start_time or 0)
    assert [event.name for event in first.events] == ["langgraph.interrupt"]
    assert first.status.status_code is StatusCode.UNSET
    assert second.events == ()
    assert second.status.status_code is StatusCode.UNSET
    assert {dict(run.attributes or {})["gen_ai.conversation.id"] for run in runs} == {"review-1"}
    assert first.context.trace_id != second.context.trace_id
    assert all(any(is_child(review, run) for run in runs) for review in reviews)


async def test_retry_policy_failure_one_span_per_attempt(
    spans: InMemorySpanExporter,
) -> None:
    class Flaky(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            raise ConnectionError("down")

    builder = StateGraph(State)
    builder.add_node(Flaky(), retry_policy=RetryPolicy(max_attempts=2, initial_interval=0.01))
    builder.add_edge(START, "Flaky")
    with pytest.raises(ConnectionError, match="down"):
        await builder.compile().ainvoke({})
    finished = spans.get_finished_spans()
    run = only(finished, "invoke_workflow LangGraph")
    attempts = sorted(by_name(finished, "node Flaky"), key=lambda span: span.start_time or 0)
    assert [dict(span.attributes or {})["langgraph.node.attempt"] for span in attempts] == [1, 2]
    for span in attempts:
        assert is_child(span, run)
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == "ConnectionError"
        (event,) = span.events
        assert event.name == "exception"
        assert dict(event.attributes or {})["exception.message"] == "down"
    assert run.status.status_code is StatusCode.ERROR


async def test_rate_limited_node_waits_inside_its_span(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))

    async def call(state: State) -> dict[str, Any]:
        await http.request("GET", "/json")
        return {"seen": ["called"]}

    limiter = RateLimiter(RateLimit(rate=20, capacity=1))
    builder = StateGraph(State)
    builder.add_node("limited", RateLimitedNode(call, limiter))
    builder.add_edge(START, "limited")
    graph = builder.compile()
    try:
        for _ in range(3):  # the second and third wait about 50 ms for a token
            await graph.ainvoke({})
    finally:
        await http.aclose()
    finished = spans.get_finished_spans()
    nodes = by_name(finished, "node limited")
    gets = by_name(finished, "GET")
    assert len(nodes) == 3
    assert len(gets) == 3
    assert sorted(parent_of(get) for get in gets) == sorted(n.context.span_id for n in nodes)
    for node in nodes:
        (get,) = [g for g in gets if parent_of(g) == node.context.span_id]
        assert node.start_time <= get.start_time
        assert get.end_time <= node.end_time


# -- function nodes, switching, metrics ----------------------------------------------------


async def test_traced_function_nodes_sync_and_async(spans: InMemorySpanExporter) -> None:
    def plain(state: State, config: RunnableConfig) -> dict[str, Any]:
        return {"seen": [str(config["metadata"]["langgraph_node"])]}

    async def aplain(state: State) -> dict[str, Any]:
        return {"seen": ["async"]}

    builder = StateGraph(State)
    builder.add_node("first", tracing.traced(plain))
    builder.add_node("second", tracing.traced(aplain))
    builder.add_edge(START, "first")
    builder.add_edge("first", "second")
    assert (await builder.compile().ainvoke({}))["seen"] == ["first", "async"]
    finished = spans.get_finished_spans()
    run = only(finished, "invoke_workflow LangGraph")
    assert is_child(only(finished, "node first"), run)
    assert is_child(only(finished, "node second"), run)


def test_off_means_the_generated_call_and_no_spans() -> None:
    class Plain(BaseNode):
        def execute(self, state: State) -> dict[str, Any]:
            return {"seen": ["x"]}

    assert not tracing.enabled()
    assert Plain.__call__ is node_classes.generated_call(Plain)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.recording(provider):
        assert Plain.__call__ is not node_classes.generated_call(Plain)
        builder = StateGraph(State)
        builder.add_node(Plain())
        builder.add_edge(START, "Plain")
        builder.compile().invoke({})
    assert Plain.__call__ is node_classes.generated_call(Plain)
    assert [span.name for span in exporter.get_finished_spans()] == [
        "node Plain",
        "invoke_workflow LangGraph",
    ]
    builder.compile().invoke({})
    assert len(exporter.get_finished_spans()) == 2  # nothing more once off


def test_metrics_and_tracing_together(spans: InMemorySpanExporter) -> None:
    metrics.enable()
    builder = StateGraph(State)
    builder.add_node(Count())
    builder.add_edge(START, "Count")
    builder.compile().invoke({})
    assert metrics.snapshot().nodes["Count"].calls == 1
    assert len(by_name(spans.get_finished_spans(), "node Count")) == 1
    tracing.disable()
    builder.compile().invoke({})
    assert metrics.snapshot().nodes["Count"].calls == 2
    assert len(by_name(spans.get_finished_spans(), "node Count")) == 1


def test_enable_refuses_what_is_not_a_provider() -> None:
    with pytest.raises(TypeError, match=r"tracing\.enable tracer_provider must be"):
        tracing.enable("otlp")  # type: ignore[arg-type]


# -- concurrency: no span parented to another run's node ------------------------------------


def _golden_graph(http: HttpClient) -> Any:
    class Work(AsyncBaseNode):
        async def execute(self, state: State) -> dict[str, Any]:
            await http.request("GET", state["path"])
            await asyncio.sleep(0)
            return {"seen": [state["path"]]}

    def plan(state: State) -> list[Send]:
        return [Send("Work", {"path": f"{state['path']}&i={i}"}) for i in range(3)]

    builder = StateGraph(State)
    builder.add_node(Work())
    builder.add_conditional_edges(START, plan, ["Work"])
    return builder.compile()


def assert_runs_isolated(finished: tuple[ReadableSpan, ...], runs: int) -> None:
    by_id = {span.context.span_id: span for span in finished}
    gets = by_name(finished, "GET")
    assert len(by_name(finished, "invoke_workflow LangGraph")) == runs
    assert len(gets) == 3 * runs
    for get in gets:
        node = by_id[parent_of(get)]  # type: ignore[index]
        assert node.name == "node Work"
        assert node.context.trace_id == get.context.trace_id
        run = by_id[parent_of(node)]  # type: ignore[index]
        assert run.name == "invoke_workflow LangGraph"
        # The request's query names the run it belongs to: ?run=<k>&i=<i>.
        run_tag = str(dict(get.attributes or {})["url.full"])
        assert "?" not in run_tag  # the query is never recorded
    # Each run's trace holds exactly its own three nodes and three requests.
    traces: dict[int, list[str]] = {}
    for span in finished:
        traces.setdefault(span.context.trace_id, []).append(span.name)
    assert len(traces) == runs
    for names in traces.values():
        assert sorted(names) == sorted(["invoke_workflow LangGraph"] + ["node Work", "GET"] * 3)


async def test_concurrent_runs_on_one_loop_never_share_parents(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    http = HttpClient(HttpSettings(base_url=http_server.url))
    graph = _golden_graph(http)
    try:
        await asyncio.gather(*(graph.ainvoke({"path": f"/json?run={k}"}) for k in range(8)))
    finally:
        await http.aclose()
    assert_runs_isolated(spans.get_finished_spans(), 8)


def test_concurrent_runs_in_threads_never_share_parents(
    spans: InMemorySpanExporter, http_server: HttpTestServer
) -> None:
    errors: list[BaseException] = []

    def one(k: int) -> None:
        async def main() -> None:
            http = HttpClient(HttpSettings(base_url=http_server.url))
            try:
                await _golden_graph(http).ainvoke({"path": f"/json?run={k}"})
            finally:
                await http.aclose()

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_runs_isolated(spans.get_finished_spans(), 4)
