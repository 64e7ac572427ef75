"""HttpStreamNode against the suite's real aiohttp server: SSE, chunked, drops, stalls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.http_client import (
    HttpClient,
    HttpError,
    HttpSettings,
    HTTPStatusError,
)
from act_operator_lib.cookbook.http_stream import (
    HttpStreamNode,
    HttpStreamPolicy,
    StreamEventTooLarge,
    StreamIdleTimeout,
    StreamInterruptedError,
    stream_http,
)
from act_operator_lib.cookbook.stream_pipeline import StreamPipelineNode
from aiohttp import web
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import NodeTimeoutError
from langgraph.graph import START, StateGraph
from langgraph.types import TimeoutPolicy

from tests.helpers import cancel_after_first_chunk, other_tasks_after, run_example
from tests.http_server import HttpTestServer, serving_app


class State(TypedDict, total=False):
    url: str
    stream: dict[str, Any]
    processed: int


@pytest.fixture
async def http(http_server: HttpTestServer) -> AsyncIterator[HttpClient]:
    client = HttpClient(HttpSettings(base_url=http_server.url, timeout=5), name="stream-test")
    yield client
    await client.aclose()


def build(node: Any, *, timeout: Any = None, checkpointer: Any = None) -> Any:
    builder = StateGraph(State)
    builder.add_node(node, timeout=timeout)
    builder.add_edge(START, node.name)
    return builder.compile(checkpointer=checkpointer)


async def test_sse_events_reach_the_custom_stream_as_they_arrive(http: HttpClient) -> None:
    graph = build(HttpStreamNode(http))
    arrivals: list[tuple[float, Any]] = []
    final: dict[str, Any] = {}
    start = time.monotonic()
    async for mode, chunk in graph.astream(
        {"url": "/sse?n=4&delay=0.1"}, stream_mode=["custom", "values"]
    ):
        if mode == "custom":
            arrivals.append((time.monotonic() - start, chunk))
        else:
            final = chunk
    assert [event for _, event in arrivals] == [
        {"event": "tick", "id": str(i), "data": f'{{"i": {i}}}'} for i in range(4)
    ]
    # Live, not buffered: the first event arrived well before the last was sent.
    assert arrivals[-1][0] - arrivals[0][0] >= 0.25
    assert final["stream"] == {"items": 4, "last_event_id": "3"}


async def test_chunked_body_is_forwarded_line_by_line(http: HttpClient) -> None:
    graph = build(HttpStreamNode(http, HttpStreamPolicy(format="lines", output_key="stream")))
    chunks = [c async for c in graph.astream({"url": "/chunked?n=3"}, stream_mode="custom")]
    assert chunks == ["chunk 0", "chunk 1", "chunk 2"]
    state = await graph.ainvoke({"url": "/chunked?n=3"})
    assert state["stream"] == {"items": 3, "last_event_id": None}


async def test_server_closing_mid_stream_raises_with_where_it_stopped(
    http: HttpClient,
) -> None:
    graph = build(HttpStreamNode(http), checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "drop"}}
    received: list[Any] = []
    before = asyncio.all_tasks()

    async def run() -> None:
        async for chunk in graph.astream({"url": "/sse-drop?n=2"}, config, stream_mode="custom"):
            received.append(chunk)

    with pytest.raises(StreamInterruptedError) as caught:
        await run()
    assert [event["id"] for event in received] == ["0", "1"]
    assert caught.value.last_event_id == "1"
    assert caught.value.items == 2
    assert "closed mid-stream after 2 items (last event id '1')" in str(caught.value)
    assert isinstance(caught.value, ConnectionError)  # LangGraph's default RetryPolicy retries it
    assert await other_tasks_after(before) == set()
    state = await graph.aget_state(config)
    assert state.values == {"url": "/sse-drop?n=2"}
    assert state.next == ("HttpStreamNode",)


async def test_stalled_stream_hits_the_in_node_idle_timeout(
    http: HttpClient, http_server: HttpTestServer
) -> None:
    graph = build(HttpStreamNode(http, HttpStreamPolicy(idle_timeout=0.3)))
    received: list[Any] = []
    before = asyncio.all_tasks()
    start = time.monotonic()

    async def run() -> None:
        async for chunk in graph.astream({"url": "/stall?seconds=30"}, stream_mode="custom"):
            received.append(chunk)

    with pytest.raises(
        StreamIdleTimeout, match=r"sent nothing for 0.3s \(idle_timeout\) after 1 items"
    ):
        await run()
    assert time.monotonic() - start < 5
    assert received == [{"event": "tick", "id": "0", "data": '{"i": 0}'}]
    assert await other_tasks_after(before) == set()


async def test_stalled_stream_hits_langgraphs_idle_timeout_via_heartbeats(
    http: HttpClient,
) -> None:
    policy = TimeoutPolicy(idle_timeout=0.3, refresh_on="heartbeat")
    no_socket_limit = HttpStreamPolicy(idle_timeout=None)
    before = asyncio.all_tasks()
    with pytest.raises(NodeTimeoutError) as caught:
        await build(HttpStreamNode(http, no_socket_limit), timeout=policy).ainvoke(
            {"url": "/stall?seconds=30"}
        )
    assert caught.value.kind == "idle"
    assert await other_tasks_after(before) == set()

    # A stream slower in total than the idle timeout, but never idle that long, completes.
    state = await build(HttpStreamNode(http, no_socket_limit), timeout=policy).ainvoke(
        {"url": "/sse?n=6&delay=0.1"}
    )
    assert state["stream"] == {"items": 6, "last_event_id": "5"}


async def test_keepalive_comments_keep_the_socket_busy_but_not_the_idle_timeout() -> None:
    async def keepalives(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await response.write(b'id: 0\nevent: tick\ndata: {"i": 0}\n\n')
        for _ in range(200):  # then only comments, every 0.05 s: the socket is never silent
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/keepalives", keepalives)
    async with serving_app(app) as url:
        client = HttpClient(HttpSettings(base_url=url))
        try:
            # The socket limit (0.2 s) never fires; LangGraph's heartbeat idle timeout does.
            node = HttpStreamNode(client, HttpStreamPolicy(idle_timeout=0.2))
            policy = TimeoutPolicy(idle_timeout=0.4, refresh_on="heartbeat")
            graph = build(node, timeout=policy)
            received: list[Any] = []

            async def run() -> None:
                async for chunk in graph.astream({"url": "/keepalives"}, stream_mode="custom"):
                    received.append(chunk)

            with pytest.raises(NodeTimeoutError) as caught:
                await run()
            assert caught.value.kind == "idle"
            assert received == [{"event": "tick", "id": "0", "data": '{"i": 0}'}]
        finally:
            await client.aclose()


async def test_cancelling_the_run_mid_stream_releases_the_connection(
    http: HttpClient,
) -> None:
    graph = build(HttpStreamNode(http))
    before = asyncio.all_tasks()
    stream = graph.astream({"url": "/sse?n=100&delay=0.05"}, stream_mode="custom")
    assert await cancel_after_first_chunk(stream)
    assert await other_tasks_after(before) == set()
    connector = http.session().connector
    assert connector is not None
    # The half-read response was closed, not left checked out of the pool.
    assert not connector._acquired  # aiohttp keeps no public count of in-use connections
    # The session still works for the next run.
    state = await graph.ainvoke({"url": "/sse?n=1"})
    assert state["stream"]["items"] == 1


async def test_error_status_raises_before_streaming(http: HttpClient) -> None:
    with pytest.raises(HTTPStatusError, match=r"GET http://127.0.0.1:\d+/status/503 returned 503"):
        await build(HttpStreamNode(http)).ainvoke({"url": "/status/503"})


async def test_stream_http_feeds_the_backpressured_pipeline(http: HttpClient) -> None:
    async def events(state: State) -> AsyncIterator[Any]:
        async with aclosing(stream_http(http, state["url"])) as stream:
            async for event in stream:
                yield event

    async def tick_number(event: dict[str, str]) -> int:
        return int(event["id"])

    graph = build(StreamPipelineNode(events, tick_number))
    chunks = [c async for c in graph.astream({"url": "/sse?n=5"}, stream_mode="custom")]
    assert chunks == [0, 1, 2, 3, 4, {"node": "StreamPipelineNode", "processed": 5}]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "json"}, "format must be 'sse' or 'lines', got 'json'"),
        ({"idle_timeout": 0}, "idle_timeout must be a finite number of seconds > 0 or None, got 0"),
        ({"url_key": ""}, "url_key must be a non-empty str, got ''"),
        ({"output_key": ""}, "output_key must be a non-empty str or None, got ''"),
    ],
)
def test_policy_rejects_bad_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpStreamPolicy(**kwargs)


def test_node_rejects_a_client_that_is_not_an_http_client() -> None:
    with pytest.raises(TypeError, match="client must be an HttpClient, got str"):
        HttpStreamNode("http://127.0.0.1")  # type: ignore[arg-type]


def test_example_runs() -> None:
    stdout = run_example("http_stream")
    assert "custom {'event': 'tick', 'id': '4', 'data': '{\"i\": 4}'}" in stdout
    assert "'stream': {'items': 5, 'last_event_id': '4'}" in stdout


async def read_all(stream: AsyncGenerator[Any, None]) -> list[Any]:
    async with aclosing(stream) as items:
        return [item async for item in items]


async def test_every_stream_failure_is_an_http_error(http: HttpClient) -> None:
    assert issubclass(StreamIdleTimeout, HttpError)
    assert issubclass(StreamEventTooLarge, HttpError)
    assert issubclass(StreamInterruptedError, HttpError)
    with pytest.raises(HttpError) as dropped:
        await read_all(stream_http(http, "/sse-drop"))
    assert isinstance(dropped.value, StreamInterruptedError)
    assert isinstance(dropped.value, ConnectionError)


async def test_a_status_error_carries_retry_after_as_the_client_raises_it(
    http: HttpClient,
) -> None:
    url = "/retry-after?key=stream-429&fails=1&status=429&after=7"
    with pytest.raises(HTTPStatusError) as caught:
        await read_all(stream_http(http, url))
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    assert caught.value.snippet == "slow down"


async def test_a_relative_url_is_joined_to_base_url_as_a_prefix(
    http_server: HttpTestServer,
) -> None:
    # base_url ".../status" + "/418" is ".../status/418", as HttpClient requests it
    # (aiohttp's own join would drop the base path and ask for "/418").
    client = HttpClient(HttpSettings(base_url=http_server.url + "/status"))
    try:
        with pytest.raises(HTTPStatusError) as caught:
            await read_all(stream_http(client, "/418"))
        assert caught.value.status == 418
        assert caught.value.url.endswith("/status/418")
    finally:
        await client.aclose()


async def test_a_stream_waiting_for_a_pooled_connection_is_not_a_connect_timeout(
    http_server: HttpTestServer,
) -> None:
    # One connection; the second stream waits for the first to finish, far longer than
    # connect_timeout, which bounds opening a socket, not waiting for the pool.
    client = HttpClient(
        HttpSettings(base_url=http_server.url, limit=1, connect_timeout=0.2), name="one-conn"
    )
    first_event = asyncio.Event()

    async def slow_stream() -> int:
        seen = 0
        async with aclosing(stream_http(client, "/sse?n=3&delay=0.5")) as events:
            async for _ in events:
                seen += 1
                first_event.set()
        return seen

    try:
        slow = asyncio.create_task(slow_stream())
        await first_event.wait()
        queued = await read_all(stream_http(client, "/sse?n=2"))
        assert len(queued) == 2
        assert await slow == 3
    finally:
        await client.aclose()
