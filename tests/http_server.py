"""A real aiohttp server on 127.0.0.1 with well-behaved and faulty endpoints.

    with HttpTestServer() as server:            # runs in a thread with its own event loop
        url = server.url + "/json"              # usable from any test loop and from sync code
        server.hits["/json"]                    # requests seen per path

As a pytest plugin (``pytest_plugins = ["tests.http_server"]``) it provides
``http_server``: one server for the session, its counters reset before each test.
``python tests/http_server.py --port 8080`` serves in the foreground (the benchmarks run it
in a process of its own so the server does not compete with the client for the GIL).

Endpoints:
    /json                    {"ok": true, ...}
    /text, /bytes            a short text / 256-byte body
    /slow?delay=S            answers after S seconds (default 5)
    /status/{code}           that status with a short text body
    /retry-after?fails=N&after=S&key=K&status=429
                             answers `status` with ``Retry-After: S`` the first N times
                             (per key), then 200 JSON with the number of calls
    /reset                   promises a body, sends part of it, then resets the connection
    /malformed               invalid JSON labelled application/json
    /large?size=B            a B-byte body (default 50 MB), streamed
    /echo                    any method: {"method", "body", "query", "content_type"}
    /sse?n=&delay=           n Server-Sent Events (``id``, ``event: tick``, JSON data)
    /chunked?n=&delay=       n chunks ``chunk {i}\\n`` with chunked transfer encoding
    /sse-drop?n=             n events, then the connection is dropped mid-stream
    /stall?seconds=          one chunk, then nothing for `seconds` (default 60)
    /redirect?to=URL&status= a redirect (default 302) to URL
    /headers                 the request's headers as JSON
    /secret                  {"secret": "internal"}: what no guarded request may bring back

``http_server_b`` is a second server on 127.0.0.2, on the same port as ``http_server``: a
request meant for one never lands on the other by accident (egress tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

__all__ = ["HttpTestServer", "build_app", "serving_app"]

RETRY_COUNTERS = web.AppKey("retry_counters", Counter)
"""The app's ``/retry-after`` call counts per key."""


def _float(request: web.Request, key: str, default: float) -> float:
    return float(request.query.get(key, default))


def _int(request: web.Request, key: str, default: int) -> int:
    return int(request.query.get(key, default))


def _event(i: int) -> bytes:
    """One Server-Sent Event: ``id``, ``event: tick`` and JSON data ``{"i": i}``."""
    return f"id: {i}\nevent: tick\ndata: {json.dumps({'i': i})}\n\n".encode()


def build_app(hits: Counter[str] | None = None) -> web.Application:
    """The application; ``hits`` (if given) counts requests per path."""
    counters: Counter[str] = Counter()
    seen = hits if hits is not None else Counter()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        seen[request.path] += 1
        response: web.StreamResponse = await handler(request)
        return response

    async def json_ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "path": request.path, "query": dict(request.query)})

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="hello from the test server")

    async def raw_bytes(request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)), content_type="application/octet-stream")

    async def slow(request: web.Request) -> web.Response:
        delay = _float(request, "delay", 5.0)
        await asyncio.sleep(delay)
        return web.json_response({"ok": True, "delay": delay})

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code} from the test server")

    async def retry_after(request: web.Request) -> web.Response:
        key = request.query.get("key", "default")
        counters[key] += 1
        calls = counters[key]
        if calls <= _int(request, "fails", 1):
            after = request.query.get("after", "0")
            code = _int(request, "status", 429)
            return web.Response(status=code, text="slow down", headers={"Retry-After": after})
        return web.json_response({"ok": True, "calls": calls})

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        response.content_type = "application/json"
        await response.prepare(request)
        await response.write(b'{"partial": "' + b"x" * 1000)
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def malformed(request: web.Request) -> web.Response:
        return web.Response(text='{"ok": tru', content_type="application/json")

    async def large(request: web.Request) -> web.StreamResponse:
        size = _int(request, "size", 50 * 1024 * 1024)
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        block = b"a" * 65536
        left = size
        while left > 0:
            await response.write(block[: min(left, len(block))])
            left -= len(block)
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.Response:
        body = await request.text()
        return web.json_response(
            {
                "method": request.method,
                "body": body,
                "query": dict(request.query),
                "content_type": request.content_type,
            }
        )

    async def sse(request: web.Request) -> web.StreamResponse:
        n, delay = _int(request, "n", 5), _float(request, "delay", 0.0)
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(n):
            await response.write(_event(i))
            if delay:
                await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def chunked(request: web.Request) -> web.StreamResponse:
        n, delay = _int(request, "n", 5), _float(request, "delay", 0.0)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "text/plain"
        await response.prepare(request)
        for i in range(n):
            await response.write(f"chunk {i}\n".encode())
            if delay:
                await asyncio.sleep(delay)
        await response.write_eof()
        return response

    async def sse_drop(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for i in range(_int(request, "n", 2)):
            await response.write(_event(i))
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await response.write(_event(0))
        await asyncio.sleep(_float(request, "seconds", 60.0))
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        status = _int(request, "status", 302)
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def headers(request: web.Request) -> web.Response:
        return web.json_response(dict(request.headers))

    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"secret": "internal"})

    app = web.Application(middlewares=[count])
    app.router.add_get("/json", json_ok)
    app.router.add_get("/text", text)
    app.router.add_get("/bytes", raw_bytes)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/retry-after", retry_after)
    app.router.add_get("/reset", reset)
    app.router.add_get("/malformed", malformed)
    app.router.add_get("/large", large)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/sse", sse)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/sse-drop", sse_drop)
    app.router.add_get("/stall", stall)
    app.router.add_route("*", "/redirect", redirect)
    app.router.add_get("/headers", headers)
    app.router.add_get("/secret", secret)
    app[RETRY_COUNTERS] = counters
    return app


class HttpTestServer:
    """The test app served from a background thread with its own event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.hits: Counter[str] = Counter()
        """Requests seen per path since the last ``reset()``."""
        self._app = build_app(self.hits)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Forget request counts and the ``/retry-after`` counters."""
        self.hits.clear()
        self._app[RETRY_COUNTERS].clear()

    async def _serve(self, sock: socket.socket) -> None:
        # handler_cancellation: a client that goes away cancels its handler (e.g. /stall).
        self._runner = web.AppRunner(
            self._app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(sock))
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="http-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test HTTP server did not start within 10 s")

    def stop(self) -> None:
        """Stop serving and close the thread's loop."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> HttpTestServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"HttpTestServer(url={self.url!r})"


@asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[str]:
    """Serve a test's own ``app`` on a free 127.0.0.1 port in the running loop; yield its URL.

    For endpoints made for one test (a stand-in collector, a hand-written event stream);
    a handler is cancelled when its client goes away, and the server stops on leaving.
    """
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
def _http_server_session() -> Iterator[HttpTestServer]:
    with HttpTestServer() as server:
        yield server


@pytest.fixture
def http_server(_http_server_session: HttpTestServer) -> HttpTestServer:
    """The session's test HTTP server (``.url``, ``.hits``), counters reset for this test."""
    _http_server_session.reset()
    return _http_server_session


@pytest.fixture(scope="session")
def _http_server_b_session(_http_server_session: HttpTestServer) -> Iterator[HttpTestServer]:
    with HttpTestServer(host="127.0.0.2", port=_http_server_session.port) as server:
        yield server


@pytest.fixture
def http_server_b(_http_server_b_session: HttpTestServer) -> HttpTestServer:
    """A second server, on 127.0.0.2 and ``http_server``'s port, counters reset."""
    _http_server_b_session.reset()
    return _http_server_b_session


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the test HTTP app in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--uvloop", action="store_true", help="serve on uvloop (benchmarks)")
    args = parser.parse_args()
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve_forever(args.host, args.port))


async def _serve_forever(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()  # until the process is stopped
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
