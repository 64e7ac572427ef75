"""HttpStreamNode at the edges of the protocol, against small real servers on 127.0.0.1.

Each test starts its own aiohttp app (or a raw asyncio server, for what aiohttp refuses to
send) so it can misbehave exactly as it needs to: drop mid-event, send huge events, send
blocks without data, or accept the request and never answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.http_stream import (
    HttpStreamNode,
    HttpStreamPolicy,
    StreamEventTooLarge,
    StreamIdleTimeout,
    StreamInterruptedError,
    stream_http,
)
from aiohttp import web
from langgraph.graph import START, StateGraph

from tests.helpers import other_tasks_after
from tests.http_server import serving_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class State(TypedDict, total=False):
    url: str
    stream: dict[str, Any]


def build(node: HttpStreamNode) -> Any:
    builder = StateGraph(State)
    builder.add_node(node)
    builder.add_edge(START, node.name)
    return builder.compile()


@asynccontextmanager
async def serving(**routes: Handler) -> AsyncIterator[HttpClient]:
    """An aiohttp app with ``routes`` (``sse=handler`` serves ``/sse``) and a client for it."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(f"/{path}", handler)
    async with serving_app(app) as url:
        client = HttpClient(HttpSettings(base_url=url))
        try:
            yield client
        finally:
            await client.aclose()


async def event_stream(request: web.Request, *parts: bytes) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for part in parts:
        await response.write(part)
    return response


def tick(i: int) -> bytes:
    return f"id: {i}\nevent: tick\ndata: {json.dumps({'i': i})}\n\n".encode()


async def collect(graph: Any, url: str) -> tuple[list[Any], BaseException | None]:
    """The custom chunks of a run, and the error it ended with (None if it completed)."""
    received: list[Any] = []
    try:
        async for chunk in graph.astream({"url": url}, stream_mode="custom"):
            received.append(chunk)
    except Exception as exc:
        return received, exc
    return received, None


# -- 17: the resume point is the last event the caller got ------------------------------


async def test_a_drop_inside_an_event_resumes_from_the_last_delivered_one() -> None:
    async def resumable(request: web.Request) -> web.StreamResponse:
        # Honours Last-Event-ID; the first connection dies in the middle of event 2.
        after = int(request.headers.get("Last-Event-ID", "-1"))
        if after < 0:
            response = await event_stream(request, tick(0), tick(1), b'id: 2\ndata: {"i": 2')
            await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.abort()
            return response
        response = await event_stream(request, *(tick(i) for i in range(after + 1, 4)))
        await response.write_eof()
        return response

    async with serving(events=resumable) as http:
        graph = build(HttpStreamNode(http))
        received, error = await collect(graph, "/events")
        assert [event["id"] for event in received] == ["0", "1"]
        assert isinstance(error, StreamInterruptedError)
        # Event 2 was never handed over: resuming must start after 1, not after 2.
        assert error.last_event_id == "1"
        assert error.items == 2
        assert "after 2 items (last event id '1')" in str(error)

        # Resuming with that id (as an SSE client would) loses nothing and repeats nothing.
        resumed = [
            event
            async for event in stream_http(
                http, "/events", headers={"Last-Event-ID": error.last_event_id}
            )
        ]
        assert [event["id"] for event in received + resumed] == ["0", "1", "2", "3"]


async def test_an_event_without_an_id_keeps_the_previous_resume_point() -> None:
    async def drops(request: web.Request) -> web.StreamResponse:
        response = await event_stream(request, tick(0), b"data: no id\n\n", b"id: 9\ndata: x")
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return response

    async with serving(events=drops) as http:
        received, error = await collect(build(HttpStreamNode(http)), "/events")
    assert received[1] == {"event": "message", "data": "no id"}
    assert isinstance(error, StreamInterruptedError)
    assert error.last_event_id == "0"


# -- 18: large events arrive whole, up to a bound; beyond it, a typed error ---------------


async def test_an_event_of_several_mebibytes_arrives_whole() -> None:
    image = "QUJD" * (3 * 1024 * 1024 // 4)  # 3 MiB of base64, one data: line

    async def big(request: web.Request) -> web.StreamResponse:
        payload = f"event: image\ndata: {image}\n\n".encode()
        response = await event_stream(request, tick(0))
        for start in range(0, len(payload), 100_000):  # in many TCP writes
            await response.write(payload[start : start + 100_000])
        await response.write(tick(1))
        await response.write_eof()
        return response

    async with serving(events=big) as http:
        graph = build(HttpStreamNode(http))
        received, error = await collect(graph, "/events")
        assert error is None
        assert [event["event"] for event in received] == ["tick", "image", "tick"]
        assert received[1]["data"] == image
        state = await graph.ainvoke({"url": "/events"})
        assert state["stream"] == {"items": 3, "last_event_id": "1"}


async def test_an_event_beyond_max_event_bytes_raises_a_typed_error() -> None:
    async def one_line(request: web.Request) -> web.StreamResponse:
        response = await event_stream(request, tick(0), b"data: " + b"x" * 300_000 + b"\n\n")
        await response.write_eof()
        return response

    async def many_lines(request: web.Request) -> web.StreamResponse:
        line = b"data: " + b"y" * 1000 + b"\n"
        response = await event_stream(request, tick(0), line * 300, b"\n")
        await response.write_eof()
        return response

    async def long_line(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        await response.write(b"short\n" + b"z" * 300_000 + b"\n")
        await response.write_eof()
        return response

    policy = HttpStreamPolicy(max_event_bytes=256 * 1024)
    async with serving(one=one_line, many=many_lines, lines=long_line) as http:
        for path in ("/one", "/many"):
            received, error = await collect(build(HttpStreamNode(http, policy)), path)
            assert [event["id"] for event in received] == ["0"]
            assert isinstance(error, StreamEventTooLarge), error
            assert error.max_event_bytes == 256 * 1024
            assert error.items == 1
            assert error.url.endswith(path)
            assert f"GET {error.url} sent an event larger than 262144 bytes" in str(error)
            assert "max_event_bytes" in str(error)
        lines_policy = HttpStreamPolicy(format="lines", max_event_bytes=256 * 1024)
        received, error = await collect(build(HttpStreamNode(http, lines_policy)), "/lines")
        assert received == ["short"]
        assert isinstance(error, StreamEventTooLarge), error
        assert "a line larger than 262144 bytes" in str(error)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "HttpStreamPolicy max_event_bytes must be an int >= 1, got 0"),
        (1.5, TypeError, "HttpStreamPolicy max_event_bytes must be an int >= 1, got 1.5"),
        (True, TypeError, "HttpStreamPolicy max_event_bytes must be an int >= 1, got True"),
    ],
)
def test_max_event_bytes_is_checked(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        HttpStreamPolicy(max_event_bytes=value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (
            "5",
            TypeError,
            "HttpStreamPolicy idle_timeout must be a finite number .* or None, got '5'",
        ),
        (
            float("nan"),
            ValueError,
            "HttpStreamPolicy idle_timeout must be a finite number .* or None, got nan",
        ),
        (float("inf"), ValueError, "idle_timeout must be a finite number .* or None, got inf"),
    ],
)
def test_idle_timeout_is_checked(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        HttpStreamPolicy(idle_timeout=value)


# -- 19: no response headers at all is an idle stream too --------------------------------


async def test_a_server_that_never_sends_headers_raises_stream_idle_timeout() -> None:
    requests: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Accept the request, answer nothing, wait for the client to give up.
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    http = HttpClient(HttpSettings(base_url=f"http://127.0.0.1:{port}"))
    before = asyncio.all_tasks()
    try:
        graph = build(HttpStreamNode(http, HttpStreamPolicy(idle_timeout=0.3)))
        received, error = await asyncio.wait_for(collect(graph, "/events?token=s3cret"), 10)
        assert received == []
        assert isinstance(error, StreamIdleTimeout), repr(error)
        assert error.url == f"http://127.0.0.1:{port}/events?token=***"
        assert error.items == 0
        assert str(error) == (
            f"GET http://127.0.0.1:{port}/events?token=*** sent no response headers"
            " for 0.3s (idle_timeout)"
        )
        assert len(requests) == 1
        assert requests[0].startswith(b"GET /events?token=s3cret HTTP/1.1")
    finally:
        await http.aclose()
        server.close()
        await server.wait_closed()
    assert await other_tasks_after(before) == set()


# -- 20: blocks without data are not events ----------------------------------------------


async def test_blocks_without_data_are_not_dispatched() -> None:
    async def sparse(request: web.Request) -> web.StreamResponse:
        response = await event_stream(
            request,
            b"event: ping\n\n",  # an event type alone
            b"id: 7\n\n",  # an id alone
            b": comment\n\n",
            b"retry: 1000\n\n",
            b'id: 1\nevent: tick\ndata: {"i": 1}\n\n',
            b"event: ping\r\n\r\n",  # CRLF line ends
            b"data:\n\n",  # a data field, empty: an event with empty data
            b"data: a\ndata: b\r\n\r\n",
        )
        await response.write_eof()
        return response

    async with serving(events=sparse) as http:
        graph = build(HttpStreamNode(http))
        received, error = await collect(graph, "/events")
        assert error is None
        assert received == [
            {"event": "tick", "id": "1", "data": '{"i": 1}'},
            {"event": "message", "data": ""},
            {"event": "message", "data": "a\nb"},
        ]
        assert json.loads(received[0]["data"]) == {"i": 1}
        state = await graph.ainvoke({"url": "/events"})
        assert state["stream"] == {"items": 3, "last_event_id": "1"}

        # stream_http, used alone, yields the same.
        async with aclosing(stream_http(http, "/events")) as events:
            assert [event async for event in events] == received
