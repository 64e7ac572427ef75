"""Pooled HTTP on aiohttp: one shared session per event loop, typed errors, Retry-After.

    http = HttpClient(HttpSettings(base_url="http://127.0.0.1:8080", timeout=10))
    data = await http.get_json("/items", params={"page": 1})     # dict / list
    page = await http.text("GET", "/about")                      # also .bytes(), .json()
    await http.aclose()                                          # or resources.add(http)

    builder.add_node(FetchJSON(http))  # a node: state["url"] -> {"response": <json>}

The session (connection pool, keep-alive, DNS cache) is created lazily on first use, one
per (running event loop, settings), so a graph run many times from one loop reuses warm
connections, and a graph run from several ``asyncio.run`` calls (or under uvloop) never
touches a session made on another loop; a session is closed when its loop shuts down.

A non-2xx answer raises ``HTTPStatusError`` (status, method, URL without credentials,
a short body snippet). 429 and 503 honour ``Retry-After`` for idempotent methods
(GET, HEAD, OPTIONS, PUT, DELETE) up to ``max_attempts``; POST/PATCH are never
retried unless a call passes ``retry=True``.

When to use LangGraph's native ``RetryPolicy`` instead: for retrying a whole node on
5xx or connection errors, put ``RetryPolicy(retry_on=is_retryable)`` on the node (or
retry one call inside a node with ``retry.py``'s ``retry_call(lambda: http.get_json(url),
RetryPolicy(retry_on=is_retryable))``); this client only adds what RetryPolicy cannot
know: the server's own ``Retry-After`` delay.
Likewise prefer the node's ``TimeoutPolicy`` for a deadline on the whole node and keep
``HttpSettings.timeout`` as the per-request bound.
"""

from __future__ import annotations

import asyncio
import email.utils
import json as jsonlib
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
from yarl import URL

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record

from .resources import Resources, close_at_loop_shutdown

__all__ = [
    "FetchJSON",
    "HTTPContentError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "HttpClient",
    "HttpSettings",
    "is_retryable",
    "safe_url",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_SECRET_PARAM = re.compile(r"(token|key|secret|password|passwd|pwd|auth|sig|signature)", re.I)
_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")
_SNIPPET = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """How the shared session behaves; hashable, so equal settings share one session."""

    base_url: str | None = None
    """Prefix for relative URLs, e.g. ``"http://127.0.0.1:8080"``."""
    timeout: float = 30.0
    """Seconds for a whole request, body included."""
    connect_timeout: float | None = 10.0
    """Seconds to open a new TCP connection (waiting for a pooled one counts in ``timeout``)."""
    limit: int = 100
    """Most connections open at once (0: no limit)."""
    limit_per_host: int = 0
    """Most connections to one host (0: no limit)."""
    headers: tuple[tuple[str, str], ...] = ()
    """Default headers; a mapping is accepted and stored as pairs."""
    max_attempts: int = 3
    """Tries per request when the server answers 429/503 (1: never retry)."""
    max_retry_after: float = 30.0
    """Longest ``Retry-After`` wait honoured; a longer one raises at once."""
    max_body: int = 10 * 1024 * 1024
    """Largest body read into memory, in bytes; larger raises ``HTTPContentError``."""

    def __post_init__(self) -> None:
        if isinstance(self.headers, Mapping):
            object.__setattr__(self, "headers", tuple(sorted(self.headers.items())))
        for name in ("timeout", "max_retry_after"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"HttpSettings {name} must be a number > 0, got {value!r}")
        if self.connect_timeout is not None and self.connect_timeout <= 0:
            raise ValueError(
                f"HttpSettings connect_timeout must be > 0 or None, got {self.connect_timeout!r}"
            )
        for name, low in (
            ("limit", 0),
            ("limit_per_host", 0),
            ("max_attempts", 1),
            ("max_body", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"HttpSettings {name} must be an int >= {low}, got {value!r}")
        if self.base_url is not None and not URL(self.base_url).absolute:
            raise ValueError(
                f"HttpSettings base_url must be an absolute URL, got {self.base_url!r}"
            )


def safe_url(url: str | URL) -> str:
    """``url`` without user/password and with secret-looking query values masked."""
    url = URL(url)
    if url.user is not None or url.password is not None:
        url = url.with_user(None)
    if url.query and any(_SECRET_PARAM.search(key) for key in url.query):
        url = url.with_query(
            [(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in url.query.items()]
        )
    return str(url)


class HTTPStatusError(Exception):
    """A non-2xx answer: ``status``, ``method``, ``url`` (no credentials), a body ``snippet``."""

    def __init__(
        self,
        status: int,
        method: str,
        url: str,
        snippet: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.method = method
        self.url = safe_url(url)
        self.snippet = snippet[:_SNIPPET]
        self.retry_after = retry_after
        super().__init__(status, method, self.url, self.snippet, retry_after)

    def __str__(self) -> str:
        detail = f": {self.snippet!r}" if self.snippet else ""
        return f"{self.method} {self.url} returned {self.status}{detail}"


class HTTPContentError(ValueError):
    """A 2xx answer whose body could not be used: undecodable text, invalid JSON, or larger
    than ``max_body``."""

    def __init__(self, message: str, method: str, url: str) -> None:
        self.method = method
        self.url = safe_url(url)
        super().__init__(f"{method} {self.url}: {message}")


class HTTPTimeoutError(TimeoutError):
    """A request that did not complete within its timeout."""

    def __init__(self, method: str, url: str, timeout: float) -> None:
        self.method = method
        self.url = safe_url(url)
        self.timeout = timeout
        super().__init__(f"{method} {self.url} timed out after {timeout:g}s")


def is_retryable(exc: BaseException) -> bool:
    """For ``RetryPolicy(retry_on=is_retryable)``: 5xx/429, timeouts, connection failures."""
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(
        exc, TimeoutError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError
    )


def _retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpClient:
    """JSON/text/bytes over one aiohttp session per event loop; see the module docstring.

    For example:

        http = HttpClient(HttpSettings(timeout=5), resources=resources)
        items = await http.get_json("http://127.0.0.1:8080/json")
    """

    # (loop, settings) -> session, shared by every client with equal settings.
    _sessions: ClassVar[
        dict[tuple[asyncio.AbstractEventLoop, HttpSettings], aiohttp.ClientSession]
    ] = {}
    # id(session) -> (cancel its loop-shutdown close, the creating client's name)
    _disarms: ClassVar[dict[int, tuple[Any, str]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    __slots__ = ("_recent", "name", "settings")

    def __init__(
        self,
        settings: HttpSettings | None = None,
        *,
        name: str = "http",
        resources: Resources | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, HttpSettings):
            raise TypeError(
                f"HttpClient settings must be HttpSettings, got {type(settings).__name__}"
            )
        self.settings = settings or HttpSettings()
        self.name = name
        # The last session used: skips hashing the registry key on every request.
        self._recent: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None
        if resources is not None:
            resources.add(self)

    def session(self) -> aiohttp.ClientSession:
        """This loop's shared session for these settings, created on first use."""
        loop = asyncio.get_running_loop()
        recent = self._recent
        if recent is not None and recent[0] is loop and not recent[1].closed:
            return recent[1]
        key = (loop, self.settings)
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            self._recent = (loop, session)
            return session
        # Creating a session never awaits, so holding a thread lock keeps concurrent
        # first calls (from any loop or thread) to one session per key.
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and not session.closed:
                return session
            for stale in [k for k in self._sessions if k[0].is_closed()]:
                # Its loop ended without shutdown_asyncgens: forget the session.
                self._forget(stale, self._sessions[stale])
            session = self._new_session()
            self._sessions[key] = session
        disarm = close_at_loop_shutdown(lambda: self._close_session(key, session))
        self._disarms[id(session)] = (disarm, self.name)
        record(
            "pool_size", float(self.settings.limit), name=self.name
        )  # a gauge: + now, - on close
        self._recent = (loop, session)
        return session

    def _new_session(self) -> aiohttp.ClientSession:
        settings = self.settings
        connector = aiohttp.TCPConnector(
            limit=settings.limit, limit_per_host=settings.limit_per_host
        )
        return aiohttp.ClientSession(
            base_url=settings.base_url,
            connector=connector,
            # sock_connect, not connect: aiohttp arms a connect timer on every request,
            # even one served by a pooled connection; this one only times new sockets.
            timeout=aiohttp.ClientTimeout(
                total=settings.timeout, sock_connect=settings.connect_timeout
            ),
            headers=dict(settings.headers),
            raise_for_status=False,
        )

    @classmethod
    def _forget(
        cls, key: tuple[asyncio.AbstractEventLoop, HttpSettings], session: aiohttp.ClientSession
    ) -> None:
        """Unregister ``session`` and cancel its loop-shutdown close; the caller holds the lock."""
        if cls._sessions.get(key) is session:
            del cls._sessions[key]
        owner = cls._disarms.pop(id(session), None)
        if owner is not None:
            disarm, name = owner
            disarm()
            record("pool_size", -float(key[1].limit), name=name)

    @classmethod
    async def _close_session(
        cls, key: tuple[asyncio.AbstractEventLoop, HttpSettings], session: aiohttp.ClientSession
    ) -> None:
        with cls._lock:
            cls._forget(key, session)
        await session.close()

    async def aclose(self) -> None:
        """Close this loop's session for these settings (the next call opens a new one)."""
        key = (asyncio.get_running_loop(), self.settings)
        session = self._sessions.get(key)
        if session is not None:
            await self._close_session(key, session)

    async def request(
        self,
        method: str,
        url: str,
        *,
        read: str = "json",
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
        retry: bool | None = None,
    ) -> Any:
        """Send a request and return its body read as ``"json"``, ``"text"`` or ``"bytes"``.

        ``request_timeout`` overrides ``HttpSettings.timeout`` for this call; ``retry``
        (default: only for idempotent methods) waits out 429/503 ``Retry-After``.
        """
        if read not in ("json", "text", "bytes"):
            raise ValueError(
                f"HttpClient.request read must be 'json', 'text' or 'bytes', got {read!r}"
            )
        method = method.upper()
        retry = method in IDEMPOTENT_METHODS if retry is None else retry
        attempts = self.settings.max_attempts if retry else 1
        total = request_timeout if request_timeout is not None else self.settings.timeout
        for attempt in range(1, attempts + 1):
            try:
                # Asked each attempt: a close() while waiting out Retry-After means a new one.
                return await self._send(
                    self.session(), method, url, read, params, json, data, headers, request_timeout
                )
            except HTTPStatusError as exc:
                wait = exc.retry_after
                if (
                    attempt == attempts
                    or exc.status not in _RETRY_AFTER_STATUSES
                    or wait is None
                    or wait > self.settings.max_retry_after
                ):
                    raise
                record("http_retries", 1.0, name=self.name)
                await asyncio.sleep(wait)
            except TimeoutError as exc:  # aiohttp's, from ClientTimeout
                raise HTTPTimeoutError(method, self._full_url(url, params), total) from exc
        raise AssertionError("unreachable")

    def _full_url(self, url: str, params: Mapping[str, Any] | None) -> str:
        """The URL a request went to, for error messages."""
        full = URL(url)
        if not full.absolute and self.settings.base_url:
            full = URL(self.settings.base_url).join(full)
        if params:
            full = full.update_query({k: str(v) for k, v in params.items()})
        return str(full)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        read: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        request_timeout: float | None,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if request_timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(
                total=request_timeout, sock_connect=self.settings.connect_timeout
            )
        async with session.request(
            method, url, params=params, json=json, data=data, headers=headers, **kwargs
        ) as response:
            record("http_requests", 1.0, name=self.name)
            if response.status >= 300:
                snippet = (await response.content.read(_SNIPPET)).decode("utf-8", "replace")
                raise HTTPStatusError(
                    response.status,
                    method,
                    str(response.url),
                    snippet,
                    _retry_after_seconds(response.headers.get("Retry-After")),
                )
            body = await self._read_limited(response, method)
            if read == "bytes":
                return body
            # The declared charset, else UTF-8 (JSON's default). Not get_encoding(): it
            # needs response.read()'s cached body, which a streamed read never sets.
            encoding = response.charset or "utf-8"
            try:
                text = body.decode(encoding)
            except (LookupError, UnicodeDecodeError) as exc:
                raise HTTPContentError(
                    f"body is not {encoding} text ({exc})", method, str(response.url)
                ) from None
            if read == "text":
                return text
            try:
                return jsonlib.loads(text)
            except jsonlib.JSONDecodeError as exc:
                raise HTTPContentError(
                    f"invalid JSON ({exc.msg} at {exc.pos}): {text[:_SNIPPET]!r}",
                    method,
                    str(response.url),
                ) from None

    async def _read_limited(self, response: aiohttp.ClientResponse, method: str) -> bytes:
        limit = self.settings.max_body
        if response.content_length is not None and response.content_length > limit:
            raise HTTPContentError(
                f"body of {response.content_length} bytes exceeds max_body={limit}",
                method,
                str(response.url),
            )
        if response.content_length is not None:
            return await response.read()  # the size is known and within the limit
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise HTTPContentError(
                    f"body exceeds max_body={limit} bytes", method, str(response.url)
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def json(self, method: str, url: str, **kwargs: Any) -> Any:
        """The decoded JSON body (``HTTPContentError`` if it is not JSON)."""
        return await self.request(method, url, read="json", **kwargs)

    async def text(self, method: str, url: str, **kwargs: Any) -> str:
        """The body as text, decoded with the response's charset."""
        result: str = await self.request(method, url, read="text", **kwargs)
        return result

    async def bytes(self, method: str, url: str, **kwargs: Any) -> bytes:
        """The raw body."""
        result: bytes = await self.request(method, url, read="bytes", **kwargs)
        return result

    async def get_json(self, url: str, **kwargs: Any) -> Any:
        """``GET`` and decode JSON."""
        return await self.request("GET", url, read="json", **kwargs)

    def __repr__(self) -> str:
        base = f", base_url={safe_url(self.settings.base_url)!r}" if self.settings.base_url else ""
        return f"HttpClient(name={self.name!r}{base})"


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """What ``FetchJSON`` reads from the state and writes back."""

    url_key: str = "url"
    """State key holding the URL to GET."""
    output_key: str = "response"
    """State key the decoded JSON is written to."""
    params: tuple[tuple[str, str], ...] = field(default=())
    """Query parameters added to every request."""


class FetchJSON(AsyncBaseNode):
    """A node that GETs ``state[url_key]`` through a shared ``HttpClient`` and stores the JSON.

    For example:

        builder.add_node(FetchJSON(http))  # {"url": ...} -> {"response": {...}}
    """

    def __init__(
        self,
        client: HttpClient,
        settings: FetchSettings | None = None,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(client, HttpClient):
            raise TypeError(f"FetchJSON client must be an HttpClient, got {type(client).__name__}")
        self.client = client
        self.settings = settings or FetchSettings()
        self._params = dict(self.settings.params) or None

    async def execute(self, state: Mapping[str, Any]) -> dict[str, Any]:
        url = state[self.settings.url_key]
        if self.verbose:  # safe_url parses the URL: only pay for it when logging
            self.log("GET", url=safe_url(url))
        return {self.settings.output_key: await self.client.get_json(url, params=self._params)}


if __name__ == "__main__":
    from typing import TypedDict

    from aiohttp import web
    from langgraph.graph import StateGraph

    class State(TypedDict, total=False):
        url: str
        response: Any

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world", "path": request.path})

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/hello", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with Resources() as resources:
                http = HttpClient(
                    HttpSettings(base_url=f"http://127.0.0.1:{port}", timeout=5),
                    resources=resources,
                )
                builder = StateGraph(State)
                builder.add_node(FetchJSON(http))
                builder.add_edge("__start__", "FetchJSON")
                graph = builder.compile()
                for _ in range(3):  # three runs, one session, warm connections
                    result = await graph.ainvoke({"url": "/hello"})
                print(f"response: {result['response']}")
                try:
                    await http.get_json("/missing")
                except HTTPStatusError as exc:
                    print(f"error: {exc}")
        finally:
            await runner.cleanup()

    asyncio.run(main())
