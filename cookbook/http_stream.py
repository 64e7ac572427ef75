"""Stream a chunked or Server-Sent-Events HTTP response into the graph's custom stream.

    http = HttpClient(HttpSettings(base_url="http://127.0.0.1:8080"))      # the pooled session
    node = HttpStreamNode(http, HttpStreamPolicy(format="sse", idle_timeout=10))
    builder.add_node(node, timeout=TimeoutPolicy(idle_timeout=15, refresh_on="heartbeat"))
    async for event in graph.astream({"url": "/events"}, stream_mode="custom"):
        ...  # {"event": "tick", "id": "0", "data": '{"i": 0}'} as each event arrives

The response is read incrementally from the shared ``HttpClient`` session: each
Server-Sent Event (``format="sse"``: a dict of ``event``, ``data``, ``id``) or each line of
a chunked body (``format="lines"``: a ``str``) goes to ``runtime.stream_writer`` as soon as
it is complete, so memory holds one event, never the body. The node's state update is a
summary: ``{output_key: {"items": n, "last_event_id": id}}`` (the id to resume from).

Two idle timeouts, because they catch different things. In the node, aiohttp's
``sock_read`` timeout bounds the silence between two reads of the socket and raises
``StreamIdleTimeout`` naming the URL. On the node, LangGraph's
``TimeoutPolicy(idle_timeout=..., refresh_on="heartbeat")`` bounds the silence between two
forwarded items: the node calls ``runtime.heartbeat()`` for each one, so a server that keeps
the socket busy (comments, keep-alives) without sending anything useful still times out,
raising LangGraph's ``NodeTimeoutError``. The session's total request timeout does not apply:
a stream has no natural end, so cap the whole node with ``TimeoutPolicy(run_timeout=...)``.
A server that accepts the request but never sends the response headers is idle too: it
raises ``StreamIdleTimeout`` after ``idle_timeout`` (earlier versions let aiohttp's
``SocketTimeoutError`` escape). A connection closed mid-stream raises
``StreamInterruptedError`` (a ``ConnectionError``, so LangGraph's default ``RetryPolicy``
retries it) with how far the stream got: ``last_event_id`` is the id of the last event
handed to the caller, never of one cut off half-way, so sending it back as
``Last-Event-ID`` resumes without a gap (earlier versions named the half-received event).

The body is split into lines by the recipe, not by aiohttp's ``readline`` (which refuses
lines over 512 KiB), so an event carrying a large payload (a base64 image) arrives whole.
``HttpStreamPolicy.max_event_bytes`` (16 MiB by default) bounds the memory one event may
take; a larger event, or a longer line in ``format="lines"``, raises ``StreamEventTooLarge``
(a ``ValueError``: retrying would fetch the same event). Events follow the SSE spec: a block
without a ``data:`` field (only ``event:``, ``id:``, ``retry:`` or comments) is not
dispatched, and an event without ``id:`` has no ``"id"`` key; lines end with LF or CRLF.

Every failure is an ``http_client.HttpError`` (changed: the three stream errors were not):
``HTTPStatusError`` for a non-2xx answer (with its ``Retry-After``, as ``HttpClient``
raises it), and the stream errors above. The request follows the client's rules: a
relative URL is joined to ``base_url`` as a prefix (changed: aiohttp's RFC 3986 join
dropped the base URL's path for ``"/events"``), its ``egress`` policy is checked before
connecting, and ``connect_timeout`` bounds opening a socket only (changed: it also
bounded waiting for a free pooled connection, so a stream queued behind busy ones failed).

When to use LangGraph's native tools instead: if the whole body is small and only the
result matters, ``HttpClient.get_json`` in a plain node with ``RetryPolicy`` and
``TimeoutPolicy(run_timeout=...)`` is simpler; stream only when the caller wants items live
or the body is too big to hold.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_choice, check_int, check_number, check_str

from .http_client import HttpClient, HttpError, HttpSettings, safe_url, status_error

__all__ = [
    "MAX_EVENT_BYTES",
    "HttpStreamNode",
    "HttpStreamPolicy",
    "StreamEventTooLarge",
    "StreamIdleTimeout",
    "StreamInterruptedError",
    "stream_http",
]

_FORMATS = ("sse", "lines")

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Default bound on one event's data (or one line): room for a ~12 MB image in base64."""


def _check_max_event_bytes(owner: str, value: object) -> None:
    check_int(owner, "max_event_bytes", value, min=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpStreamPolicy:
    """How to split the body, how long it may stay silent, where the URL and summary live."""

    format: Literal["sse", "lines"] = "sse"
    """``"sse"``: Server-Sent Events as dicts; ``"lines"``: each line of the body as a str."""
    idle_timeout: float | None = 30.0
    """Most seconds between two reads of the socket (aiohttp ``sock_read``); None: no limit."""
    url_key: str = "url"
    """State key holding the URL (absolute, or relative to the client's ``base_url``)."""
    output_key: str | None = "stream"
    """State key for ``{"items": n, "last_event_id": id}``; None: return no update."""
    max_event_bytes: int = MAX_EVENT_BYTES
    """Most bytes of ``data:`` lines one event may carry (or one line, for ``"lines"``)."""

    def __post_init__(self) -> None:
        _check_max_event_bytes("HttpStreamPolicy", self.max_event_bytes)
        check_choice("HttpStreamPolicy", "format", self.format, _FORMATS)
        idle = self.idle_timeout
        check_number(
            "HttpStreamPolicy", "idle_timeout", idle, gt=0, unit="seconds", allow_none=True
        )
        check_str("HttpStreamPolicy", "url_key", self.url_key)
        check_str("HttpStreamPolicy", "output_key", self.output_key, allow_none=True)


class StreamIdleTimeout(HttpError, TimeoutError):
    """The server sent nothing for ``idle_timeout`` seconds: no headers, or mid-stream."""

    def __init__(
        self, url: str, idle_timeout: float, items: int, *, before_headers: bool = False
    ) -> None:
        self.url = safe_url(url)
        self.idle_timeout = idle_timeout
        self.items = items
        if before_headers:
            message = f"sent no response headers for {idle_timeout:g}s (idle_timeout)"
        else:
            message = f"sent nothing for {idle_timeout:g}s (idle_timeout) after {items} items"
        super().__init__(f"GET {self.url} {message}")


class StreamEventTooLarge(HttpError, ValueError):
    """One event (or line) outgrew ``max_event_bytes``; the items before it were delivered."""

    def __init__(self, url: str, max_event_bytes: int, items: int, *, what: str) -> None:
        self.url = safe_url(url)
        self.max_event_bytes = max_event_bytes
        self.items = items
        super().__init__(
            f"GET {self.url} sent {what} larger than {max_event_bytes} bytes"
            f" (max_event_bytes) after {items} items"
        )


class StreamInterruptedError(HttpError, ConnectionError):
    """The connection closed before the stream ended.

    ``last_event_id`` is the id of the last event handed to the caller (``None`` if none
    had one): send it as ``Last-Event-ID`` to resume with nothing skipped.
    """

    def __init__(self, url: str, items: int, last_event_id: str | None, reason: str) -> None:
        self.url = safe_url(url)
        self.items = items
        self.last_event_id = last_event_id
        super().__init__(
            f"GET {self.url} closed mid-stream after {items} items"
            f" (last event id {last_event_id!r}): {reason}"
        )


async def stream_http(
    client: HttpClient,
    url: str,
    *,
    format: Literal["sse", "lines"] = "sse",
    idle_timeout: float | None = 30.0,
    headers: Mapping[str, str] | None = None,
    max_event_bytes: int = MAX_EVENT_BYTES,
) -> AsyncGenerator[dict[str, str] | str, None]:
    """Yield the Server-Sent Events (dicts) or lines (strs) of ``GET url`` as they arrive.

        async with aclosing(stream_http(http, "/events")) as events:
            async for event in events:
                print(event["event"], event["data"])

    Usable as the producer of ``stream_pipeline.StreamPipelineNode`` too. Close it (aclosing)
    to release the connection early. ``max_event_bytes`` bounds one event's ``data:`` lines
    (or one line); beyond it ``StreamEventTooLarge`` is raised.
    """
    _check_max_event_bytes("stream_http", max_event_bytes)
    session = client.session()
    # No total: a stream lasts as long as it lasts. sock_read is the idle timeout.
    timeout = client.client_timeout(None, sock_read=idle_timeout)
    accept = {"Accept": "text/event-stream"} if format == "sse" else {}
    # The client's own URL rules (base_url as a prefix, the egress policy); errors name it.
    target = client.url(url)
    where = str(target)
    items = 0
    last_id: str | None = None  # the id of the last event yielded: where a resume starts
    try:
        response = await session.get(target, timeout=timeout, headers={**accept, **(headers or {})})
    except aiohttp.SocketTimeoutError:
        # sock_read also bounds the wait for the headers: a silent server is an idle stream.
        raise StreamIdleTimeout(where, idle_timeout or 0.0, 0, before_headers=True) from None
    async with response:
        if response.status >= 300:
            raise await status_error(response, "GET")
        record("http_streams", 1.0, name=client.name)
        sse = format == "sse"
        what = "an event" if sse else "a line"
        block: dict[str, str] = {}  # the "event" and "id" fields of the block being read
        data: list[str] = []
        data_bytes = 0
        partial = bytearray()  # the line still arriving
        try:
            # Split lines here rather than with aiohttp's readline, which caps a line at
            # 512 KiB; chunks without a line end are only appended, so this stays linear.
            async for chunk in response.content.iter_any():
                if b"\n" not in chunk:
                    partial += chunk
                    if len(partial) > max_event_bytes:
                        raise StreamEventTooLarge(where, max_event_bytes, items, what=what)
                    continue
                lines = chunk.split(b"\n")
                if partial:
                    partial += lines[0]
                    lines[0] = bytes(partial)
                partial = bytearray(lines.pop())
                for raw in lines:
                    if len(raw) > max_event_bytes:
                        raise StreamEventTooLarge(where, max_event_bytes, items, what=what)
                    line = raw.decode("utf-8").removesuffix("\r")
                    if not sse:
                        items += 1
                        yield line
                        continue
                    if not line:  # a blank line ends the block; only one with data is an event
                        if data:
                            items += 1
                            last_id = block.get("id", last_id)
                            yield {"event": "message", **block, "data": "\n".join(data)}
                        block, data, data_bytes = {}, [], 0
                        continue
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "data":
                        data_bytes += len(raw)
                        if data_bytes > max_event_bytes:
                            raise StreamEventTooLarge(where, max_event_bytes, items, what=what)
                        data.append(value)
                    elif field == "event":
                        block["event"] = value
                    elif field == "id" and "\0" not in value:  # the spec ignores such ids
                        block["id"] = value
                    # ":comment" lines and "retry:" are ignored: there is no reconnection here.
                if len(partial) > max_event_bytes:
                    raise StreamEventTooLarge(where, max_event_bytes, items, what=what)
            # A last line without a line end is a line; an SSE block the body cut short is
            # not an event (the spec discards it).
            if partial and not sse:
                items += 1
                yield partial.decode("utf-8").removesuffix("\r")
        except aiohttp.ServerTimeoutError:
            raise StreamIdleTimeout(where, idle_timeout or 0.0, items) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise StreamInterruptedError(
                where, items, last_id, str(exc) or type(exc).__name__
            ) from exc


class HttpStreamNode(AsyncBaseNode):
    """GET ``state[url_key]`` and forward each event or line to the custom stream as it arrives.

    builder.add_node(HttpStreamNode(http), timeout=TimeoutPolicy(idle_timeout=15))
    """

    def __init__(
        self,
        client: HttpClient,
        policy: HttpStreamPolicy | None = None,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(client, HttpClient):
            raise TypeError(
                f"{type(self).__name__} client must be an HttpClient, got {type(client).__name__}"
            )
        if policy is not None and not isinstance(policy, HttpStreamPolicy):
            raise TypeError(
                f"{type(self).__name__} policy must be an HttpStreamPolicy,"
                f" got {type(policy).__name__}"
            )
        self.client = client
        self.policy = policy or HttpStreamPolicy()

    async def execute(
        self, state: Mapping[str, Any], runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        policy = self.policy
        url = state[policy.url_key]
        write = runtime.stream_writer if runtime is not None else None
        heartbeat = runtime.heartbeat if runtime is not None else None
        items = 0
        last_id: str | None = None
        self.log("streaming", url=safe_url(url))
        # The URL comes from state, so it is untrusted: the client's egress guard checks it
        # (only base_url's origin by default; see HttpClient.for_untrusted_urls).
        client = self.client.for_untrusted_urls()
        events = stream_http(
            client,
            str(client.url(url)),
            format=policy.format,
            idle_timeout=policy.idle_timeout,
            max_event_bytes=policy.max_event_bytes,
        )
        async with aclosing(events):
            async for item in events:
                items += 1
                if isinstance(item, dict):
                    last_id = item.get("id", last_id)
                if heartbeat is not None:
                    heartbeat()  # progress for TimeoutPolicy(refresh_on="heartbeat")
                if write is not None:
                    write(item)
        self.log("stream ended", items=items)
        if policy.output_key is None:
            return None
        return {policy.output_key: {"items": items, "last_event_id": last_id}}


if __name__ == "__main__":
    import asyncio
    import json
    from typing import TypedDict

    from aiohttp import web
    from langgraph.graph import START, StateGraph
    from langgraph.types import TimeoutPolicy

    from .resources import Resources

    class State(TypedDict, total=False):
        url: str
        stream: dict[str, Any]

    async def ticks(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(5):
            await response.write(f"id: {i}\nevent: tick\ndata: {json.dumps({'i': i})}\n\n".encode())
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ticks", ticks)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            async with Resources() as resources:
                http = HttpClient(
                    HttpSettings(base_url=f"http://127.0.0.1:{port}"), resources=resources
                )
                builder = StateGraph(State)
                builder.add_node(
                    HttpStreamNode(http, HttpStreamPolicy(idle_timeout=2)),
                    timeout=TimeoutPolicy(idle_timeout=5, refresh_on="heartbeat"),
                )
                builder.add_edge(START, "HttpStreamNode")
                graph = builder.compile()
                async for mode, chunk in graph.astream(
                    {"url": "/ticks"}, stream_mode=["custom", "values"]
                ):
                    print(mode, chunk)
        finally:
            await runner.cleanup()

    asyncio.run(main())
