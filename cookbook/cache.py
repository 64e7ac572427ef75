"""Async cache with single-flight: TTL, LRU size bound, one in-flight call per key.

    cache = AsyncCache(CacheSettings(ttl=60, maxsize=1000))
    profile = await cache.get_or_load(user_id, lambda: fetch_profile(user_id))
    builder.add_node(CachedNode(lookup, cache, key=lambda state: state["user_id"]))

A value is kept for ``ttl`` seconds and the least recently used values are dropped beyond
``maxsize``. Concurrent calls for the same key share one call of the loader (the others
join it), so a burst of identical requests costs one request downstream. A failure is not
cached: every caller that joined the call sees the error and the next call tries again.
Cancelling one caller does not cancel the shared call for the others, and when every
caller has gone away the call is cancelled, so nothing keeps running unobserved.

When to use LangGraph's native ``CachePolicy`` instead: it caches a whole node's result
keyed by the node's input, in the graph's cache backend (``compile(cache=...)``), which can
be persistent and shared between processes. Prefer it whenever the node's whole output is
a function of its input. Use this recipe for an operation *inside* a node (one lookup among
other work, a key you choose), for values shared across different nodes and graphs, and when
concurrent identical calls must not all run: ``CachePolicy`` does not merge calls in flight.

Shared by several worker processes (``shared=RedisBackend(...)``, see ``redis_backend``):

    cache = AsyncCache(CacheSettings(ttl=300, name="geo"), shared=RedisBackend(REDIS_URL))
    where = await cache.get_or_load(city, lambda: geocode(city))   # one geocode per city, fleet-wide

values then live in Redis under ``<prefix>cache:<name>:<key>`` (JSON by default; pass a
``serializer`` with ``dumps``/``loads`` for anything else), always with a TTL, and a miss takes
a load lock that expires after ``lock_timeout``: concurrent loads of one key in any number of
processes run the loader once, and a loader that crashed blocks the key for at most
``lock_timeout``. Keys must print the same in every process (``str``, ``int``, tuples of
them). For whole-node results across processes, LangGraph's ``CachePolicy`` with
``compile(cache=RedisCache(...))`` is the better choice (no code in the node at all);
this cache is for a value inside a node, and for merging concurrent loads, which
``CachePolicy`` does not do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_int, check_number, check_str

__all__ = ["AsyncCache", "CacheSettings", "CachedNode", "JsonSerializer", "SharedCacheStore"]

logger = logging.getLogger("act_operator_lib.cookbook.cache")

V = TypeVar("V")


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    """How long values live and how many are kept.

        CacheSettings(ttl=300.0, maxsize=1024)
        CacheSettings(ttl=None, maxsize=100)  # values never expire; only LRU eviction

    Validated once, here: a bad value fails where the cache is configured.
    """

    ttl: float | None = 300.0
    """Seconds a value stays fresh; > 0, or ``None`` for no expiry."""
    maxsize: int = 1024
    """Most values kept; >= 1. Beyond it the least recently used value is dropped."""
    name: str = "cache"
    """The name metrics use, and the key space in a shared store."""
    lock_timeout: float = 30.0
    """With a shared store: seconds a loader's lock lasts (a crashed loader frees the key
    after it); longer than a load takes; > 0."""

    def __post_init__(self) -> None:
        check_number("CacheSettings", "ttl", self.ttl, gt=0, unit="seconds", allow_none=True)
        check_int("CacheSettings", "maxsize", self.maxsize, min=1)
        check_str("CacheSettings", "name", self.name)
        check_number("CacheSettings", "lock_timeout", self.lock_timeout, gt=0, unit="seconds")


class SharedCacheStore(Protocol):
    """What the cache needs from a store shared by processes (``RedisBackend`` has it)."""

    url: str

    def use_local(self, error: ConnectionError, user: str) -> bool: ...

    def key(self, kind: str, name: str) -> str: ...
    async def cache_get(self, key: str) -> bytes | None: ...
    async def cache_lock(self, key: str, token: str, hold: float) -> bool: ...
    async def cache_locked(self, key: str) -> bool: ...
    async def cache_store(self, key: str, value: bytes, ttl: float | None, token: str) -> None: ...
    async def cache_unlock(self, key: str, token: str) -> None: ...
    async def cache_delete(self, key: str) -> None: ...


class JsonSerializer:
    """The shared cache's default serializer: JSON values (dicts, lists, str, numbers)."""

    @staticmethod
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data)


class _Entry(NamedTuple):
    value: Any
    expires: float  # time.monotonic(); inf when values never expire


class _Flight:
    """A loader call in progress and how many callers are waiting for it."""

    __slots__ = ("callers", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.callers = 0


class AsyncCache(Generic[V]):
    """A TTL + LRU cache whose misses share one in-flight load per key.

        cache: AsyncCache[Profile] = AsyncCache(CacheSettings(ttl=60))
        profile = await cache.get_or_load(user_id, lambda: fetch_profile(user_id))
        cache.invalidate(user_id)

    Values (not in-flight loads) are plain objects, so one cache can outlive an event loop
    and serve the next ``asyncio.run``. Use it from one event loop at a time.
    """

    __slots__ = ("_flights", "_values", "serializer", "settings", "shared")

    settings: CacheSettings
    """The TTL and size bound."""

    def __init__(
        self,
        settings: CacheSettings | None = None,
        *,
        shared: SharedCacheStore | None = None,
        serializer: Any = None,
    ) -> None:
        if settings is None:
            settings = CacheSettings()
        if not isinstance(settings, CacheSettings):
            raise TypeError(f"AsyncCache settings must be a CacheSettings, got {settings!r}")
        if shared is not None:
            missing = [
                m for m in ("cache_get", "cache_lock", "cache_store") if not hasattr(shared, m)
            ]
            if missing:
                raise TypeError(
                    f"AsyncCache shared must be a shared store such as RedisBackend, got {shared!r}"
                )
            if settings.ttl is None:
                raise ValueError(
                    "AsyncCache with a shared store needs CacheSettings ttl (keys must expire),"
                    " got ttl=None"
                )
        serializer = JsonSerializer() if serializer is None else serializer
        if not (
            callable(getattr(serializer, "dumps", None))
            and callable(getattr(serializer, "loads", None))
        ):
            raise TypeError(
                f"AsyncCache serializer must have dumps(value) -> bytes and loads(bytes), got {serializer!r}"
            )
        self.settings = settings
        self.shared = shared
        """The store shared with other processes, or ``None`` (this process only)."""
        self.serializer = serializer
        """How values are stored in the shared store."""
        self._values: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return (
            f"AsyncCache(name={self.settings.name!r}, size={len(self._values)},"
            f" in_flight={len(self._flights)})"
        )

    def _fresh(self, key: Hashable) -> _Entry | None:
        """``key``'s entry, marked as just used, or ``None`` (an expired one is dropped)."""
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            del self._values[key]
            return None
        self._values.move_to_end(key)
        return entry

    def get(self, key: Hashable) -> V | None:
        """The fresh value cached under ``key``, or ``None``."""
        entry = self._fresh(key)
        return None if entry is None else entry.value

    def set(self, key: Hashable, value: V) -> None:
        """Cache ``value`` under ``key``, dropping the least recently used beyond maxsize."""
        ttl = self.settings.ttl
        expires = float("inf") if ttl is None else time.monotonic() + ttl
        self._values[key] = _Entry(value, expires)
        self._values.move_to_end(key)
        while len(self._values) > self.settings.maxsize:
            self._values.popitem(last=False)

    def invalidate(self, key: Hashable) -> None:
        """Forget ``key``'s value (a load in flight still completes and is cached)."""
        self._values.pop(key, None)

    async def aget(self, key: Hashable) -> V | None:
        """``get`` that also reads the shared store."""
        if self.shared is None:
            return self.get(key)
        raw = await self.shared.cache_get(self._shared_key(key))
        return None if raw is None else self.serializer.loads(raw)

    async def aset(self, key: Hashable, value: V) -> None:
        """``set`` that also writes the shared store."""
        if self.shared is None:
            self.set(key, value)
            return
        shared_key = self._shared_key(key)
        await self.shared.cache_store(
            shared_key, self.serializer.dumps(value), self.settings.ttl, token=""
        )

    async def ainvalidate(self, key: Hashable) -> None:
        """``invalidate`` that also removes the value from the shared store, for every process."""
        self._values.pop(key, None)
        if self.shared is not None:
            await self.shared.cache_delete(self._shared_key(key))

    def _shared_key(self, key: Hashable) -> str:
        assert self.shared is not None
        text = key if isinstance(key, str) else repr(key)
        return self.shared.key("cache", f"{self.settings.name}:{text}")

    async def get_or_load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """The value for ``key``: cached, joined from a load in flight, or ``await load()``."""
        name = self.settings.name
        entry = None if self.shared is not None else self._fresh(key)
        if entry is not None:
            record("cache_hits", name=name)
            return entry.value  # type: ignore[no-any-return]

        loop = asyncio.get_running_loop()
        flight = self._flights.get(key)
        if flight is not None and flight.task.get_loop() is loop:
            record("singleflight_joins", name=name)
        else:
            # A load left over from another (finished) loop cannot be awaited here.
            record("cache_misses", name=name)
            flight = self._flights[key] = _Flight(loop.create_task(self._load(key, load)))
        flight.callers += 1
        try:
            # shield: one caller's cancellation must not cancel the load the others wait on.
            return await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            task = flight.task
            if flight.callers == 1 and not task.done():
                # The last caller is leaving: cancel the load and wait for it to end. A caller
                # arriving meanwhile starts a fresh load rather than join a cancelled one.
                if self._flights.get(key) is flight:
                    del self._flights[key]
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled():
                    task.exception()  # retrieved: nobody is left to see it
            raise
        finally:
            flight.callers -= 1

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        try:
            if self.shared is not None:
                return await self._load_shared(key, load)
            value = await load()
            self.set(key, value)  # only successes are cached
            return value
        finally:
            flight = self._flights.get(key)
            if flight is not None and flight.task is asyncio.current_task():
                del self._flights[key]

    async def _load_shared(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        """Read ``key`` from the shared store, or load it once across every process."""
        shared = self.shared
        assert shared is not None
        shared_key = self._shared_key(key)
        try:
            found, token = await self._find_or_lock(shared, shared_key)
        except ConnectionError as error:
            if not shared.use_local(error, f"cache {self.settings.name!r}"):
                raise
            return await load()
        if token is None:
            return found  # type: ignore[no-any-return]
        try:
            value = await load()
        except BaseException:
            # Failures are not cached: free the key for the next caller at once (a crashed
            # process frees it when the lock expires).
            with contextlib.suppress(ConnectionError):
                await asyncio.shield(shared.cache_unlock(shared_key, token))
            raise
        try:
            await shared.cache_store(
                shared_key, self.serializer.dumps(value), self.settings.ttl, token
            )
        except ConnectionError as error:
            # The value is loaded: hand it over; only its caching was lost.
            logger.warning(
                "cache %r: value not stored in %s: %s", self.settings.name, shared.url, error
            )
        return value

    async def _find_or_lock(
        self, shared: SharedCacheStore, shared_key: str
    ) -> tuple[Any, str | None]:
        """``(value, None)`` for a hit, or ``(None, token)`` once this process holds the lock."""
        name = self.settings.name
        pause = 0.002
        while True:
            raw = await shared.cache_get(shared_key)
            if raw is not None:
                record("cache_hits", name=name)
                return self.serializer.loads(raw), None
            token = uuid.uuid4().hex
            if await shared.cache_lock(shared_key, token, self.settings.lock_timeout):
                return None, token
            # Another process is loading it: wait for its value (or for its lock to go, when
            # it failed or died), then look again.
            record("singleflight_joins", name=name)
            while await shared.cache_locked(shared_key):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)


class CachedNode(AsyncBaseNode):
    """A node whose ``operation(state)`` result is cached under ``key(state)``.

        async def lookup(state: State) -> dict[str, Any]:
            return {"profile": await fetch_profile(state["user_id"])}

        profiles = AsyncCache(CacheSettings(ttl=60, name="profiles"))
        builder.add_node("lookup", CachedNode(lookup, profiles, key=lambda s: s["user_id"]))

    ``operation`` is a LangGraph node function; its update is cached and returned
    unchanged, as every wrapper node in the cookbook does. Runs that ask for the same key
    at once (parallel branches, concurrent graph runs on a server) share one call of
    ``operation``. That call runs in a task started by the first
    caller, with its context (its run's config and callbacks, e.g. the custom stream).
    """

    def __init__(
        self,
        operation: Callable[[Any], Awaitable[dict[str, Any]]],
        cache: AsyncCache[dict[str, Any]],
        *,
        key: Callable[[Any], Hashable],
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not callable(operation):
            raise TypeError(f"CachedNode operation must be callable, got {operation!r}")
        if not isinstance(cache, AsyncCache):
            raise TypeError(f"CachedNode cache must be an AsyncCache, got {cache!r}")
        if not callable(key):
            raise TypeError(f"CachedNode key must be a callable taking the state, got {key!r}")
        super().__init__(name=name or getattr(operation, "__name__", None), verbose=verbose)
        self.operation = operation
        self.cache = cache
        self.key = key

    async def execute(self, state: Any) -> dict[str, Any]:
        key = self.key(state)
        self.log("cached call", key=key)
        return await self.cache.get_or_load(key, lambda: self.operation(state))


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import START, StateGraph

    class State(TypedDict, total=False):
        city: str
        forecast: str

    calls: list[str] = []

    async def forecast(state: State) -> dict[str, Any]:
        calls.append(state["city"])
        await asyncio.sleep(0.05)  # a slow weather service
        return {"forecast": f"sunny in {state['city']}"}

    async def main() -> None:
        cache: AsyncCache[dict[str, Any]] = AsyncCache(CacheSettings(ttl=60, name="forecasts"))
        builder = StateGraph(State)
        builder.add_node("forecast", CachedNode(forecast, cache, key=lambda s: s["city"]))
        builder.add_edge(START, "forecast")
        graph = builder.compile()
        cities = ["Oslo", "Lima", "Oslo", "Oslo", "Lima", "Pune"]
        # Six concurrent runs: one service call per distinct city, the rest join it.
        results = await asyncio.gather(*(graph.ainvoke({"city": c}) for c in cities))
        again = await graph.ainvoke({"city": "Oslo"})  # a cache hit
        print([r["forecast"] for r in results])
        print(f"{len(cities) + 1} runs, {len(calls)} service calls: {sorted(calls)}")
        print(again["forecast"])

    asyncio.run(main())
