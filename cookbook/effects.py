"""Side effects that happen once per node execution, across resumes, retries and crashes.

    ledger = EffectLedger()                                   # records in the graph's store
    async def pay(state: State, runtime: Runtime) -> dict[str, Any]:
        receipt = await ledger.once("charge", lambda key: charge(state, key), runtime=runtime)
        return {"receipt": receipt}

LangGraph runs a node again from its first line whenever it resumes it: after ``interrupt()``
and ``Command(resume=...)``, on each ``RetryPolicy`` attempt, and when a run continues from
its last checkpoint after a crash (``invoke(None, config)``). Everything before that point
happens again. A node execution has a stable identity, ``runtime.execution_info``
(``thread_id``, ``checkpoint_ns``, ``task_id``), the same on every one of those re-runs; the
ledger keys each effect by it, by the effect's name and by its occurrence ``k`` in that
execution (the third ``"charge"`` of a loop is another effect than the first).

What ``once`` does the first time: records the effect as *pending*, calls ``call(key)`` with
the effect's deterministic key (send it as an idempotency key: ``idempotency_headers(key)``),
records it *done* with its result (``serializer``, JSON by default) and returns the result.
Reached again by the same execution it returns the stored result without calling. A
*pending* record means a run died between the call and the record, so the outcome is
unknown: with ``idempotent=True`` (the receiver dedupes by key) the call is made again with
the same key; with ``reconcile=`` the hook asks the outside world (return the result, or
``NOT_DONE`` to have the call made); otherwise ``EffectOutcomeUnknown`` is raised. A
non-idempotent effect is never called twice silently. A call that raises leaves the record
pending (it may have happened) unless it raises ``EffectNotPerformed``, which releases it.

For effects that are writes to PostgreSQL, ``ledger.transaction`` (``PostgresBackend``)
writes the ledger row in the same transaction as your statements: committed together or not
at all, so there is no unknown window. It costs the round trips of a bare ``BEGIN``, your
statements, ``COMMIT``: the claim travels with ``BEGIN`` and a stored result with ``COMMIT``.

What is guaranteed, and what is not:

- Identity survives a crash only for a task prepared from a saved checkpoint. With
  ``durability="sync"`` that is every task. With ``"async"`` a kill before the previous
  step's checkpoint landed, and with ``"exit"`` a kill anywhere after the last saved
  checkpoint, re-runs the lost steps as *new* tasks whose effects happen again: use
  ``"sync"`` for graphs with effects beyond the first step after a resume.
- A fork or time travel (``invoke`` from an earlier ``checkpoint_id``) creates new tasks and
  so runs their effects again: that is what a fork means. Each ``Send`` task is its own
  execution (five sends, five effects, each once). A subgraph's nodes have their own
  ``checkpoint_ns``.
- A graph without a checkpointer has no identity to key by: the first effect raises
  ``EffectLedgerError`` instead of silently running at least once.
- The store backend (``StoreBackend``, the default when the graph has a store) reads then
  writes: it is exact for re-runs (resume, retry, another worker after the first died), not
  for two live executions of one task at the same instant. ``PostgresBackend`` and
  ``RedisEffectBackend`` claim atomically.
- Records expire after ``retention`` seconds (Redis drops them itself; elsewhere call
  ``purge_expired()`` now and then) and go with their thread (``delete_thread(thread_id)``,
  next to the checkpointer's ``adelete_thread``).

When to use LangGraph's native tools instead: a deterministic, side-effect-free step needs
nothing (re-running it is harmless); the Functional API's ``@task`` results are checkpointed
once the task *finished*, which covers effects that cannot die half-way.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, overload

from langgraph.store.base import BaseStore

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record

from .postgres import PostgresPool

__all__ = [
    "NOT_DONE",
    "EffectBackend",
    "EffectLedger",
    "EffectLedgerError",
    "EffectNode",
    "EffectNotPerformed",
    "EffectOutcomeUnknown",
    "EffectRecord",
    "EffectTransaction",
    "JsonSerializer",
    "PostgresBackend",
    "RedisEffectBackend",
    "StoreBackend",
    "idempotency_headers",
]

T = TypeVar("T")


class EffectLedgerError(RuntimeError):
    """The ledger cannot key an effect (no checkpointer, no backend) or was misused."""


class EffectOutcomeUnknown(RuntimeError):
    """An earlier run started this effect and died before recording its outcome.

    Raised for an effect that is neither ``idempotent`` nor has a ``reconcile`` hook: find out
    what happened (``key`` is what the call was given) and resume, or fork the run.
    """

    def __init__(self, effect: str, key: str, thread_id: str) -> None:
        super().__init__(
            f"effect {effect!r} (key {key}, thread {thread_id!r}) was started by an earlier run"
            " that died before recording its outcome; it is not idempotent and has no"
            " reconcile hook, so it is not called again"
        )
        self.effect = effect
        """The effect's name."""
        self.key = key
        """The idempotency key the interrupted call was given."""
        self.thread_id = thread_id


class EffectNotPerformed(Exception):
    """Raise from an effect's call when it certainly did not happen (a refusal, a 4xx).

    The pending record is released, so the next attempt calls again; the cause propagates.
    """


class _NotDone:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_DONE"


NOT_DONE: Any = _NotDone()
"""What a ``reconcile`` hook returns when the effect did not happen: the ledger calls it."""


def idempotency_headers(key: str) -> dict[str, str]:
    """``{"Idempotency-Key": key}``, the header the IETF httpapi draft names, for a request."""
    return {"Idempotency-Key": key}


class Serializer(Protocol):
    def dumps(self, value: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """Results as compact JSON (the default); pass any object with ``dumps``/``loads``."""

    __slots__ = ()

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class EffectRecord(NamedTuple):
    """What a backend knows about one effect key."""

    state: Literal["pending", "done"]
    result: bytes | None


class EffectBackend(ABC):
    """Where the ledger keeps its records; one small interface, several backends.

    ``claim`` is the only operation on the path of every effect: it creates a pending record
    unless one exists and returns the record that existed (``None`` when this call created it).
    """

    @abstractmethod
    async def claim(
        self, key: str, thread_id: str, name: str, expires_at: float
    ) -> EffectRecord | None:
        """Create ``key`` as pending unless it exists; the existing record, or ``None``."""

    @abstractmethod
    async def finish(self, key: str, thread_id: str, result: bytes, expires_at: float) -> None:
        """Mark ``key`` done with its serialized result."""

    @abstractmethod
    async def release(self, key: str, thread_id: str) -> None:
        """Forget ``key`` (its effect certainly did not happen)."""

    @abstractmethod
    async def delete_thread(self, thread_id: str) -> int:
        """Remove every record of ``thread_id``; how many."""

    @abstractmethod
    async def purge_expired(self) -> int:
        """Remove every record past its retention; how many."""


_NAMESPACE = "act_effects"


class StoreBackend(EffectBackend):
    """Records in a LangGraph ``BaseStore`` (``InMemoryStore``, ``AsyncPostgresStore``, ...).

    Items live under ``("act_effects", thread_id)``; values are JSON-safe (the result base64).
    """

    __slots__ = ("store",)

    def __init__(self, store: BaseStore) -> None:
        if not isinstance(store, BaseStore):
            raise TypeError(f"StoreBackend store must be a BaseStore, got {store!r}")
        self.store = store

    async def claim(
        self, key: str, thread_id: str, name: str, expires_at: float
    ) -> EffectRecord | None:
        item = await self.store.aget((_NAMESPACE, thread_id), key)
        if item is not None:
            value = item.value
            result = value.get("result")
            return EffectRecord(
                value["state"], None if result is None else base64.b64decode(result)
            )
        value = {"state": "pending", "name": name, "expires_at": expires_at, "result": None}
        await self.store.aput((_NAMESPACE, thread_id), key, value, index=False)
        return None

    async def finish(self, key: str, thread_id: str, result: bytes, expires_at: float) -> None:
        value = {"state": "done", "result": base64.b64encode(result).decode()}
        await self.store.aput(
            (_NAMESPACE, thread_id), key, {**value, "expires_at": expires_at}, index=False
        )

    async def release(self, key: str, thread_id: str) -> None:
        await self.store.adelete((_NAMESPACE, thread_id), key)

    async def delete_thread(self, thread_id: str) -> int:
        return await self._delete_where((_NAMESPACE, thread_id), lambda _value: True)

    async def purge_expired(self) -> int:
        now = time.time()
        return await self._delete_where((_NAMESPACE,), lambda value: value["expires_at"] < now)

    async def _delete_where(
        self, prefix: tuple[str, ...], doomed: Callable[[Mapping[str, Any]], bool]
    ) -> int:
        removed = offset = 0
        while True:
            items = await self.store.asearch(prefix, limit=500, offset=offset)
            victims = [item for item in items if doomed(item.value)]
            for item in victims:
                await self.store.adelete(item.namespace, item.key)
            removed += len(victims)
            offset += len(items) - len(victims)  # the survivors stay ahead of the next page
            if len(items) < 500:
                return removed


# The key leads with the thread, so a thread's records are one range of the primary key;
# no other index, so a claim costs one index insert. Its columns compare bytes (COLLATE "C"):
# equality is the same under any collation, and the index never sorts by language rules.
# A logged table: a record must survive a crash as surely as the effect it stands for.
_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS act_effects (
    thread_id text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    name text NOT NULL,
    state text NOT NULL,
    result bytea,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (thread_id, key)
)
"""
# One round trip: insert the claim, or read what is there. The second branch reads the
# statement's snapshot, so a row committed by a concurrent claimer while this one waited on
# the key can be missing from it: claim() then reads again.
_CLAIM_SQL = """
WITH ins AS (
    INSERT INTO act_effects (thread_id, key, name, state, expires_at)
    VALUES ($2, $1, $3, $4, to_timestamp($5))
    ON CONFLICT (thread_id, key) DO NOTHING
    RETURNING key
)
SELECT true AS claimed, NULL::text AS state, NULL::bytea AS result FROM ins
UNION ALL
SELECT false, state, result FROM act_effects WHERE thread_id = $2 AND key = $1
"""
# Inside the caller's transaction the common case is the first run: a plain insert.
_CLAIM_DONE_SQL = """
INSERT INTO act_effects (thread_id, key, name, state, expires_at)
VALUES ($2, $1, $3, 'done', to_timestamp($4))
ON CONFLICT (thread_id, key) DO NOTHING
"""
_READ_SQL = "SELECT false, state, result FROM act_effects WHERE thread_id = $2 AND key = $1"
# ledger.transaction's statements, prepared once per connection (at its first use there) so
# that each use is planned once and sent with BEGIN or COMMIT in one simple-protocol query.
_PREPARE_SQL = (
    f"PREPARE act_effects_claim (text, text, text, float8) AS {_CLAIM_DONE_SQL};"
    " PREPARE act_effects_result (text, text, bytea) AS"
    " UPDATE act_effects SET result = $3 WHERE thread_id = $2 AND key = $1"
)


class PostgresBackend(EffectBackend):
    """Records in a PostgreSQL table ``act_effects``, through the ``postgres`` recipe's pool.

        backend = PostgresBackend(db)          # db: PostgresPool
        await backend.setup()                  # the table, once per database

    A first effect costs two round trips (claim, done), a replayed one one (the claim reads
    the record). ``EffectLedger.transaction`` writes the row inside your transaction at no
    extra round trip (see there). The table is an ordinary, logged one: a record must
    survive a server crash as surely as the effect it stands for.
    """

    __slots__ = ("db", "dsn")

    def __init__(self, db: PostgresPool, *, dsn: str | None = None) -> None:
        if not isinstance(db, PostgresPool):
            raise TypeError(f"PostgresBackend db must be a PostgresPool, got {db!r}")
        self.db = db
        self.dsn = dsn

    async def setup(self) -> None:
        """Create the table and its indexes unless they exist."""
        async with self.db.connection(self.dsn) as conn:
            await conn.execute(_TABLE_SQL)

    async def claim(
        self, key: str, thread_id: str, name: str, expires_at: float
    ) -> EffectRecord | None:
        async with self.db.connection(self.dsn) as conn:
            return await _claim(conn, key, thread_id, name, "pending", expires_at)

    async def finish(self, key: str, thread_id: str, result: bytes, expires_at: float) -> None:
        await self.db.execute(
            "UPDATE act_effects SET state = 'done', result = $3, expires_at = to_timestamp($4)"
            " WHERE thread_id = $2 AND key = $1",
            key,
            thread_id,
            result,
            expires_at,
            dsn=self.dsn,
            idempotent=True,
        )

    async def release(self, key: str, thread_id: str) -> None:
        await self.db.execute(
            "DELETE FROM act_effects WHERE thread_id = $2 AND key = $1",
            key,
            thread_id,
            dsn=self.dsn,
            idempotent=True,
        )

    async def delete_thread(self, thread_id: str) -> int:
        status = await self.db.execute(
            "DELETE FROM act_effects WHERE thread_id = $1", thread_id, dsn=self.dsn, idempotent=True
        )
        return int(status.rsplit(" ", 1)[-1])

    async def purge_expired(self) -> int:
        status = await self.db.execute(
            "DELETE FROM act_effects WHERE expires_at < now()", dsn=self.dsn, idempotent=True
        )
        return int(status.rsplit(" ", 1)[-1])


async def _claim(
    conn: Any, key: str, thread_id: str, name: str, state: str, expires_at: float
) -> EffectRecord | None:
    rows = await conn.fetch(_CLAIM_SQL, key, thread_id, name, state, expires_at)
    if not rows:  # lost the race to a concurrent claimer whose row the snapshot missed
        rows = await conn.fetch(_READ_SQL, key, thread_id)
    row = rows[0]
    if row[0]:
        return None
    return EffectRecord(row[1], None if row[2] is None else bytes(row[2]))


def _record(row: Any) -> EffectRecord:
    return EffectRecord(row[1], None if row[2] is None else bytes(row[2]))


# What may be written into a statement's text: a value that cannot end a quoted literal
# under any server setting (no quote, no backslash, ASCII). Anything else is sent bound.
_HEX_KEY = re.compile(r"[0-9a-f]{40}")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,200}")
# A stored result up to this size is sent as hex in the COMMIT's round trip.
_INLINE_RESULT_BYTES = 8192


def _inline_claim(key: str, thread_id: str, name: str, expires_at: float) -> str | None:
    """``BEGIN`` and the claim as one simple-protocol query, or ``None`` if a value is unsafe.

    asyncpg sends a query without arguments as one simple-protocol message, which may hold
    several statements and returns the last one's status: ``INSERT 0 1`` claimed, ``INSERT
    0 0`` found. Only literals proved safe by the patterns above go into the text.
    """
    if not (
        _HEX_KEY.fullmatch(key)
        and _PLAIN_TEXT.fullmatch(thread_id)
        and _PLAIN_TEXT.fullmatch(name)
        and math.isfinite(expires_at)
    ):
        return None
    return f"BEGIN; EXECUTE act_effects_claim ('{key}', '{thread_id}', '{name}', {expires_at:.6f})"


async def _begin_claim(
    conn: Any, claim: str | None, key: str, thread_id: str, name: str, expires_at: float
) -> str:
    """Open the transaction and claim ``key`` as done in it; the claim's status."""
    if claim is not None:
        try:
            status: str = await conn.execute(claim)
            return status
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != "26000":  # not "no such prepared statement"
                raise
        # The first use on this connection: end the failed transaction, prepare, claim.
        await conn.execute(f"ROLLBACK; {_PREPARE_SQL}")
        status = await conn.execute(claim)
        return status
    await conn.execute("BEGIN")
    status = await conn.execute(_CLAIM_DONE_SQL, key, thread_id, name, expires_at)
    return status


class RedisEffectBackend(EffectBackend):
    """Records in Redis, through the shared ``RedisBackend`` of the ``redis_backend`` recipe.

        shared = RedisBackend("redis://127.0.0.1:6379/0")
        ledger = EffectLedger(RedisEffectBackend(shared))

    The claim is one server-side script (atomic, one round trip); records expire by
    themselves after the ledger's ``retention``, so ``purge_expired`` has nothing to do.
    ``shared`` is taken as it is (this module does not import redis). Its ``fallback`` does
    not apply: a ledger that cannot reach its records raises ``RedisUnavailableError``
    rather than run an effect it cannot account for.
    """

    __slots__ = ("shared",)

    def __init__(self, shared: Any) -> None:
        if not callable(getattr(shared, "effect_claim", None)):
            raise TypeError(f"RedisEffectBackend shared must be a RedisBackend, got {shared!r}")
        self.shared = shared

    async def claim(
        self, key: str, thread_id: str, name: str, expires_at: float
    ) -> EffectRecord | None:
        found = await self.shared.effect_claim(thread_id, key, name, expires_at - time.time())
        if found is None:
            return None
        state, result = found
        return EffectRecord(state, result if state == "done" else None)

    async def finish(self, key: str, thread_id: str, result: bytes, expires_at: float) -> None:
        await self.shared.effect_finish(thread_id, key, result, expires_at - time.time())

    async def release(self, key: str, thread_id: str) -> None:
        await self.shared.effect_release(thread_id, key)

    async def delete_thread(self, thread_id: str) -> int:
        return int(await self.shared.effect_drop_thread(thread_id))

    async def purge_expired(self) -> int:
        return 0  # Redis expires each record by itself


@dataclass(slots=True)
class EffectTransaction:
    """What ``EffectLedger.transaction`` yields: run your statements only when ``first``."""

    key: str
    """The effect's deterministic key."""
    conn: Any
    """The asyncpg connection inside the transaction (``None`` on a replay)."""
    first: bool
    """True: do the writes now; False: an earlier run committed them (``result`` is theirs)."""
    result: Any = None
    """Set it inside the block to store a result (sent with the COMMIT); read it after."""


class EffectLedger:
    """Runs each named side effect of a node execution once; see the module docstring.

        ledger = EffectLedger()                                  # the graph's store
        ledger = EffectLedger(PostgresBackend(db), retention=30 * 86400)
        result = await ledger.once("charge", call, runtime=runtime, idempotent=True)
        result = ledger.once_sync("email", send, runtime=runtime, reconcile=was_sent)

    ``backend=None`` uses the running graph's store (``compile(store=...)``).
    """

    __slots__ = ("_counts", "backend", "name", "retention", "serializer")

    def __init__(
        self,
        backend: EffectBackend | None = None,
        *,
        retention: float = 7 * 86400.0,
        serializer: Serializer | None = None,
        name: str = "effects",
    ) -> None:
        if backend is not None and not isinstance(backend, EffectBackend):
            raise TypeError(
                f"EffectLedger backend must be an EffectBackend or None, got {backend!r}"
            )
        if isinstance(retention, bool) or not isinstance(retention, int | float):
            raise TypeError(
                f"EffectLedger retention must be a number of seconds, got {retention!r}"
            )
        if not math.isfinite(retention) or retention <= 0:
            raise ValueError(f"EffectLedger retention must be > 0 and finite, got {retention!r}")
        serializer = JsonSerializer() if serializer is None else serializer
        if not callable(getattr(serializer, "dumps", None)) or not callable(
            getattr(serializer, "loads", None)
        ):
            raise TypeError(
                f"EffectLedger serializer must have dumps() and loads(), got {serializer!r}"
            )
        self.backend = backend
        self.retention = float(retention)
        self.serializer = serializer
        self.name = name
        # Occurrences per node execution: LangGraph makes a new ExecutionInfo for each run
        # of a task (resume, retry attempt), so its identity marks one execution. The entry
        # holds it, so its id() is not reused while counted; bounded, oldest dropped.
        self._counts: OrderedDict[int, tuple[Any, dict[str, int]]] = OrderedDict()

    def __repr__(self) -> str:
        return f"EffectLedger({self.backend!r}, retention={self.retention:g})"

    # -- keys ------------------------------------------------------------------------------

    def _identity(self, effect: str, runtime: Any) -> tuple[str, str, EffectBackend]:
        if not isinstance(effect, str) or not effect:
            raise ValueError(f"EffectLedger effect name must be a non-empty str, got {effect!r}")
        info = getattr(runtime, "execution_info", None)
        if info is None:
            raise EffectLedgerError(
                f"EffectLedger effect {effect!r} needs the node's runtime (runtime=runtime from"
                f" a graph node), got {runtime!r}"
            )
        if info.thread_id is None:
            raise EffectLedgerError(
                f"EffectLedger effect {effect!r} needs a graph compiled with a checkpointer and"
                " run with a thread_id: without one a resumed or retried node has no identity"
                " to recognise, and the effect would silently run again"
            )
        backend = self.backend
        if backend is None:
            store = getattr(runtime, "store", None)
            if store is None:
                raise EffectLedgerError(
                    f"EffectLedger effect {effect!r}: no backend and the graph has no store;"
                    " compile(store=...) or pass EffectLedger(backend=...)"
                )
            backend = StoreBackend(store)
        entry = self._counts.get(id(info))
        if entry is None or entry[0] is not info:
            entry = self._counts[id(info)] = (info, {})
            if len(self._counts) > 4096:
                self._counts.popitem(last=False)
        counts = entry[1]
        k = counts[effect] = counts.get(effect, 0) + 1
        identity = f"{info.thread_id}\0{info.checkpoint_ns}\0{info.task_id}\0{effect}\0{k}"
        key = hashlib.sha256(identity.encode()).hexdigest()[:40]
        return info.thread_id, key, backend

    # -- once ------------------------------------------------------------------------------

    @overload
    async def once(
        self,
        effect: str,
        call: Callable[[str], Awaitable[T]],
        *,
        runtime: Any,
        idempotent: bool = False,
        reconcile: Callable[[str], Awaitable[Any] | Any] | None = None,
    ) -> T: ...

    @overload
    async def once(
        self,
        effect: str,
        call: Callable[[str], T],
        *,
        runtime: Any,
        idempotent: bool = False,
        reconcile: Callable[[str], Awaitable[Any] | Any] | None = None,
    ) -> T: ...

    async def once(
        self,
        effect: str,
        call: Callable[[str], Any],
        *,
        runtime: Any,
        idempotent: bool = False,
        reconcile: Callable[[str], Awaitable[Any] | Any] | None = None,
    ) -> Any:
        """Run ``call(key)`` once for this node execution's k-th ``effect``; its result.

        ``call`` may be sync or async. ``idempotent=True``: the receiver dedupes by key, so a
        call whose outcome is unknown is made again. ``reconcile(key)`` (sync or async):
        returns the result of an effect that happened, or ``NOT_DONE``.
        """
        thread_id, key, backend = self._identity(effect, runtime)
        expires_at = time.time() + self.retention
        existing = await backend.claim(key, thread_id, effect, expires_at)
        if existing is not None:
            if existing.state == "done":
                record("effects_replayed", name=self.name)
                return self._loads(existing.result)
            if not idempotent:
                if reconcile is None:
                    record("effects_unknown", name=self.name)
                    raise EffectOutcomeUnknown(effect, key, thread_id)
                found = reconcile(key)
                if isinstance(found, Awaitable):
                    found = await found
                record("effects_reconciled", name=self.name)
                if found is not NOT_DONE:
                    await backend.finish(key, thread_id, self.serializer.dumps(found), expires_at)
                    return found
        try:
            result = call(key)
            if isinstance(result, Awaitable):
                result = await result
        except EffectNotPerformed:
            await backend.release(key, thread_id)
            raise
        record("effects_performed", name=self.name)
        await backend.finish(key, thread_id, self.serializer.dumps(result), expires_at)
        return result

    def once_sync(
        self,
        effect: str,
        call: Callable[[str], T],
        *,
        runtime: Any,
        idempotent: bool = False,
        reconcile: Callable[[str], Any] | None = None,
    ) -> T:
        """``once`` for a sync node; ``call`` and ``reconcile`` run in the calling thread.

        The backend's operations run through ``run_sync`` (the store's or the pool's loop).
        """
        from act_operator_lib.sync import run_sync

        thread_id, key, backend = self._identity(effect, runtime)
        expires_at = time.time() + self.retention
        existing = run_sync(backend.claim(key, thread_id, effect, expires_at))
        if existing is not None:
            if existing.state == "done":
                record("effects_replayed", name=self.name)
                return self._loads(existing.result)  # type: ignore[no-any-return]
            if not idempotent:
                if reconcile is None:
                    record("effects_unknown", name=self.name)
                    raise EffectOutcomeUnknown(effect, key, thread_id)
                found = reconcile(key)
                record("effects_reconciled", name=self.name)
                if found is not NOT_DONE:
                    data = self.serializer.dumps(found)
                    run_sync(backend.finish(key, thread_id, data, expires_at))
                    return found  # type: ignore[no-any-return]
        try:
            result = call(key)
        except EffectNotPerformed:
            run_sync(backend.release(key, thread_id))
            raise
        record("effects_performed", name=self.name)
        run_sync(backend.finish(key, thread_id, self.serializer.dumps(result), expires_at))
        return result

    async def request(
        self,
        effect: str,
        http: Any,
        method: str,
        url: str,
        *,
        runtime: Any,
        idempotent: bool = True,
        reconcile: Callable[[str], Awaitable[Any] | Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """An ``HttpClient.request`` made once, sending the key as ``Idempotency-Key``.

        ``idempotent`` defaults to True: an API that dedupes by that header (payment APIs
        do) makes the re-call after an unknown outcome safe. Say False for one that doesn't.
        """
        headers = dict(kwargs.pop("headers", None) or {})

        async def call(key: str) -> Any:
            return await http.request(
                method, url, headers={**headers, **idempotency_headers(key)}, **kwargs
            )

        return await self.once(
            effect, call, runtime=runtime, idempotent=idempotent, reconcile=reconcile
        )

    # -- PostgreSQL transactions ----------------------------------------------------------

    @asynccontextmanager
    async def transaction(self, effect: str, *, runtime: Any) -> AsyncIterator[EffectTransaction]:
        """A PostgreSQL transaction whose commit also records ``effect`` as done.

            async with ledger.transaction("create-invoice", runtime=runtime) as tx:
                if tx.first:
                    tx.result = await tx.conn.fetchval("INSERT ... RETURNING id", ...)
            invoice_id = tx.result

        Needs a ``PostgresBackend``; your statements must go through ``tx.conn``. The ledger
        row is claimed first (a concurrent run of the same effect waits on it), so the block
        commits exactly once: no unknown window. On a replay ``first`` is False, ``conn`` is
        None and ``result`` holds what the committed run stored.

        Round trips, the first time: ``BEGIN`` and the claim in one, your statements, then
        ``COMMIT``, which also carries a stored result of up to 8 KiB (serialized), so the
        ledger adds none to a bare transaction; a larger result adds one. A replay costs
        three (claim, read the record, end) and runs none of yours. A thread id or effect
        name with characters beyond ASCII letters, digits and ``_.:@/+=-`` (or over 200 of
        them) adds one: those values are then sent as bound parameters, never in the text.
        The first transaction on each pooled connection adds two, to prepare the ledger's
        statements there (planned once, then executed by name).

        Changed: the ledger opens the transaction itself (``BEGIN`` rides with the claim),
        so asyncpg refuses a nested ``tx.conn.transaction()`` inside the block; use
        ``SAVEPOINT name`` / ``ROLLBACK TO SAVEPOINT name`` statements for a partial undo.
        A block whose failed statement was caught (PostgreSQL then turns ``COMMIT`` into a
        rollback) raises ``EffectLedgerError`` instead of reporting the effect done. Errors
        and cancellation roll back and return the connection clean, as before.
        """
        thread_id, key, backend = self._identity(effect, runtime)
        if not isinstance(backend, PostgresBackend):
            raise EffectLedgerError(
                f"EffectLedger.transaction needs a PostgresBackend, got {backend!r}"
            )
        expires_at = time.time() + self.retention
        tx = EffectTransaction(key, None, False)
        existing: EffectRecord | None = None
        # Whether the values may be written into the statement text (see _inline_claim).
        claim = _inline_claim(key, thread_id, effect, expires_at)
        async with backend.db.connection(backend.dsn) as conn:
            open_ = True  # a transaction may be open on conn (ROLLBACK is harmless if not)
            try:
                status = await _begin_claim(conn, claim, key, thread_id, effect, expires_at)
                if status == "INSERT 0 0":
                    # The primary key made the claim wait for the row's writer to commit, so
                    # the row is visible to this next statement.
                    existing = _record(await conn.fetchrow(_READ_SQL, key, thread_id))
                    await conn.execute("ROLLBACK")  # nothing was written
                    open_ = False
                else:
                    tx.conn, tx.first = conn, True
                    yield tx
                    tx.conn = None
                    status = await self._commit(conn, claim is not None, key, thread_id, tx)
                    open_ = False
                    if status != "COMMIT":
                        raise EffectLedgerError(
                            f"EffectLedger effect {effect!r} (key {key}) was rolled back, not"
                            " committed: a statement inside the block failed and its error was"
                            " caught, which aborts a PostgreSQL transaction; nothing was written"
                        )
                    record("effects_performed", name=self.name)
                    return
            except BaseException:
                # What asyncpg's own Transaction does on the way out; a closed connection has
                # no transaction left and is dropped by connection().
                if open_ and not conn.is_closed():
                    await conn.execute("ROLLBACK")
                raise
        # A replay: the connection is back in the pool before the block runs.
        record("effects_replayed", name=self.name)
        tx.result = self._loads(existing.result)
        yield tx

    async def _commit(
        self, conn: Any, inline: bool, key: str, thread_id: str, tx: EffectTransaction
    ) -> str:
        """Store ``tx.result`` (if any) and commit; COMMIT's status."""
        if tx.result is None:
            status: str = await conn.execute("COMMIT")
            return status
        data = self.serializer.dumps(tx.result)
        if inline and isinstance(data, bytes) and len(data) <= _INLINE_RESULT_BYTES:
            # Hex digits and known-safe text only: the UPDATE rides on the COMMIT's round trip.
            status = await conn.execute(
                f"EXECUTE act_effects_result ('{key}', '{thread_id}', decode('{data.hex()}',"
                " 'hex')); COMMIT"
            )
            return status
        await conn.execute(
            "UPDATE act_effects SET result = $3 WHERE thread_id = $2 AND key = $1",
            key,
            thread_id,
            data,
        )
        status = await conn.execute("COMMIT")
        return status

    # -- upkeep ----------------------------------------------------------------------------

    async def delete_thread(self, thread_id: str, store: BaseStore | None = None) -> int:
        """Remove ``thread_id``'s records (with ``checkpointer.adelete_thread``); how many.

        ``store``: the graph's store, when the ledger has no backend of its own.
        """
        return await self._backend(store).delete_thread(thread_id)

    async def purge_expired(self, store: BaseStore | None = None) -> int:
        """Remove records older than ``retention``; how many. Run it now and then."""
        return await self._backend(store).purge_expired()

    def _backend(self, store: BaseStore | None) -> EffectBackend:
        if self.backend is not None:
            return self.backend
        if store is None:
            raise EffectLedgerError("EffectLedger has no backend: pass the graph's store")
        return StoreBackend(store)

    def _loads(self, data: bytes | None) -> Any:
        return None if data is None else self.serializer.loads(data)


class EffectNode(AsyncBaseNode):
    """A node that performs one side effect once and writes its result to ``output_key``.

    builder.add_node("notify", EffectNode(ledger, "email", send_email))
    # send_email(state, key) -> result (sync or async); {"email": result}
    """

    def __init__(
        self,
        ledger: EffectLedger,
        effect: str,
        call: Callable[[Any, str], Any],
        *,
        idempotent: bool = False,
        output_key: str | None = None,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(ledger, EffectLedger):
            raise TypeError(f"EffectNode ledger must be an EffectLedger, got {ledger!r}")
        if not callable(call):
            raise TypeError(f"EffectNode call must be callable, got {call!r}")
        self.ledger = ledger
        self.effect = effect
        self.call = call
        self.idempotent = idempotent
        self.output_key = output_key or effect

    async def execute(self, state: Any, runtime: Any) -> dict[str, Any]:
        result = await self.ledger.once(
            self.effect,
            lambda key: self.call(state, key),
            runtime=runtime,
            idempotent=self.idempotent,
        )
        return {self.output_key: result}


if __name__ == "__main__":
    import asyncio
    from typing import TypedDict

    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import START, StateGraph
    from langgraph.runtime import Runtime
    from langgraph.store.memory import InMemoryStore
    from langgraph.types import Command, interrupt

    class State(TypedDict, total=False):
        order: str
        receipt: str
        confirmed: bool

    sent: list[str] = []

    async def charge(order: str, key: str) -> str:
        sent.append(key)  # a payment API would receive the key as Idempotency-Key
        return f"receipt-{order}-{len(sent)}"

    ledger = EffectLedger()

    async def pay(state: State, runtime: Runtime) -> dict[str, Any]:
        receipt = await ledger.once(
            "charge", lambda key: charge(state["order"], key), runtime=runtime
        )
        confirmed = interrupt({"receipt": receipt})  # the node re-runs from the top on resume
        return {"receipt": receipt, "confirmed": bool(confirmed)}

    async def main() -> None:
        builder = StateGraph(State)
        builder.add_node("pay", pay)
        builder.add_edge(START, "pay")
        graph = builder.compile(checkpointer=InMemorySaver(), store=InMemoryStore())
        config: RunnableConfig = {"configurable": {"thread_id": "order-7"}}
        first = await graph.ainvoke({"order": "A7"}, config)
        print("paused:", first["__interrupt__"][0].value)
        resume: Command[Any] = Command(resume=True)
        final = await graph.ainvoke(resume, config)
        print(f"final: receipt={final['receipt']} confirmed={final['confirmed']}")
        print(f"charged {len(sent)} time(s) across 2 runs of the node")

    asyncio.run(main())
