"""Circuit breaker shared by name: fail fast while a dependency is down, probe to recover.

    breaker = circuit_breaker("search-api", BreakerPolicy(failure_threshold=5, reset_timeout=30))
    async with breaker.guard():  # raises CircuitOpenError(retry_after=...) while open
        hits = await search(query)
    builder.add_node(CircuitBreakerNode(search_node, breaker, when_open=lambda s, e: {"hits": []}))

The circuit is *closed* (calls pass) until ``failure_threshold`` calls in a row fail; then
it is *open* for ``reset_timeout`` seconds and every call fails at once with
``CircuitOpenError``, whose ``retry_after`` says when the next probe is allowed. After the
timeout it is *half-open*: up to ``half_open_probes`` calls go through as probes; a probe
that succeeds closes the circuit, one that fails opens it again. A probe gets at most
``probe_timeout`` seconds; one that takes longer counts as a failure, so a hanging probe
cannot keep the circuit half-open. Calls refused while a probe is in flight get a
``retry_after`` of the time left before that probe must have ended (at most
``reset_timeout``): the circuit closes or re-opens as soon as the probe ends, and by then
at the latest. Set ``probe_timeout`` near the slowest healthy answer to keep it short.

What counts: ``failure_on`` decides which exceptions are the dependency's fault (any other
exception means the dependency answered, which counts as a success). A ``TimeoutError``
raised inside the guarded call (``asyncio.timeout`` around the request) is an exception
like any other: a failure under the default ``failure_on=Exception``. Two endings count as
nothing, neither failure nor success, and free a probe's slot: cancellation, and
LangGraph's control flow (``interrupt()`` pausing the run for a human, ``Command.PARENT``;
see ``act_operator_lib.control``), so pending approvals never open the circuit. A node
``TimeoutPolicy`` cancels the node from outside, so it reaches the breaker as a plain
cancellation and is not counted: to count slow answers, put the timeout inside the guarded
call (or rely on ``probe_timeout`` while half-open).

Every ``circuit_breaker(name, ...)`` call with the same name returns the same breaker, so
all nodes, graphs and runs in the process (any event loop or thread) share what it learned.

Shared by several worker processes (``shared=RedisBackend(...)``, see ``redis_backend``):

    breaker = circuit_breaker("search", BreakerPolicy(failure_threshold=5), shared=RedisBackend(URL))
    async with breaker.guard():
        hits = await search(query)

the failure count, the state and the time it opened live in Redis, changed only by
server-side scripts (one round trip before a call, one after): once the circuit opens in
one process, every process refuses its very next call, and half-open admits
``half_open_probes`` probes across all processes together. A probe that outlives
``probe_timeout`` (its process died, say) counts as a failed probe. A shared breaker is used
with ``async with breaker.guard()``, ``await breaker.call(...)`` and ``await
breaker.astate()``; its sync ``with``/``before_call`` raise ``TypeError``. When Redis is
unavailable the guard raises ``RedisUnavailableError``, or with ``RedisBackend(
fallback="local")`` falls back to this process's own circuit with a warning.

Composes with retry: the retry recipe never retries ``CircuitOpenError``, so put the
breaker inside the retried operation and an open circuit ends the retries at once.

When to use LangGraph's native tools instead: a node's ``RetryPolicy`` (retry the whole
node on given exceptions) and an error-handler node (route a failed node's error to a
fallback) cover a single run's failures. A breaker adds memory *across* runs: after enough
failures every run stops calling the dependency for a while. Use it for a shared remote
service; a ``RetryPolicy`` alone is the better choice when failures are independent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.control import DoNotRetry, is_control_flow
from act_operator_lib.metrics import record
from act_operator_lib.named import Named
from act_operator_lib.validate import check_int, check_number

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitBreakerNode",
    "CircuitOpenError",
    "SharedCircuitStore",
    "circuit_breaker",
]

logger = logging.getLogger("act_operator_lib.cookbook.circuit_breaker")

P = ParamSpec("P")
T = TypeVar("T")
State = Literal["closed", "open", "half_open"]


class CircuitOpenError(DoNotRetry, RuntimeError):
    """A call was refused because the circuit is open; ``retry_after`` seconds until a probe.

    Retrying before ``retry_after`` is pointless: marked ``DoNotRetry``, so the retry
    recipe never retries it.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; next probe in {retry_after:.3f}s")
        self.name = name
        """The breaker's name."""
        self.retry_after = retry_after
        """Seconds until the breaker lets a probe call through."""

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.name, self.retry_after))


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When a circuit opens, how long it stays open, and what counts as a failure.

        BreakerPolicy(failure_threshold=5, reset_timeout=30.0)
        BreakerPolicy(failure_on=(ConnectionError, TimeoutError))
        BreakerPolicy(failure_on=lambda e: getattr(e, "status", 500) >= 500)

    Validated once, here: a bad value fails where the breaker is configured.
    """

    failure_threshold: int = 5
    """Consecutive failures that open the circuit; >= 1."""
    reset_timeout: float = 30.0
    """Seconds the circuit stays open before letting probes through; > 0."""
    half_open_probes: int = 1
    """Calls let through at once while half-open; >= 1."""
    failure_on: (
        type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
    ) = Exception
    """Exceptions that count as failures: classes, or a predicate. Others count as success."""
    probe_timeout: float = 30.0
    """Seconds a half-open probe may take before it counts as a failure; > 0. Set it near
    the slowest healthy answer: ``call()`` and ``async with guard()`` cut a probe off then,
    and calls refused meanwhile are told to come back within what is left of it."""

    def __post_init__(self) -> None:
        check_int("BreakerPolicy", "failure_threshold", self.failure_threshold, min=1)
        check_number("BreakerPolicy", "reset_timeout", self.reset_timeout, gt=0, unit="seconds")
        check_int("BreakerPolicy", "half_open_probes", self.half_open_probes, min=1)
        check_number("BreakerPolicy", "probe_timeout", self.probe_timeout, gt=0, unit="seconds")
        failure_on = self.failure_on
        classes = failure_on if isinstance(failure_on, tuple) else (failure_on,)
        if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes) and (
            isinstance(failure_on, tuple | type) or not callable(failure_on)
        ):
            raise TypeError(
                "BreakerPolicy failure_on must be an exception class, a tuple of them or a"
                f" predicate taking the exception, got {failure_on!r}"
            )

    def is_failure(self, error: BaseException) -> bool:
        """Whether ``error`` counts against the circuit."""
        failure_on = self.failure_on
        if isinstance(failure_on, type | tuple):
            return isinstance(error, failure_on)
        return bool(failure_on(error))


class SharedCircuitStore(Protocol):
    """What a breaker shared by processes needs from its store (``RedisBackend`` has it)."""

    url: str

    def use_local(self, error: ConnectionError, user: str) -> bool: ...

    async def breaker_before(
        self, name: str, *, reset_timeout: float, half_open_probes: int, probe_timeout: float
    ) -> Any: ...
    async def breaker_after(
        self,
        name: str,
        ticket: Any,
        outcome: Literal["success", "failure", "neutral"],
        *,
        failure_threshold: int,
        reset_timeout: float,
        probe_timeout: float,
    ) -> str: ...
    async def breaker_state(self, name: str) -> tuple[str, float]: ...


class CircuitBreaker:
    """Counts failures of calls to one dependency and refuses calls while it is down.

        breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3))  # circuit_breaker() shares
        async with breaker:
            await call_api()
        result = await breaker.call(call_api, "arg")
        breaker.state  # "closed", "open" or "half_open"

    The state is plain numbers guarded by a thread lock that is never held across an
    await, so one breaker serves every event loop and thread in the process.

    ``clock`` is where the breaker reads the time (default ``time.monotonic``, the clock
    asyncio's loops keep); tests pass a fake clock that their event loop shares. A probe's
    bound is set as a delay, so a clock must tick at the rate of the event loop's clock.
    (New in this version; the clock was fixed.)
    """

    __slots__ = (
        "_clock",
        "_failures",
        "_generation",
        "_lock",
        "_opened_at",
        "_probe_deadlines",
        "_state",
        "name",
        "policy",
        "shared",
    )

    policy: BreakerPolicy
    """The threshold, reset timeout and what counts as a failure."""
    name: str
    """The name errors and metrics use (the registry's key, for a shared breaker)."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        name: str = "circuit",
        shared: SharedCircuitStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy is None:
            policy = BreakerPolicy()
        if not isinstance(policy, BreakerPolicy):
            raise TypeError(f"CircuitBreaker policy must be a BreakerPolicy, got {policy!r}")
        if shared is not None and not callable(getattr(shared, "breaker_before", None)):
            raise TypeError(
                f"CircuitBreaker shared must be a shared store such as RedisBackend, got {shared!r}"
            )
        if not callable(clock):
            raise TypeError(
                f"CircuitBreaker clock must be a callable returning seconds, got {clock!r}"
            )
        self.policy = policy
        self.name = name
        self.shared = shared
        """The store the circuit lives in when several processes share it, else ``None``."""
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0  # consecutive, while closed
        self._opened_at = 0.0  # the clock's time when the circuit last opened
        # When each probe in flight must have ended (on the clock), while half-open.
        self._probe_deadlines: list[float] = []
        # Bumped on every state change: a call admitted under an older state does not get
        # to re-open or close the circuit when it finally ends.
        self._generation = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker(name={self.name!r}, state={self.state!r})"

    @property
    def state(self) -> State:
        """``"closed"``, ``"open"`` or ``"half_open"`` (an open circuit past its timeout).

        For a shared breaker: this process's own circuit (its fallback); ask ``astate()``.
        """
        with self._lock:
            if self._state == "open" and self._retry_after(self._clock()) <= 0:
                return "half_open"
            return self._state

    async def astate(self) -> State:
        """The state as the next call would meet it; for a shared breaker, as Redis has it."""
        if self.shared is None:
            return self.state
        state, _ = await self.shared.breaker_state(self.name)
        return state  # type: ignore[return-value]

    def _retry_after(self, now: float) -> float:
        return self._opened_at + self.policy.reset_timeout - now

    def _move(self, state: State, now: float) -> None:
        """Change state (lock held)."""
        self._state = state
        self._generation += 1
        self._failures = 0
        self._probe_deadlines.clear()
        if state == "open":
            self._opened_at = now
        record("circuit_state_changes", name=self.name, state=state)

    def before_call(self) -> tuple[int, float | None]:
        """Admit a call or raise ``CircuitOpenError``; returns a ticket for ``after_call``.

        The ticket is opaque: the state's generation and, for a probe, when it must end.
        """
        self._refuse_sync_use()
        return self._local_before_call()

    def _local_before_call(self) -> tuple[int, float | None]:
        with self._lock:
            if self._state == "closed":
                return self._generation, None
            now = self._clock()
            if self._state == "open":
                retry_after = self._retry_after(now)
                if retry_after > 0:
                    raise CircuitOpenError(self.name, retry_after)
                self._move("half_open", now)
            if self._probe_deadlines:
                earliest = min(self._probe_deadlines)
                if now >= earliest:
                    # A probe overran probe_timeout without ending (a blocking call nothing
                    # could cut short): that is its failure, and its late outcome is ignored.
                    self._move("open", now)
                    raise CircuitOpenError(self.name, self.policy.reset_timeout)
                if len(self._probe_deadlines) >= self.policy.half_open_probes:
                    # The circuit leaves half-open when the probe ends, at the latest by its
                    # deadline; never promise a longer wait than an open circuit's.
                    raise CircuitOpenError(
                        self.name, min(earliest - now, self.policy.reset_timeout)
                    )
            deadline = now + self.policy.probe_timeout
            self._probe_deadlines.append(deadline)
            return self._generation, deadline

    def after_call(self, ticket: tuple[int, float | None], error: BaseException | None) -> None:
        """Record how an admitted call ended: ``error`` is ``None`` for a success.

        Cancellation and LangGraph control flow (``GraphBubbleUp``) count as nothing.
        """
        generation, probe_deadline = ticket
        outcome = self._outcome(error)
        neutral, failed = outcome == "neutral", outcome == "failure"
        with self._lock:
            if generation != self._generation:
                return  # admitted under an older state: what it says is out of date
            now = self._clock()
            if probe_deadline is not None:
                self._probe_deadlines.remove(probe_deadline)
                if neutral:
                    return  # the probe slot is free again for the next caller
                overran = now >= probe_deadline
                self._move("open" if failed or overran else "closed", now)
            elif failed:
                self._failures += 1
                if self._failures >= self.policy.failure_threshold:
                    self._move("open", now)
            elif not neutral:
                self._failures = 0

    def _refuse_sync_use(self) -> None:
        if self.shared is not None:
            raise TypeError(
                f"circuit breaker {self.name!r} is shared through {self.shared.url}: use"
                " `async with breaker.guard()` or `await breaker.call(...)`"
            )

    def _outcome(self, error: BaseException | None) -> Literal["success", "failure", "neutral"]:
        """How a call that ended with ``error`` counts. Neutral: neither the dependency's
        fault nor its answer (the caller stopped waiting, or LangGraph paused or redirected
        the run)."""
        if error is None:
            return "success"
        if not isinstance(error, Exception) or is_control_flow(error):
            return "neutral"
        return "failure" if self.policy.is_failure(error) else "success"

    def _use_local(self, error: ConnectionError) -> bool:
        """Whether an unavailable shared store falls back to this process's own circuit."""
        return self.shared is not None and self.shared.use_local(
            error, f"circuit breaker {self.name!r}"
        )

    def _probe_timed_out(self, ticket: tuple[int, float | None]) -> TimeoutError:
        """Count a probe cut off at its deadline as a failure; the error to raise."""
        error = self._probe_timeout_error()
        generation, probe_deadline = ticket
        with self._lock:
            if generation == self._generation and probe_deadline is not None:
                self._move("open", self._clock())
        return error

    def _probe_timeout_error(self) -> TimeoutError:
        return TimeoutError(
            f"probe of circuit {self.name!r} took longer than {self.policy.probe_timeout:g}s"
            " (probe_timeout); counted as a failure"
        )

    def _probe_limit(self, ticket: tuple[int, float | None]) -> asyncio.Timeout | None:
        """The timeout bounding a probe (``None`` for an ordinary call)."""
        probe_deadline = ticket[1]
        if probe_deadline is None:
            return None
        # Relative, since an event loop's clock need not be the breaker's.
        return asyncio.timeout(max(0.0, probe_deadline - self._clock()))

    async def call(
        self, operation: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``await operation(*args, **kwargs)`` through the breaker (a probe is bounded)."""
        if self.shared is not None:
            async with self.guard():
                return await operation(*args, **kwargs)
        ticket = self.before_call()
        limit = self._probe_limit(ticket)
        try:
            if limit is None:
                result = await operation(*args, **kwargs)
            else:
                async with limit:
                    result = await operation(*args, **kwargs)
        except BaseException as error:
            if limit is not None and limit.expired() and isinstance(error, TimeoutError):
                raise self._probe_timed_out(ticket) from error
            self.after_call(ticket, error)
            raise
        self.after_call(ticket, None)
        return result

    def guard(self) -> _Guard:
        """A context manager running its block as one call: ``async with breaker.guard():``.

        Entering raises ``CircuitOpenError`` while the circuit is open; leaving records
        how the block ended. ``async with`` cuts a probe off at ``probe_timeout``; plain
        ``with`` works too (nothing in it awaits), and a blocking probe that overruns is
        counted as failed by the next caller.
        """
        return _Guard(self)


class _Guard:
    """One call through a breaker, as a (sync or async) context manager."""

    __slots__ = ("_breaker", "_limit", "_shared_ticket", "_ticket")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._ticket: tuple[int, float | None] | None = None
        self._limit: asyncio.Timeout | None = None
        self._shared_ticket: Any = None  # the shared store's admission, when shared

    def __enter__(self) -> None:
        if self._ticket is not None:
            raise RuntimeError("a CircuitBreaker.guard() is single-use; call guard() again")
        self._ticket = self._breaker.before_call()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._ticket is not None
        self._breaker.after_call(self._ticket, exc)

    async def __aenter__(self) -> None:
        breaker = self._breaker
        shared = breaker.shared
        if shared is not None:
            if self._shared_ticket is not None or self._ticket is not None:
                raise RuntimeError("a CircuitBreaker.guard() is single-use; call guard() again")
            policy = breaker.policy
            try:
                ticket = await shared.breaker_before(
                    breaker.name,
                    reset_timeout=policy.reset_timeout,
                    half_open_probes=policy.half_open_probes,
                    probe_timeout=policy.probe_timeout,
                )
            except ConnectionError as error:
                if not breaker._use_local(error):
                    raise
                self._ticket = breaker._local_before_call()
            else:
                if not ticket.admitted:
                    raise CircuitOpenError(breaker.name, ticket.retry_after)
                self._shared_ticket = ticket
                if ticket.probe:
                    self._limit = asyncio.timeout(policy.probe_timeout)
                    await self._limit.__aenter__()
                return
        else:
            self.__enter__()
        assert self._ticket is not None
        self._limit = self._breaker._probe_limit(self._ticket)
        if self._limit is not None:
            await self._limit.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._shared_ticket is not None:
            await self._shared_exit(exc, tb)
            return
        assert self._ticket is not None
        if self._limit is not None:
            try:
                await self._limit.__aexit__(exc_type, exc, tb)
            except TimeoutError as timed_out:  # only raised when the probe's time ran out
                raise self._breaker._probe_timed_out(self._ticket) from timed_out
        self.__exit__(exc_type, exc, tb)

    async def _shared_exit(self, exc: BaseException | None, tb: TracebackType | None) -> None:
        breaker = self._breaker
        shared = breaker.shared
        assert shared is not None
        outcome = breaker._outcome(exc)
        timed_out: TimeoutError | None = None
        if self._limit is not None:
            try:
                await self._limit.__aexit__(type(exc) if exc else None, exc, tb)
            except TimeoutError as error:  # the probe ran out of time: a failure
                outcome = "failure"
                timed_out = breaker._probe_timeout_error()
                timed_out.__cause__ = error
        policy = breaker.policy
        try:
            # Shielded: a caller cancelled right now must still free its probe slot.
            state = await asyncio.shield(
                shared.breaker_after(
                    breaker.name,
                    self._shared_ticket,
                    outcome,
                    failure_threshold=policy.failure_threshold,
                    reset_timeout=policy.reset_timeout,
                    probe_timeout=policy.probe_timeout,
                )
            )
        except ConnectionError as error:
            if exc is None and timed_out is None:
                raise
            logger.warning("circuit breaker %r: outcome not recorded: %s", breaker.name, error)
        else:
            if state != self._shared_ticket.state:
                record("circuit_state_changes", name=breaker.name, state=state)
        if timed_out is not None:
            raise timed_out


_registry: Named[CircuitBreaker] = Named("circuit_breaker")


def circuit_breaker(
    name: str, policy: BreakerPolicy | None = None, *, shared: SharedCircuitStore | None = None
) -> CircuitBreaker:
    """The breaker called ``name``, created with ``policy`` (default ``BreakerPolicy()``).

        breaker = circuit_breaker("payments", BreakerPolicy(failure_threshold=3))
        breaker = circuit_breaker("payments", shared=RedisBackend(URL))  # every worker's

    Asking again with the same name returns the same breaker; asking with a different
    policy or another shared store is a mistake and raises ``ValueError``.
    """
    chosen = BreakerPolicy() if policy is None else policy
    return _registry.get(
        name,
        lambda: CircuitBreaker(chosen, name=name, shared=shared),
        policy=chosen,
        shared=shared,
    )


class CircuitBreakerNode(AsyncBaseNode):
    """A node that runs ``operation(state)`` through ``breaker``.

        async def charge(state: State) -> dict[str, Any]:
            return {"receipt": await payments.charge(state["order"])}

        def degrade(state: State, error: CircuitOpenError) -> dict[str, Any]:
            return {"receipt": None, "retry_in": error.retry_after}

        builder.add_node("charge", CircuitBreakerNode(charge, circuit_breaker("payments"), when_open=degrade))

    ``operation`` is a LangGraph node function and its update is returned unchanged, as
    every wrapper node in the cookbook does. While the circuit is open the node returns
    ``when_open(state, error)`` if given, and raises ``CircuitOpenError`` otherwise (route
    it with an error-handler node).
    """

    def __init__(
        self,
        operation: Callable[[Any], Awaitable[dict[str, Any]]],
        breaker: CircuitBreaker,
        *,
        when_open: Callable[[Any, CircuitOpenError], dict[str, Any]] | None = None,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not callable(operation):
            raise TypeError(f"CircuitBreakerNode operation must be callable, got {operation!r}")
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(f"CircuitBreakerNode breaker must be a CircuitBreaker, got {breaker!r}")
        if when_open is not None and not callable(when_open):
            raise TypeError(f"CircuitBreakerNode when_open must be callable, got {when_open!r}")
        super().__init__(name=name or getattr(operation, "__name__", None), verbose=verbose)
        self.operation = operation
        self.breaker = breaker
        self.when_open = when_open

    async def execute(self, state: Any) -> dict[str, Any]:
        try:
            return await self.breaker.call(self.operation, state)
        except CircuitOpenError as error:
            self.log("circuit open", breaker=error.name, retry_after=error.retry_after)
            if self.when_open is None:
                raise
            return self.when_open(state, error)


if __name__ == "__main__":
    import asyncio
    from typing import TypedDict

    from langgraph.graph import START, StateGraph

    class Order(TypedDict, total=False):
        order: int
        receipt: str | None
        note: str

    calls = 0

    async def charge(state: Order) -> dict[str, Any]:
        global calls
        calls += 1
        if state["order"] < 3:  # the payment service is down for the first orders
            raise ConnectionError("payment service unreachable")
        return {"receipt": f"receipt-{state['order']}", "note": "charged"}

    def degrade(state: Order, error: CircuitOpenError) -> dict[str, Any]:
        return {"receipt": None, "note": f"circuit open, retry in {error.retry_after:.2f}s"}

    async def main() -> None:
        breaker = circuit_breaker(
            "example-payments", BreakerPolicy(failure_threshold=2, reset_timeout=0.2)
        )
        builder = StateGraph(Order)
        builder.add_node("charge", CircuitBreakerNode(charge, breaker, when_open=degrade))
        builder.add_edge(START, "charge")
        graph = builder.compile()
        for order in range(5):
            if order == 3:
                await asyncio.sleep(0.25)  # past reset_timeout: the next run is a probe
            try:
                result = await graph.ainvoke({"order": order})
                outcome = result["note"]
            except ConnectionError as error:
                outcome = f"failed: {error}"
            print(f"order {order}: {outcome} (circuit {breaker.state})")
        print(f"the payment service was called {calls} times for 5 orders")

    asyncio.run(main())
