"""Redis as the shared state of rate limits, circuit breakers and caches across workers.

    shared = RedisBackend("redis://127.0.0.1:6379/0")                  # one per process
    limiter = rate_limiter("openai", RateLimit(rate=50, capacity=10), shared=shared)
    breaker = circuit_breaker("search", BreakerPolicy(failure_threshold=5), shared=shared)
    cache = AsyncCache(CacheSettings(ttl=300, name="geo"), shared=shared)

Every worker process (LangGraph Server queue workers, several ``uvicorn`` processes, a process
pool) that builds these with the same Redis and the same names shares one budget, one circuit
and one cache. Each operation is one atomic server-side script (registered once, called by
SHA), so no two processes ever read-modify-write the same state; time is Redis's own clock
(``TIME`` inside the script), so the workers' clocks do not have to agree.

What each costs per call: the rate limiter one round trip per acquire (plus one more only when
a waiting caller is cancelled, to give its reservation back); the breaker one round trip before
and one after a guarded call; the cache one ``GET`` per hit, and for a miss a lock, the load,
and one write.

When Redis is down or restarting, every call fails within ``timeout`` seconds (an async
call between 1 and 1.25 times ``timeout``: one timer per loop bounds them all) with
``RedisUnavailableError`` naming the server (its URL without credentials), or, with
``fallback="local"``, the recipe logs a warning and uses its in-process state until Redis
answers again. The client reconnects by itself after a restart; scripts are loaded again
when the server lost them. Every key lives under ``prefix`` and expires, so a finished
deployment leaves nothing behind.

This module is the only one that imports ``redis`` (redis-py's asyncio client, the
``redis`` extra); the recipes see only the small methods below.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from yarl import URL

from .resources import PerLoop

__all__ = ["BreakerTicket", "RedisBackend", "RedisUnavailableError"]

logger = logging.getLogger("act_operator_lib.cookbook.redis_backend")


class RedisUnavailableError(ConnectionError):
    """Redis did not answer (down, restarting, unreachable or too slow).

    A ``ConnectionError``: the retry recipe and ``RetryPolicy`` may retry it.
    """

    def __init__(self, url: str, error: BaseException) -> None:
        super().__init__(f"Redis at {url} is unavailable: {type(error).__name__}: {error}")
        self.url = url
        """The server's URL, without credentials."""


def redact(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:port/db``)."""
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


# Microseconds: Lua numbers are doubles, exact for integers below 2**53 (~285 years in µs).
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"

# GCRA (the generic cell rate algorithm): one stored number per bucket, the theoretical
# arrival time (TAT) of the next token. A blocking acquire reserves its tokens at once and
# returns how long to wait for them, so callers are served in the order they asked across all
# processes, and a waiter never has to ask again.
# KEYS[1] bucket; ARGV interval µs per token, burst µs (capacity * interval), tokens, blocking.
# Returns µs to wait (0: go now), or -1 for a non-blocking refusal.
_RESERVE = (
    _NOW
    + """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[3]) * interval
local wait = new_tat - tonumber(ARGV[2]) - now
if wait < 0 then wait = 0 end
if wait > 0 and ARGV[4] == '0' then return -1 end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return wait
"""
)

# A cancelled waiter gives its tokens back: the TAT moves back by what it reserved.
# KEYS[1] bucket; ARGV tokens * interval µs.
_REFUND = (
    _NOW
    + """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
tat = tat - tonumber(ARGV[1])
if tat <= now then redis.call('DEL', KEYS[1]) return 0 end
redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
return 0
"""
)

# Circuit state in one hash: state, failures, opened_until, probes (in flight), probe_until.
# KEYS[1] circuit; ARGV reset µs, half_open_probes, probe timeout µs, key ttl ms.
# Returns {admitted 0/1, state, µs until a probe may pass, probe 0/1}.
_BEFORE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'opened_until', 'probes', 'probe_until')
local state = h[1] or 'closed'
if state == 'closed' then return {1, 'closed', 0, 0} end
local reset = tonumber(ARGV[1])
if state == 'open' then
  local opened_until = tonumber(h[2])
  if now < opened_until then return {0, 'open', opened_until - now, 0} end
  state = 'half_open'
  h[3] = '0'
end
local probes = tonumber(h[3] or '0')
if probes > 0 and now >= tonumber(h[4] or '0') then
  -- a probe outlived its timeout: it counts as a failed probe, the circuit opens again
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_until', now + reset, 'probes', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {0, 'open', reset, 0}
end
if probes < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probes', probes + 1,
             'probe_until', now + tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {1, 'half_open', 0, 1}
end
local left = tonumber(h[4]) - now
if left < 0 then left = 0 end
return {0, 'half_open', left, 0}
"""
)

# KEYS[1] circuit; ARGV outcome ('success', 'failure' or 'neutral'), probe 0/1, failure
# threshold, reset µs, key ttl ms. Returns the state after the call.
_AFTER = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'failures', 'probes')
local state = h[1] or 'closed'
local probe = ARGV[2] == '1'
if probe and state == 'half_open' then
  local probes = tonumber(h[3] or '1') - 1
  if probes < 0 then probes = 0 end
  redis.call('HSET', KEYS[1], 'probes', probes)
end
if ARGV[1] == 'failure' then
  if state == 'half_open' and probe then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_until', now + tonumber(ARGV[4]),
               'probes', 0, 'failures', 0)
    state = 'open'
  elseif state == 'closed' then
    local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
    if failures >= tonumber(ARGV[3]) then
      redis.call('HSET', KEYS[1], 'state', 'open', 'opened_until', now + tonumber(ARGV[4]),
                 'probes', 0, 'failures', 0)
      state = 'open'
    end
  end
elseif ARGV[1] == 'success' then
  if state == 'half_open' and probe then
    redis.call('DEL', KEYS[1])
    return 'closed'
  elseif state == 'closed' then
    redis.call('HSET', KEYS[1], 'failures', 0)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return state
"""
)

# KEYS[1] circuit. Returns {state, µs until a probe may pass}: what a caller would meet now.
_PEEK = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'state', 'opened_until')
local state = h[1] or 'closed'
if state == 'open' then
  local left = tonumber(h[2]) - now
  if left <= 0 then return {'half_open', 0} end
  return {'open', left}
end
return {state, 0}
"""
)

# Releases a cache load lock only if this loader still holds it. KEYS[1] lock; ARGV token.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Stores a loaded value and releases the loader's lock in one step.
# KEYS[1] value, KEYS[2] lock; ARGV value, ttl ms (0: no expiry), token.
_STORE = """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""

# The effects ledger's claim: create the record as pending unless it exists, in one step.
# KEYS[1] record (a hash), KEYS[2] its thread's index (a set); ARGV name, ttl ms.
# Returns {state, result} of an existing record, or 0 when this call created it.
_EFFECT_CLAIM = """
local found = redis.call('HMGET', KEYS[1], 'state', 'result')
if found[1] then return {found[1], found[2] or ''} end
redis.call('HSET', KEYS[1], 'state', 'pending', 'name', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0
"""

# Removes a thread's effect records and its index. KEYS[1] the index. Returns how many.
_EFFECT_DROP = """
local members = redis.call('SMEMBERS', KEYS[1])
local removed = 0
for _, key in ipairs(members) do removed = removed + redis.call('DEL', key) end
redis.call('DEL', KEYS[1])
return removed
"""


_State = Literal["closed", "open", "half_open"]


class _Deadlines:
    """Bounds one event loop's Redis calls to ``timeout`` seconds with one timer for them all.

        on = backend._async_client()   # this loop's client and deadlines
        with on.deadlines:             # in a task; TimeoutError once the call is past due
            await on.client.get(key)

    ``asyncio.timeout`` arms and cancels a timer for every call, about 6 µs of CPU on a
    Redis call of 70 µs (Python 3.11). This bound is only ever reached by a server that
    stopped answering, so it needs no such precision: while calls are in flight one timer
    fires every quarter ``timeout`` and cancels those past their deadline, and the call's
    exit turns that cancellation into ``TimeoutError`` the way ``asyncio.timeout`` does
    (``uncancel``; a cancellation from elsewhere stays a cancellation). A call thus fails
    between ``timeout`` and 1.25 times ``timeout`` after it started. Calls do not nest.
    """

    __slots__ = ("_calls", "_expired", "_loop", "_period", "_timeout", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._period = timeout / 4
        # Each task in a call: its deadline, and its cancelling() count on entry.
        self._calls: dict[asyncio.Task[Any], tuple[float, int]] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> None:
        task = asyncio.current_task(self._loop)
        if task is None or task in self._calls:
            raise RuntimeError("a RedisBackend call runs in a task, one call at a time")
        now = self._loop.time()
        self._calls[task] = (now + self._timeout, task.cancelling())
        if self._timer is None:
            self._timer = self._loop.call_at(now + self._period, self._tick)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: Any
    ) -> None:
        task = cast("asyncio.Task[Any]", asyncio.current_task(self._loop))
        _, cancelling = self._calls.pop(task)
        if self._expired and task in self._expired:
            self._expired.discard(task)
            if task.uncancel() <= cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError(f"no answer within {self._timeout:g}s") from exc

    def _tick(self) -> None:
        now = self._loop.time()
        for task, (deadline, _) in self._calls.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._timer = self._loop.call_at(now + self._period, self._tick) if self._calls else None

    def pending(self) -> int:
        """Calls in flight (tests: none is left behind, nor a timer once they end)."""
        return len(self._calls) + (self._timer is not None)


class _LoopClient:
    """One event loop's asyncio client and the deadlines of its calls."""

    __slots__ = ("client", "deadlines")

    def __init__(self, client: redis.asyncio.Redis, deadlines: _Deadlines) -> None:
        self.client = client
        self.deadlines = deadlines


async def _close_client(state: _LoopClient) -> None:
    await state.client.aclose()


@dataclass(frozen=True, slots=True)
class BreakerTicket:
    """What ``breaker_before`` decided: admitted or not, the state met, and when to come back."""

    admitted: bool
    state: _State
    retry_after: float
    probe: bool


class RedisBackend:
    """One Redis server shared by the recipes of every worker process.

        shared = RedisBackend("redis://127.0.0.1:6379/0", prefix="myapp:", timeout=0.5)
        shared = RedisBackend(url, fallback="local")   # keep working in-process while it is down
        await shared.aclose()                          # or through Resources.add(shared)

    ``timeout`` bounds every Redis call (connect included). One instance serves every event
    loop and thread of the process: sync callers use a thread-safe sync client, each event
    loop its own asyncio client, closed when that loop shuts down or on ``aclose()``.
    """

    __slots__ = (
        "_async",
        "_lock",
        "_recent",
        "_scripts",
        "_secret_url",
        "_shas",
        "_sync",
        "fallback",
        "prefix",
        "timeout",
        "url",
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "act:",
        timeout: float = 1.0,
        fallback: Literal["raise", "local"] = "raise",
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"RedisBackend url must be a redis://, rediss:// or unix:// URL, got {url!r}"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"RedisBackend prefix must be a str, got {prefix!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise TypeError(f"RedisBackend timeout must be a number, got {timeout!r}")
        if not 0 < timeout < float("inf"):
            raise ValueError(f"RedisBackend timeout must be > 0 and finite, got {timeout!r}")
        if fallback not in ("raise", "local"):
            raise ValueError(f"RedisBackend fallback must be 'raise' or 'local', got {fallback!r}")
        self._secret_url = url
        self.url = redact(url)
        """The server's URL without credentials (what errors and logs show)."""
        self.prefix = prefix
        self.timeout = float(timeout)
        self.fallback = fallback
        self._lock = threading.Lock()
        self._sync: redis.Redis | None = None
        # One asyncio client per event loop, closed when that loop shuts down.
        self._async: PerLoop[_LoopClient] = PerLoop(close=_close_client, forgotten=self._forget)
        # The last loop's client: skips the registry lookup on every call.
        self._recent: tuple[asyncio.AbstractEventLoop, _LoopClient] | None = None
        self._scripts = {
            "reserve": _RESERVE,
            "refund": _REFUND,
            "before": _BEFORE,
            "after": _AFTER,
            "peek": _PEEK,
            "unlock": _UNLOCK,
            "store": _STORE,
            "effect_claim": _EFFECT_CLAIM,
            "effect_drop": _EFFECT_DROP,
        }
        # Called by digest (EVALSHA), loaded again when the server no longer knows one.
        self._shas = {
            name: hashlib.sha1(text.encode()).hexdigest() for name, text in self._scripts.items()
        }

    def __repr__(self) -> str:
        return f"RedisBackend({self.url!r}, prefix={self.prefix!r}, fallback={self.fallback!r})"

    def use_local(self, error: ConnectionError, user: str) -> bool:
        """Whether ``user`` (a recipe's limiter, circuit or cache) should fall back to its
        in-process state after ``error``; logs the warning when it does."""
        if self.fallback != "local":
            return False
        logger.warning(
            "%s: Redis at %s unavailable, using this process's own state: %s", user, self.url, error
        )
        return True

    def key(self, kind: str, name: str) -> str:
        """The Redis key of ``name`` for one recipe ``kind`` (all under ``prefix``)."""
        return f"{self.prefix}{kind}:{name}"

    # -- clients ---------------------------------------------------------------------------

    def _options(self, *, per_socket_timeout: bool = True) -> dict[str, Any]:
        # One quick reconnect covers a server restart (the pooled connection is dead, the
        # server is back); a longer outage fails within the timeout. The asyncio client
        # bounds each whole call with its loop's _Deadlines instead of redis-py's per-read
        # and per-write socket timeouts, which cost a task each on every call (Python 3.11).
        return {
            "socket_timeout": self.timeout if per_socket_timeout else None,
            "socket_connect_timeout": self.timeout,
            "retry": Retry(NoBackoff(), 1),
            "health_check_interval": 0,
        }

    def _sync_client(self) -> redis.Redis:
        client = self._sync
        if client is None:
            with self._lock:
                if self._sync is None:
                    self._sync = redis.Redis.from_url(self._secret_url, **self._options())
                client = self._sync
        return client

    def _async_client(self) -> _LoopClient:
        """This loop's client, and what bounds its calls (``with on.deadlines:``)."""
        loop = asyncio.get_running_loop()
        recent = self._recent
        if recent is None or recent[0] is not loop:
            recent = self._recent = (loop, self._async.get(self._new_async_client))
        return recent[1]

    def _forget(self, state: _LoopClient) -> None:
        """A loop's client left the registry (closed, or its loop ended): keep no reference."""
        recent = self._recent
        if recent is not None and recent[1] is state:
            self._recent = None

    def _new_async_client(self) -> _LoopClient:
        client = redis.asyncio.Redis.from_url(
            self._secret_url, **self._options(per_socket_timeout=False)
        )
        return _LoopClient(client, _Deadlines(asyncio.get_running_loop(), self.timeout))

    def _unavailable(self, error: BaseException) -> NoReturn:
        raise RedisUnavailableError(self.url, error) from error

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        on = self._async_client()
        try:
            with on.deadlines:
                try:
                    return await on.client.evalsha(self._shas[script], len(keys), *keys, *args)
                except redis.exceptions.NoScriptError:  # a restarted or flushed server
                    await on.client.script_load(self._scripts[script])
                    return await on.client.evalsha(self._shas[script], len(keys), *keys, *args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    def _run_sync(self, script: str, keys: list[str], args: list[Any]) -> Any:
        client = self._sync_client()
        try:
            try:  # by digest, as _run() does
                return client.evalsha(self._shas[script], len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                client.script_load(self._scripts[script])
                return client.evalsha(self._shas[script], len(keys), *keys, *args)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    async def ping(self) -> float:
        """One ``PING`` round trip; its duration in seconds (raises when unavailable)."""
        on = self._async_client()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            with on.deadlines:
                await on.client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)
        return loop.time() - start

    async def aclose(self) -> None:
        """Close this loop's client and the sync client; other loops close theirs at shutdown."""
        self._recent = None
        await self._async.aclose()
        self.close_sync()

    def close_sync(self) -> None:
        """Close the sync client (used by sync callers); a later sync call opens a new one."""
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            client.close()

    # -- rate limiter -------------------------------------------------------------------------

    async def reserve(
        self, name: str, *, rate: float, capacity: int, tokens: int, blocking: bool
    ) -> float | None:
        """Take ``tokens`` from bucket ``name``: seconds to wait for them, or ``None`` (refused).

        A blocking reservation always succeeds and holds its place in the shared queue;
        give it back with ``refund`` if the caller stops waiting.
        """
        interval = 1_000_000 / rate
        waited = await self._run(
            "reserve",
            [self.key("rate", name)],
            [interval, capacity * interval, tokens, 1 if blocking else 0],
        )
        return None if waited < 0 else waited / 1_000_000

    def reserve_sync(
        self, name: str, *, rate: float, capacity: int, tokens: int, blocking: bool
    ) -> float | None:
        """``reserve`` for sync callers (threads, langchain-core's sync ``acquire``)."""
        interval = 1_000_000 / rate
        waited = self._run_sync(
            "reserve",
            [self.key("rate", name)],
            [interval, capacity * interval, tokens, 1 if blocking else 0],
        )
        return None if int(waited) < 0 else int(waited) / 1_000_000

    async def refund(self, name: str, *, rate: float, tokens: int) -> None:
        """Give back ``tokens`` reserved but not used (the waiter was cancelled)."""
        await self._run("refund", [self.key("rate", name)], [tokens * 1_000_000 / rate])

    def refund_sync(self, name: str, *, rate: float, tokens: int) -> None:
        """``refund`` for sync callers."""
        self._run_sync("refund", [self.key("rate", name)], [tokens * 1_000_000 / rate])

    # -- circuit breaker ----------------------------------------------------------------------

    @staticmethod
    def _breaker_ttl_ms(reset_timeout: float, probe_timeout: float) -> int:
        # Long enough to outlive an open period and a probe; a quiet circuit is forgotten.
        return int((2 * max(reset_timeout, probe_timeout) + 60) * 1000)

    async def breaker_before(
        self, name: str, *, reset_timeout: float, half_open_probes: int, probe_timeout: float
    ) -> BreakerTicket:
        """Whether a call may go to the dependency now (one round trip)."""
        admitted, state, left, probe = await self._run(
            "before",
            [self.key("circuit", name)],
            [
                int(reset_timeout * 1_000_000),
                half_open_probes,
                int(probe_timeout * 1_000_000),
                self._breaker_ttl_ms(reset_timeout, probe_timeout),
            ],
        )
        return BreakerTicket(
            bool(admitted), cast(_State, _text(state)), int(left) / 1_000_000, bool(probe)
        )

    async def breaker_after(
        self,
        name: str,
        ticket: BreakerTicket,
        outcome: Literal["success", "failure", "neutral"],
        *,
        failure_threshold: int,
        reset_timeout: float,
        probe_timeout: float,
    ) -> str:
        """Record a call's outcome; the circuit's state afterwards."""
        state = await self._run(
            "after",
            [self.key("circuit", name)],
            [
                outcome,
                1 if ticket.probe else 0,
                failure_threshold,
                int(reset_timeout * 1_000_000),
                self._breaker_ttl_ms(reset_timeout, probe_timeout),
            ],
        )
        return _text(state)

    async def breaker_state(self, name: str) -> tuple[str, float]:
        """The circuit's state as a caller would meet it, and seconds until a probe may pass."""
        state, left = await self._run("peek", [self.key("circuit", name)], [])
        return _text(state), int(left) / 1_000_000

    async def breaker_reset(self, name: str) -> None:
        """Forget the circuit (closed, no failures) in every process."""
        on = self._async_client()
        try:
            with on.deadlines:
                await on.client.delete(self.key("circuit", name))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    # -- cache ----------------------------------------------------------------------------

    async def cache_get(self, key: str) -> bytes | None:
        """The stored bytes of ``key``, or ``None``."""
        on = self._async_client()
        try:
            with on.deadlines:
                value = await on.client.get(key)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)
        return value.encode() if isinstance(value, str) else value

    async def cache_lock(self, key: str, token: str, hold: float) -> bool:
        """Take the load lock of ``key`` for ``hold`` seconds; False when another holds it."""
        on = self._async_client()
        try:
            with on.deadlines:
                return bool(await on.client.set(f"{key}:lock", token, nx=True, px=int(hold * 1000)))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    async def cache_locked(self, key: str) -> bool:
        """Whether some loader holds the load lock of ``key``."""
        on = self._async_client()
        try:
            with on.deadlines:
                return bool(await on.client.exists(f"{key}:lock"))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    async def cache_store(self, key: str, value: bytes, ttl: float | None, token: str) -> None:
        """Store ``value`` under ``key`` (expiring after ``ttl`` s) and release the load lock."""
        ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        await self._run("store", [key, f"{key}:lock"], [value, ttl_ms, token])

    async def cache_unlock(self, key: str, token: str) -> None:
        """Release the load lock of ``key`` if ``token`` still holds it (a failed load)."""
        await self._run("unlock", [f"{key}:lock"], [token])

    async def cache_delete(self, key: str) -> None:
        """Remove ``key`` (not its lock: a load in flight completes and stores its value)."""
        on = self._async_client()
        try:
            with on.deadlines:
                await on.client.delete(key)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    # -- effects ledger --------------------------------------------------------------------

    async def effect_claim(
        self, thread_id: str, key: str, name: str, ttl: float
    ) -> tuple[str, bytes] | None:
        """Create effect ``key`` as pending unless it exists; its (state, result) if it did.

        Every record and its thread's index expire after ``ttl`` seconds.
        """
        ttl_ms = max(1, int(ttl * 1000))
        found = await self._run(
            "effect_claim",
            [self.key("effect", f"{thread_id}:{key}"), self.key("effects", thread_id)],
            [name, ttl_ms],
        )
        if not found:
            return None
        state, result = found
        return _text(state), result.encode() if isinstance(result, str) else result

    async def effect_finish(self, thread_id: str, key: str, result: bytes, ttl: float) -> None:
        """Mark effect ``key`` done with its serialized result, for ``ttl`` more seconds."""
        record = self.key("effect", f"{thread_id}:{key}")
        on = self._async_client()
        try:
            with on.deadlines:
                async with on.client.pipeline(transaction=True) as pipe:
                    pipe.hset(record, mapping={"state": "done", "result": result})
                    pipe.pexpire(record, max(1, int(ttl * 1000)))
                    await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    async def effect_release(self, thread_id: str, key: str) -> None:
        """Forget effect ``key`` (it certainly did not happen)."""
        on = self._async_client()
        try:
            with on.deadlines:
                await on.client.delete(self.key("effect", f"{thread_id}:{key}"))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._unavailable(error)

    async def effect_drop_thread(self, thread_id: str) -> int:
        """Remove every effect record of ``thread_id``; how many."""
        return int(await self._run("effect_drop", [self.key("effects", thread_id)], []))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


if __name__ == "__main__":
    import os
    import shutil
    import socket
    import subprocess
    import tempfile
    import time
    from collections.abc import Iterator
    from contextlib import contextmanager

    @contextmanager
    def temporary_redis() -> Iterator[str]:
        """REDIS_URL if set, else a throwaway local redis-server (persistence off)."""
        if os.environ.get("REDIS_URL"):
            yield os.environ["REDIS_URL"]
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: install Redis or set REDIS_URL")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        root = tempfile.mkdtemp(prefix="redis-example-")
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", root],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            probe = redis.Redis.from_url(url)
            try:
                for _ in range(500):
                    try:
                        probe.ping()
                        break
                    except redis.ConnectionError:
                        time.sleep(0.01)
            finally:
                probe.close()
            yield url
        finally:
            server.terminate()
            server.wait()
            shutil.rmtree(root, ignore_errors=True)

    async def worker(shared: RedisBackend, label: str) -> None:
        # Each asyncio.run stands for one worker process: they share one budget of 5/s.
        try:
            for _ in range(3):
                wait = await shared.reserve("demo-api", rate=5, capacity=1, tokens=1, blocking=True)
                assert wait is not None
                await asyncio.sleep(wait)
                print(f"{label}: call at +{time.monotonic() - start:.2f}s")
        finally:
            await shared.aclose()

    with temporary_redis() as url:
        shared = RedisBackend(url)
        start = time.monotonic()
        asyncio.run(worker(shared, "worker A"))
        asyncio.run(worker(shared, "worker B"))
        print(f"6 calls at 5/s across two workers took {time.monotonic() - start:.2f}s")
