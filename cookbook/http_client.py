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

Every failure is an ``HttpError`` (each names the method and the URL without credentials):
``HTTPStatusError`` for a non-2xx answer (status, a short body snippet), ``HTTPTimeoutError``
(a ``TimeoutError``), ``HTTPConnectionError`` (a ``ConnectionError``: refused, reset, closed
mid-body; before, these surfaced as raw aiohttp errors), ``HTTPContentError`` (an unusable
body), ``HTTPRedirectError`` and ``EgressBlockedError`` (both ``ValueError``: never retried).
429 and 503 honour ``Retry-After`` for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE)
up to ``max_attempts``; POST/PATCH are never retried unless a call passes ``retry=True``.

``base_url`` is a prefix: ``http://h/api`` (or ``http://h/api/``) with ``"/items"`` or
``"items"`` requests ``http://h/api/items``; a base URL with a query or fragment is refused.
Redirects are followed by the client, hop by hop, up to ``max_redirects``; credentials
(``Authorization``, ``Cookie``, API-key headers) are never sent to another origin.

Untrusted URLs (see ``egress.py``): ``HttpSettings(egress=EgressPolicy(...))`` checks every
request, redirect hop and resolved address of the client. ``FetchJSON`` takes its URL from
state, so it is guarded by default (``client.for_untrusted_urls()``): with a ``base_url``,
only that origin is reached (an absolute URL in state never replaces it); without one, any
public host, never loopback, private or link-local addresses.

Sessions are shared by clients with equal settings on a loop; ``aclose()`` ends this
client's use, and the session closes when the last client using it closes (or its loop
ends), so closing one client never breaks another's request.

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
import contextvars
import email.utils
import json as jsonlib
import re
import time
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from act_operator_lib import tracing
from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import (
    check_bool,
    check_callable,
    check_instance,
    check_int,
    check_number,
    check_str,
)

from .adaptive import AdaptiveLimiter
from .egress import (
    EgressBlockedError,
    EgressPolicy,
    GuardedResolver,
    HttpError,
    is_credential_header,
    safe_url,
)
from .resources import PerLoop, Resources

__all__ = [
    "EgressBlockedError",
    "EgressPolicy",
    "FetchJSON",
    "FetchPolicy",
    "FetchSettings",
    "HTTPConnectionError",
    "HTTPContentError",
    "HTTPRedirectError",
    "HTTPStatusError",
    "HTTPTimeoutError",
    "HttpClient",
    "HttpError",
    "HttpSettings",
    "is_retryable",
    "safe_url",
    "status_error",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SECONDS = re.compile(r"[0-9]+(\.[0-9]+)?")
_HAS_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_SNIPPET = 200
# The (scheme, host, port) a request's credentials belong to: hops elsewhere drop them.
_CREDENTIALS_FOR: contextvars.ContextVar[tuple[str, str | None, int | None] | None] = (
    contextvars.ContextVar("http_credentials_for", default=None)
)


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
    max_redirects: int = 5
    """Redirect hops followed per request, each within ``timeout``; a redirect beyond them
    raises ``HTTPRedirectError`` (0: follow none)."""
    egress: EgressPolicy | None = None
    """Where requests may go (``egress.py``); None: anywhere, unchecked."""
    resolver: Callable[[], AbstractResolver] | None = None
    """Makes the connector's DNS resolver (default: aiohttp's); checked when ``egress`` is set."""

    def __repr__(self) -> str:
        shown = []
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "headers":
                value = tuple((k, "***" if is_credential_header(k) else v) for k, v in value)
            elif name == "base_url" and value is not None:
                value = safe_url(value)
            shown.append(f"{name}={value!r}")
        return f"HttpSettings({', '.join(shown)})"

    def __post_init__(self) -> None:
        if isinstance(self.headers, Mapping):
            object.__setattr__(self, "headers", tuple(sorted(self.headers.items())))
        for name in ("timeout", "max_retry_after"):
            check_number("HttpSettings", name, getattr(self, name), gt=0, unit="seconds")
        check_number(
            "HttpSettings",
            "connect_timeout",
            self.connect_timeout,
            gt=0,
            unit="seconds",
            allow_none=True,
        )
        for name, low, note in (
            ("limit", 0, "0: no limit"),
            ("limit_per_host", 0, "0: no limit"),
            ("max_attempts", 1, "1: never retry"),
            ("max_body", 1, ""),
            ("max_redirects", 0, "0: follow none"),
        ):
            check_int("HttpSettings", name, getattr(self, name), min=low, note=note)
        check_str("HttpSettings", "base_url", self.base_url, allow_none=True)
        check_callable("HttpSettings", "resolver", self.resolver, allow_none=True)
        if self.base_url is not None:
            base = URL(self.base_url)
            if not base.absolute or base.scheme not in ("http", "https"):
                raise ValueError(
                    "HttpSettings base_url must be an absolute http or https URL,"
                    f" got {safe_url(self.base_url)!r}"
                )
            if base.query_string or base.fragment:
                raise ValueError(
                    "HttpSettings base_url must have no query or fragment (it is a prefix),"
                    f" got {safe_url(self.base_url)!r}"
                )
        check_instance("HttpSettings", "egress", self.egress, EgressPolicy, allow_none=True)


class HTTPStatusError(HttpError):
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


class HTTPContentError(HttpError, ValueError):
    """A 2xx answer whose body could not be used: undecodable text, invalid JSON, or larger
    than ``max_body``."""

    def __init__(self, message: str, method: str, url: str) -> None:
        self.method = method
        self.url = safe_url(url)
        super().__init__(f"{method} {self.url}: {message}")


class HTTPTimeoutError(HttpError, TimeoutError):
    """A request that did not complete within its timeout."""

    def __init__(self, method: str, url: str, timeout: float) -> None:
        self.method = method
        self.url = safe_url(url)
        self.timeout = timeout
        super().__init__(f"{method} {self.url} timed out after {timeout:g}s")


class HTTPConnectionError(HttpError, ConnectionError):
    """The connection failed: refused, reset, or closed before the whole answer arrived."""

    def __init__(self, method: str, url: str, reason: str) -> None:
        self.method = method
        self.url = safe_url(url)
        self.reason = reason
        super().__init__(f"{method} {self.url} failed: {reason}")


class HTTPRedirectError(HttpError, ValueError):
    """Too many redirect hops, or a ``Location`` that is not an http(s) URL."""

    def __init__(self, message: str, method: str, url: str) -> None:
        self.method = method
        self.url = safe_url(url)
        super().__init__(f"{method} {self.url}: {message}")


def is_retryable(exc: BaseException) -> bool:
    """For ``RetryPolicy(retry_on=is_retryable)``: 5xx/429, timeouts, connection failures.

    Never ``EgressBlockedError``, ``HTTPRedirectError`` or ``HTTPContentError`` (ValueErrors).
    """
    if isinstance(exc, HTTPStatusError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(
        exc,
        TimeoutError | ConnectionError | aiohttp.ClientConnectionError | aiohttp.ClientPayloadError,
    )


def _origin(url: URL) -> tuple[str, str | None, int | None]:
    return (url.scheme, url.host, url.port)


def _drop_foreign_credentials(request: aiohttp.ClientRequest) -> None:
    """A hop to another origin than the request's carries no credentials.

    Session default headers are merged into every hop, so they are removed here, per hop.
    """
    home = _CREDENTIALS_FOR.get()
    if home is not None and _origin(request.url) != home:
        for name in [k for k in request.headers if is_credential_header(k)]:
            del request.headers[name]


async def _credentials_stay_home(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Client middleware of a session without an egress policy."""
    _drop_foreign_credentials(request)
    return await handler(request)


def _guard(policy: EgressPolicy) -> aiohttp.ClientMiddlewareType:
    """Client middleware of a guarded session: each hop is checked before it connects."""

    async def guard(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        policy.check_url(request.url)
        _drop_foreign_credentials(request)
        try:
            return await handler(request)
        except EgressBlockedError as exc:  # from the resolver, which knows only the host
            raise EgressBlockedError(request.url, exc.rule) from None

    return guard


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


class SharedSession:
    """One loop's session for one ``HttpSettings``, and the clients using it."""

    __slots__ = ("holders", "limit", "name", "resolver", "session")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        resolver: AbstractResolver | None,
        name: str,
        limit: int,
    ) -> None:
        self.session = session
        self.resolver = resolver
        """A resolver made for this session: the connector does not own it, so closed here."""
        self.name = name
        """The creating client's name: the ``pool_size`` gauge label."""
        self.limit = limit
        self.holders: weakref.WeakSet[HttpClient] = weakref.WeakSet()
        """The clients using it; the last one to ``aclose()`` closes it."""


async def _close_shared(shared: SharedSession) -> None:
    await shared.session.close()
    if shared.resolver is not None:
        await shared.resolver.close()


def _uncount_shared(shared: SharedSession) -> None:
    record("pool_size", -float(shared.limit), name=shared.name)


class HttpClient:
    """JSON/text/bytes over one aiohttp session per event loop; see the module docstring.

    For example:

        http = HttpClient(HttpSettings(timeout=5), resources=resources)
        items = await http.get_json("http://127.0.0.1:8080/json")
    """

    sessions: ClassVar[PerLoop[SharedSession]] = PerLoop(
        close=_close_shared,
        is_closed=lambda shared: shared.session.closed,
        forgotten=_uncount_shared,
    )
    """The open sessions, one per (event loop, settings), shared by every client with equal
    settings; ``HttpClient.sessions.items()`` lists them (changed: a private dict before)."""

    __slots__ = (
        "__weakref__",
        "_checked",
        "_guarded",
        "_prefix",
        "_recent",
        "limiter",
        "name",
        "settings",
    )

    def __init__(
        self,
        settings: HttpSettings | None = None,
        *,
        name: str = "http",
        resources: Resources | None = None,
        limiter: AdaptiveLimiter | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, HttpSettings):
            raise TypeError(
                f"HttpClient settings must be HttpSettings, got {type(settings).__name__}"
            )
        check_instance("HttpClient", "limiter", limiter, AdaptiveLimiter, allow_none=True)
        self.settings = settings or HttpSettings()
        self.name = name
        self.limiter = limiter
        """An adaptive concurrency limit every attempt of this client holds a slot of
        (``adaptive.py``), or ``None``. New: each attempt's outcome (a 429/503, a timeout,
        its latency) tunes it; a ``Retry-After`` wait holds no slot."""
        # The last session used: skips hashing the registry key on every request.
        self._recent: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None
        self._guarded: HttpClient | None = None
        self._prefix: str | None = None
        self._checked: dict[str, URL] = {}  # url() of recent strings
        if self.settings.base_url is not None:
            self._prefix = str(URL(self.settings.base_url)).rstrip("/") + "/"
        if resources is not None:
            resources.add(self)

    def session(self) -> aiohttp.ClientSession:
        """This loop's shared session for these settings, created on first use.

        Used directly, aiohttp joins relative URLs (RFC 3986) and follows redirects itself;
        an ``egress`` policy still checks every hop and every resolved address.
        """
        loop = asyncio.get_running_loop()
        recent = self._recent
        if recent is not None and recent[0] is loop and not recent[1].closed:
            return recent[1]
        shared = self.sessions.get(self._new_session, self.settings)
        shared.holders.add(self)
        self._recent = (loop, shared.session)
        return shared.session

    def _new_session(self) -> SharedSession:
        settings = self.settings
        policy = settings.egress
        resolver = settings.resolver() if settings.resolver is not None else None
        middleware: aiohttp.ClientMiddlewareType = _credentials_stay_home
        if policy is not None:
            # Checked at connect time, on the very addresses connected to (DNS rebinding).
            resolver = GuardedResolver(policy, resolver or aiohttp.DefaultResolver())
            middleware = _guard(policy)
        connector = aiohttp.TCPConnector(
            limit=settings.limit, limit_per_host=settings.limit_per_host, resolver=resolver
        )
        session = aiohttp.ClientSession(
            # For direct users of session(): aiohttp joins relative URLs to it (RFC 3986).
            base_url=self._prefix,
            connector=connector,
            middlewares=(middleware,),
            # A jar would send a host's cookies to its other ports (cookies ignore ports).
            cookie_jar=aiohttp.DummyCookieJar() if policy is not None else None,
            timeout=self.client_timeout(settings.timeout),
            headers=dict(settings.headers),
            raise_for_status=False,
        )
        record("pool_size", float(settings.limit), name=self.name)  # a gauge: + now, - on close
        return SharedSession(session, resolver, self.name, settings.limit)

    async def aclose(self) -> None:
        """End this client's use of this loop's session; the last client using it closes it.

        Changed: it used to close the session shared with every client of equal settings,
        breaking their requests in flight. The client stays usable (the next call rejoins
        or opens a session). Also closes the guarded twin of ``for_untrusted_urls()``.
        """
        if self._guarded is not None:
            await self._guarded.aclose()
        self._recent = None
        shared = self.sessions.current(self.settings)
        if shared is None:
            return
        shared.holders.discard(self)
        if not shared.holders:  # else others still use it
            await self.sessions.aclose(self.settings)

    def for_untrusted_urls(self) -> HttpClient:
        """This client, guarded for URLs taken from state (nodes call this).

        Itself if its settings have an ``egress`` policy; otherwise a twin (same settings,
        its own session, closed with this client) whose policy allows only ``base_url``'s
        origin, or, without a base URL, any public host (``EgressPolicy()``).
        """
        if self.settings.egress is not None:
            return self
        if self._guarded is None:
            base = self.settings.base_url
            policy = EgressPolicy() if base is None else EgressPolicy.only(base)
            settings = replace(self.settings, egress=policy)
            self._guarded = HttpClient(settings, name=self.name, limiter=self.limiter)
        return self._guarded

    def client_timeout(
        self, total: float | None, *, sock_read: float | None = None
    ) -> aiohttp.ClientTimeout:
        """The aiohttp timeout for a request of this client: ``total`` seconds for all of
        it (None: no limit), ``sock_read`` between two reads, ``connect_timeout`` to open a
        new socket.

        The connect bound is aiohttp's ``sock_connect``, never ``connect``: aiohttp arms a
        ``connect`` timer on every request, also one waiting for a pooled connection, so a
        busy pool would fail requests that never tried to connect.
        """
        return aiohttp.ClientTimeout(
            total=total, sock_connect=self.settings.connect_timeout, sock_read=sock_read
        )

    def url(self, url: str | URL) -> URL:
        """The absolute URL a request for ``url`` goes to: ``base_url`` is a prefix, and
        with an ``egress`` policy the URL is checked and its host made canonical."""
        if type(url) is str:
            # The answer depends only on the string and the (frozen) settings: a node
            # calling the same endpoints again finds it here. Addresses are still checked
            # at every connect, by the resolver.
            checked = self._checked.get(url)
            if checked is not None:
                return checked
        target = self._join(url)
        policy = self.settings.egress
        if policy is not None:
            target = policy.check_url(target)
        if type(url) is str:
            if len(self._checked) >= _CHECKED_URLS:
                self._checked.clear()
            self._checked[url] = target
        return target

    def _join(self, url: str | URL) -> URL:
        prefix = self._prefix
        if prefix is not None and isinstance(url, str) and not _HAS_SCHEME.match(url):
            if url.startswith("//"):  # a scheme-relative URL names its own host
                target = URL(prefix.partition(":")[0] + ":" + url)
            else:
                target = URL(prefix + url.lstrip("/"))
        else:
            target = URL(url)
            if not target.absolute:
                if prefix is None:
                    raise ValueError(
                        f"HttpClient url must be absolute when there is no base_url, got {url!r}"
                    )
                target = URL(prefix + str(target).lstrip("/"))
        return target

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
        target = self.url(url)  # EgressBlockedError here: before any connection
        for attempt in range(1, attempts + 1):
            try:
                # One CLIENT span per attempt, a child of the node's span (free when off).
                with tracing.client_span(
                    _describe_request, method, target, covered_by=_INSTRUMENTATION
                ) as span:
                    # Asked each attempt: a close() while waiting out Retry-After means a new one.
                    send = self._send if self.limiter is None else self._send_in_slot
                    return await send(
                        self.session(),
                        span,
                        method,
                        target,
                        read,
                        params,
                        json,
                        data,
                        headers,
                        request_timeout,
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
            except HttpError:
                raise
            except TimeoutError as exc:  # aiohttp's, from ClientTimeout
                raise HTTPTimeoutError(method, _with_params(target, params), total) from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                reason = str(exc) or type(exc).__name__
                raise HTTPConnectionError(method, _with_params(target, params), reason) from exc
            except aiohttp.ClientError as exc:
                raise HttpError(
                    f"{method} {safe_url(_with_params(target, params))}: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    async def _send_in_slot(self, *args: Any) -> Any:
        """``_send`` holding one slot of the client's adaptive limiter."""
        assert self.limiter is not None
        return await self.limiter.call(self._send, *args)

    async def _follow(
        self,
        session: aiohttp.ClientSession,
        response: aiohttp.ClientResponse,
        method: str,
        url: URL,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        bound: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """The final response after following ``response``'s redirects hop by hop, each
        hop checked by the egress policy before any connection to it."""
        policy = self.settings.egress
        token = _CREDENTIALS_FOR.set(_origin(url))  # the middleware drops them elsewhere
        try:
            for _ in range(self.settings.max_redirects):
                location = (
                    response.headers.get("Location") if response.status in _REDIRECTS else None
                )
                if location is None:
                    return response
                response.release()
                try:
                    target = response.url.join(URL(location))
                except ValueError:
                    target = None
                if target is None or target.scheme not in ("http", "https"):
                    raise HTTPRedirectError(
                        f"redirected to {location!r}, not an http(s) URL", method, str(url)
                    )
                if policy is not None:
                    target = policy.check_url(target)  # before any connection to it
                if (response.status == 303 and method != "HEAD") or (
                    response.status in (301, 302) and method == "POST"
                ):
                    method, json, data = "GET", None, None
                url = target  # the Location is the whole next URL: no params
                response = await session.request(
                    method,
                    url,
                    json=json,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    timeout=bound,  # the call's own, as for the first hop
                )
            return response
        finally:
            _CREDENTIALS_FOR.reset(token)

    async def _send(
        self,
        session: aiohttp.ClientSession,
        span: tracing.ClientSpan,
        method: str,
        url: URL,
        read: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Any,
        headers: Mapping[str, str] | None,
        request_timeout: float | None,
    ) -> Any:
        # The session's own timeout unless the call sets one (what aiohttp uses when no
        # timeout is passed, without a keyword dictionary to build and unpack).
        timeout = (
            session.timeout if request_timeout is None else self.client_timeout(request_timeout)
        )
        try:
            response = await session.request(
                method,
                url,
                params=params,
                json=json,
                data=data,
                headers=headers,
                allow_redirects=False,
                # The first hop was checked by url() and goes to the caller's own origin,
                # so the session's middleware has nothing to do there; skipping it saves
                # aiohttp's middleware chain (about a tenth of a pooled request). Every
                # redirect hop (_follow) still goes through it.
                middlewares=(),
                timeout=timeout,
            )
        except EgressBlockedError as exc:
            # From the resolver, which knows only the host: name the whole URL.
            raise EgressBlockedError(_with_params(url, params), exc.rule) from None
        if response.status in _REDIRECTS:
            response = await self._follow(
                session, response, method, url, json, data, headers, timeout
            )
        span.set("http.response.status_code", response.status)
        async with response:
            record("http_requests", 1.0, name=self.name)
            if response.status in _REDIRECTS and "Location" in response.headers:
                response.release()
                raise HTTPRedirectError(
                    f"more than max_redirects={self.settings.max_redirects} redirects",
                    method,
                    str(response.url),
                )
            if response.status >= 300:
                raise await status_error(response, method)
            length = response.content_length
            if length is not None and length <= self.settings.max_body:
                body = await response.read()  # the size is known and within the limit
            else:
                body = await self._read_limited(response, method, length)
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

    async def _read_limited(
        self, response: aiohttp.ClientResponse, method: str, length: int | None
    ) -> bytes:
        """A body of unknown length read up to ``max_body``, or the error for one declared
        longer than that."""
        limit = self.settings.max_body
        if length is not None:
            raise HTTPContentError(
                f"body of {length} bytes exceeds max_body={limit}", method, str(response.url)
            )
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

    # The shorthands return request()'s coroutine rather than awaiting it in one of their
    # own: one coroutine frame less for every resume of every request.
    def json(self, method: str, url: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """The decoded JSON body (``HTTPContentError`` if it is not JSON)."""
        return self.request(method, url, read="json", **kwargs)

    def text(self, method: str, url: str, **kwargs: Any) -> Coroutine[Any, Any, str]:
        """The body as text, decoded with the response's charset."""
        return self.request(method, url, read="text", **kwargs)

    def bytes(self, method: str, url: str, **kwargs: Any) -> Coroutine[Any, Any, bytes]:
        """The raw body."""
        return self.request(method, url, read="bytes", **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """``GET`` and decode JSON."""
        return self.request("GET", url, read="json", **kwargs)

    def __repr__(self) -> str:
        base = f", base_url={safe_url(self.settings.base_url)!r}" if self.settings.base_url else ""
        return f"HttpClient(name={self.name!r}{base})"


_CHECKED_URLS = 256  # url() results kept per client
# While the application has OpenTelemetry's aiohttp instrumentation on, its request spans
# (children of the node's span too) replace the client's own.
_INSTRUMENTATION = "opentelemetry.instrumentation.aiohttp_client:AioHttpClientInstrumentor"


def _describe_request(method: str, url: URL) -> tuple[str, dict[str, Any]]:
    """An HTTP client span's name and attributes (stable HTTP semantic conventions); the
    URL without its query or credentials, which may hold secrets."""
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": str(url.with_query(None).with_fragment(None).with_user(None)),
    }
    if url.host is not None:
        attributes["server.address"] = url.host
    if url.port is not None:
        attributes["server.port"] = url.port
    return method, attributes


async def status_error(response: aiohttp.ClientResponse, method: str) -> HTTPStatusError:
    """The ``HTTPStatusError`` for a non-2xx ``response``: its status, the first bytes of
    its body and its ``Retry-After`` (the other HTTP recipes raise it too)."""
    snippet = (await response.content.read(_SNIPPET)).decode("utf-8", "replace")
    return HTTPStatusError(
        response.status,
        method,
        str(response.url),
        snippet,
        _retry_after_seconds(response.headers.get("Retry-After")),
    )


def _with_params(url: URL, params: Mapping[str, Any] | None) -> str:
    """The URL a request went to, for error messages."""
    if params:
        url = url.update_query({k: str(v) for k, v in params.items()})
    return str(url)


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchPolicy:
    """What ``FetchJSON`` reads from the state and writes back.

    Named ``FetchSettings`` before (still importable under that name): ``*Policy`` is how a
    node behaves, ``*Settings`` how a shared resource is set up.
    """

    url_key: str = "url"
    """State key holding the URL to GET."""
    output_key: str = "response"
    """State key the decoded JSON is written to."""
    params: tuple[tuple[str, str], ...] = field(default=())
    """Query parameters added to every request."""
    trust_state_urls: bool = False
    """True: the URL in state is trusted and goes through the client unguarded. Only for
    state no model or user can write; the default guards it (``for_untrusted_urls``)."""

    def __post_init__(self) -> None:
        check_str("FetchPolicy", "url_key", self.url_key)
        check_str("FetchPolicy", "output_key", self.output_key)
        params: Any = self.params
        if isinstance(params, Mapping):
            params = tuple(params.items())
        if not isinstance(params, tuple | list) or not all(
            isinstance(pair, tuple | list)
            and len(pair) == 2
            and all(isinstance(part, str) for part in pair)
            for pair in params
        ):
            raise TypeError(f"FetchPolicy params must be (str, str) pairs, got {self.params!r}")
        object.__setattr__(self, "params", tuple((name, value) for name, value in params))
        check_bool("FetchPolicy", "trust_state_urls", self.trust_state_urls)


FetchSettings = FetchPolicy
"""The earlier name of ``FetchPolicy``."""


class FetchJSON(AsyncBaseNode):
    """A node that GETs ``state[url_key]`` through a shared ``HttpClient`` and stores the JSON.

    For example:

        builder.add_node(FetchJSON(http))  # {"url": ...} -> {"response": {...}}
    """

    def __init__(
        self,
        client: HttpClient,
        settings: FetchPolicy | None = None,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(client, HttpClient):
            raise TypeError(f"FetchJSON client must be an HttpClient, got {type(client).__name__}")
        self.client = client
        self.settings = settings or FetchPolicy()
        self._params = dict(self.settings.params) or None
        # The URL comes from state: untrusted, so guarded (see HttpClient.for_untrusted_urls).
        self._guarded = client if self.settings.trust_state_urls else client.for_untrusted_urls()

    async def execute(self, state: Mapping[str, Any]) -> dict[str, Any]:
        url = state[self.settings.url_key]
        if self.verbose:  # safe_url parses the URL: only pay for it when logging
            self.log("GET", url=safe_url(url))
        # request() itself (read="json" is its default): get_json() would add a call.
        response = await self._guarded.request("GET", url, params=self._params)
        return {self.settings.output_key: response}


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
