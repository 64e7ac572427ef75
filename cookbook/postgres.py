"""Pooled PostgreSQL on asyncpg: one pool per event loop and DSN, parameters only, clear errors.

    db = PostgresPool(PostgresSettings(max_size=10, acquire_timeout=5))  # DSN: DATABASE_URL
    rows = await db.fetch("SELECT id, name FROM users WHERE team = $1", team)
    n = await db.fetchval("SELECT count(*) FROM users")
    async with db.transaction() as conn:                                 # commit or roll back
        await conn.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", 10, a)
        await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", 10, b)

Every call takes a query with ``$1, $2, ...`` placeholders plus its arguments; there is
no way to format values into SQL here (``query`` is typed ``LiteralString``, so a type
checker flags f-strings too). The pool is created once per (running loop, DSN) under a
lock, closed when its loop shuts down or by ``aclose()`` / ``Resources``. Each
connection gets a server-side ``statement_timeout``; waiting longer than
``acquire_timeout`` for a free connection raises ``PoolExhaustedError``, whoever holds
the connections (also those taken straight from ``db.pool()``).

After a lost connection (a server restart, a killed backend) the pool's idle connections
are replaced and the call is retried once *only if running it twice is known to be
harmless*: the statement is read-only by ``is_read_only`` (a conservative reading of the
SQL: one ``SELECT``/``VALUES``/``TABLE``/``SHOW``/``WITH`` statement with no data-modifying
word and no call to a function outside a list of side-effect-free built-ins), or the call
says ``idempotent=True``. Anything else, ``fetchrow("INSERT ... RETURNING id")`` included,
raises ``ConnectionLostError`` saying it may or may not have committed. (Changed: fetch
methods used to be retried as reads whatever the statement did.) Only errors that mean
the connection is gone count as lost: a wrong argument count, or your own ``OSError`` /
``TimeoutError`` inside ``db.connection()``, propagates as it is and leaves the healthy
connection in the pool.

The DSN comes from the call, the run's context (``context={"database_url": ...}``), the
settings, or ``DATABASE_URL``; its password never appears in a repr, log line or error
raised here. Never put a password in ``configurable``: LangGraph copies every
``configurable`` string into each checkpoint's metadata (and the run's tracing metadata),
so ``dsn_from`` refuses a ``configurable.database_url`` that carries one (changed: it
used to be the first source) and ``postgres_checkpointer`` masks DSN passwords in
metadata.

For durable graph execution on the same server, compile with ``postgres_checkpointer``
(langgraph-checkpoint-postgres): a run whose process dies resumes from its last
checkpoint with ``graph.ainvoke(None, {"configurable": {"thread_id": ...}})``; its
docstring says which ``durability`` mode side-effecting nodes need.

For examples and tests, ``TemporaryPostgres`` starts a throwaway server (initdb + pg_ctl
in a temporary directory) and ``temporary_postgres()`` yields ``DATABASE_URL`` or such a
server's DSN; the recipes' examples and this project's test suite use this one launcher.

When to use LangGraph's native tools instead: state that belongs to the graph (progress,
messages, memory) goes in the checkpointer / ``BaseStore`` (``AsyncPostgresStore``), not
in tables you manage; retrying a failed node is ``RetryPolicy(retry_on=is_connection_error)``.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import math
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, LiteralString, cast

import asyncpg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from act_operator_lib import tracing
from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_bool, check_int, check_number

from .resources import PerLoop, Resources

__all__ = [
    "ConnectionLostError",
    "PoolExhaustedError",
    "PostgresPool",
    "PostgresSettings",
    "SQLQuery",
    "TemporaryPostgres",
    "dsn_from",
    "is_connection_error",
    "is_read_only",
    "postgres_checkpointer",
    "redact_dsn",
    "temporary_postgres",
]

_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_PARAM = re.compile(r"(password=)([^&\s]*)", re.I)

# Errors that by themselves mean "the connection or the server went away" (SQLSTATE class
# 08 and the shutdown codes 57P01-57P03), never "the query or the caller was wrong".
# QueryCanceledError (57014, a statement timeout) shares their base class and is left out.
_LOST_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError among them
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# Reaching the server can also fail with a socket error or a connect timeout.
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_LOST_ERRORS, OSError, TimeoutError)


def _is_gone(exc: BaseException, conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether ``exc``, raised while ``conn`` was in use, means ``conn`` is unusable.

    The connection's own state decides for errors that can also be a caller's bug
    (``InterfaceError`` for a wrong argument count, an ``OSError`` raised by user code):
    asyncpg marks a connection closed as soon as its socket is lost. A client protocol
    desynchronisation (``InternalClientError``, seen when a server shutdown interrupts a
    pooled connection) leaves it unusable too.
    """
    return isinstance(exc, (*_LOST_ERRORS, asyncpg.InternalClientError)) or _is_closed(conn)


def _is_closed(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True  # a pool's proxy, detached because its connection closed


def _free_now(pool: asyncpg.Pool) -> bool:
    """Whether ``pool.acquire()`` would find a connection without waiting for one back.

    asyncpg keeps its free connections in a queue; its size is O(1) where the public
    ``get_idle_size()`` walks every connection (about 3 µs a query at 20 connections).
    """
    queue = getattr(pool, "_queue", None)
    if queue is None:  # another asyncpg layout: the public, slower count
        return bool(pool.get_idle_size())
    return bool(queue.qsize())


def _drop(conn: asyncpg.pool.PoolConnectionProxy) -> None:
    """Close ``conn`` at once unless it is closed already."""
    if not _is_closed(conn):
        conn.terminate()


# While the application has OpenTelemetry's asyncpg instrumentation on, its query spans
# (children of the node's span too) replace the pool's own.
_INSTRUMENTATION = "opentelemetry.instrumentation.asyncpg:AsyncPGInstrumentor"


def _describe_query(query: str, pool: str) -> tuple[str, dict[str, Any]]:
    """A query span's name and attributes (stable database semantic conventions). The
    statement is parameterised (values never reach it), so it is safe to record."""
    words = query.split(None, 1)
    operation = words[0].upper() if words else "postgresql"
    return operation, {
        "db.system.name": "postgresql",
        "db.operation.name": operation,
        "db.query.text": query,
        "db.client.connection.pool.name": pool,
    }


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***\3", dsn))


class PoolExhaustedError(TimeoutError):
    """No connection became free within ``acquire_timeout``."""


class ConnectionLostError(ConnectionError):
    """The server or the connection went away during a call."""


def is_connection_error(exc: BaseException) -> bool:
    """For ``RetryPolicy(retry_on=is_connection_error)``: connection lost or server down.

    True for this module's ``ConnectionLostError`` / ``PoolExhaustedError`` and asyncpg's
    connection-loss errors; False for a caller's bug (``asyncpg.InterfaceError``, e.g. a
    wrong argument count) and for a plain ``OSError`` / ``TimeoutError``, which may come
    from anything else the node does (changed: those used to count).
    """
    return isinstance(exc, (ConnectionLostError, PoolExhaustedError, *_LOST_ERRORS))


_READ_START = re.compile(
    r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*[(\s]*(?:select|values|table|show|with)\b",
    re.IGNORECASE | re.DOTALL,
)
# Words that make a SELECT write: data-modifying CTEs, SELECT INTO, row locks (which
# writes follow), and the sequence functions.
_WRITE_WORD = re.compile(
    r"\b(?:insert|update|delete|merge|into|nextval|setval|share)\b", re.IGNORECASE
)
_CALL = re.compile(r'((?:"[^"]*"|[\w$]+)(?:\s*\.\s*(?:"[^"]*"|[\w$]+))*)\s*\(')
# Words followed by "(" that are SQL syntax or built-in functions without side effects.
# Any other call (your own function, pg_terminate_backend, lo_import, ...) may write.
_PURE_CALL_NAMES = """
    select from where and or not in exists any all some as on using join values over
    filter within partition by when then else case having lateral cast row array
    extract coalesce nullif greatest least position substring overlay trim union
    intersect except is between like ilike similar distinct limit offset group order
    with recursive table grouping cube rollup sets interval varchar char character
    numeric decimal timestamp time bit varying float precision int integer bigint
    smallint text bytea uuid date boolean json jsonb
    count sum avg min max bool_and bool_or every array_agg string_agg json_agg
    jsonb_agg json_object_agg jsonb_object_agg percentile_cont percentile_disc mode
    stddev variance row_number rank dense_rank percent_rank cume_dist ntile lag lead
    first_value last_value nth_value lower upper length char_length octet_length concat
    concat_ws format left right replace split_part strpos starts_with regexp_replace
    regexp_match regexp_matches regexp_split_to_array btrim ltrim rtrim lpad rpad repeat
    reverse initcap md5 sha256 encode decode to_char to_date to_timestamp to_number
    date_trunc date_part age make_date make_interval make_timestamp now clock_timestamp
    statement_timestamp abs round floor ceil ceiling trunc mod power sqrt exp ln log
    sign random gen_random_uuid generate_series unnest array_length array_position
    array_remove array_append array_cat cardinality array_to_string string_to_array
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json
    to_jsonb row_to_json json_array_elements jsonb_array_elements
    jsonb_array_elements_text json_each jsonb_each jsonb_each_text jsonb_set
    jsonb_strip_nulls jsonb_typeof jsonb_extract_path json_extract_path
    jsonb_extract_path_text jsonb_path_query jsonb_path_exists pg_sleep pg_backend_pid
    pg_typeof version current_setting current_database current_schema num_nulls
    num_nonnulls to_tsvector to_tsquery plainto_tsquery websearch_to_tsquery ts_rank
"""
_PURE_CALLS = frozenset(_PURE_CALL_NAMES.split())


def is_read_only(query: str) -> bool:
    """Whether ``query`` is known not to change anything, so running it twice is harmless.

    Conservative by design: True only for one ``SELECT``, ``VALUES``, ``TABLE``, ``SHOW``
    or ``WITH`` statement that contains none of ``INSERT``, ``UPDATE``, ``DELETE``,
    ``MERGE``, ``INTO``, ``FOR UPDATE/SHARE``, ``nextval``/``setval`` and calls no function
    outside a list of side-effect-free built-ins. Words inside literals and comments count
    too (a false "not read-only" only costs a retry). For a statement this misjudges, pass
    ``idempotent=True`` (or ``False``) to the call.
    """
    if not _READ_START.match(query) or ";" in query.rstrip().rstrip(";"):
        return False
    if _WRITE_WORD.search(query):
        return False
    return all(name.lower() in _PURE_CALLS for name in _CALL.findall(query))


def _has_password(dsn: str) -> bool:
    match = _PASSWORD.search(dsn)
    return bool(match and match.group(2)) or bool(_PASSWORD_PARAM.search(dsn))


def dsn_from(
    config: RunnableConfig | None = None, runtime: Any = None, default: str | None = None
) -> str | None:
    """The DSN for a run: ``runtime.context.database_url``, then a password-free
    ``configurable.database_url``, then ``default``, then ``DATABASE_URL``.

    The run's context is never persisted; ``configurable`` is copied by LangGraph into
    every checkpoint's metadata, so a ``configurable.database_url`` with a password raises
    ``ValueError`` (changed: it used to be read first, password and all).
    """
    context = getattr(runtime, "context", None)
    if context is not None:
        dsn = (
            context.get("database_url")
            if isinstance(context, Mapping)
            else getattr(context, "database_url", None)
        )
        if dsn:
            return str(dsn)
    if config:
        dsn = config.get("configurable", {}).get("database_url")
        if dsn:
            if _has_password(str(dsn)):
                raise ValueError(
                    "dsn_from configurable.database_url must not carry a password: LangGraph"
                    " copies configurable values into every checkpoint's metadata; pass it as"
                    " context={'database_url': ...}, PostgresSettings(dsn=...) or the"
                    f" DATABASE_URL environment variable, got {redact_dsn(str(dsn))!r}"
                )
            return str(dsn)
    return default or os.environ.get("DATABASE_URL") or None


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSettings:
    """How pools are sized and bounded; the DSN is optional (see ``dsn_from``)."""

    dsn: str | None = None
    """Default DSN; ``None`` falls back to ``DATABASE_URL``. Never shown in reprs."""
    min_size: int = 1
    """Connections opened when the pool is created."""
    max_size: int = 10
    """Most connections open at once."""
    acquire_timeout: float = 10.0
    """Seconds to wait for a free connection before ``PoolExhaustedError``."""
    statement_timeout: float | None = 30.0
    """Server-side limit per statement, in seconds, at least 0.001 (PostgreSQL counts whole
    milliseconds and reads 0 as "no limit"; a fraction of a millisecond rounds up);
    ``None``: the server's default."""
    connect_timeout: float = 10.0
    """Seconds to open one connection."""
    retry_reads: bool = True
    """Retry once, on a fresh connection, a call known to be harmless to repeat
    (``is_read_only`` or ``idempotent=True``) whose connection was lost; False: never."""

    def __post_init__(self) -> None:
        check_int("PostgresSettings", "min_size", self.min_size, min=0)
        check_int("PostgresSettings", "max_size", self.max_size, min=1)
        if self.min_size > self.max_size:
            raise ValueError(
                f"PostgresSettings min_size must be <= max_size, got {self.min_size} > {self.max_size}"
            )
        for name in ("acquire_timeout", "connect_timeout"):
            check_number("PostgresSettings", name, getattr(self, name), gt=0, unit="seconds")
        check_number(
            "PostgresSettings",
            "statement_timeout",
            self.statement_timeout,
            ge=0.001,
            unit="seconds",
            note="PostgreSQL reads 0 ms as no limit",
            allow_none=True,
        )
        check_bool("PostgresSettings", "retry_reads", self.retry_reads)
        if self.dsn is not None and not isinstance(self.dsn, str):
            # The type only: a DSN may hold a password, and this message may be logged.
            raise TypeError(
                f"PostgresSettings dsn must be a str or None, got {type(self.dsn).__name__}"
            )
        if self.dsn is not None and not self.dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError(
                "PostgresSettings dsn must be a postgresql:// or postgres:// URL,"
                f" got {redact_dsn(self.dsn)!r}"
            )

    def __repr__(self) -> str:
        dsn = None if self.dsn is None else redact_dsn(self.dsn)
        return (
            f"PostgresSettings(dsn={dsn!r}, min_size={self.min_size}, max_size={self.max_size},"
            f" acquire_timeout={self.acquire_timeout}, statement_timeout={self.statement_timeout})"
        )


SQLQuery = LiteralString
"""A query written in the source, with ``$n`` placeholders: never built from values."""


class SharedPool:
    """One loop's asyncpg pool for one (DSN, ``PostgresSettings``), shared by ``PostgresPool``s."""

    __slots__ = ("close_timeout", "lent", "max_size", "name", "pool")

    def __init__(self, pool: asyncpg.Pool, name: str, settings: PostgresSettings) -> None:
        self.pool = pool
        self.name = name
        """The creating ``PostgresPool``'s name: the ``pool_size`` gauge label."""
        self.max_size = settings.max_size
        self.close_timeout = settings.acquire_timeout
        """Longest wait for connections still in use at close; then they are terminated."""
        self.lent = 0
        """Connections acquired through ``PostgresPool`` and not yet released (only for the
        ``pool_waits`` metric: the acquire timeout is armed for every acquire)."""


async def _close_shared(shared: SharedPool) -> None:
    try:
        await asyncio.wait_for(shared.pool.close(), shared.close_timeout)
    except TimeoutError:
        shared.pool.terminate()  # a connection was never released: do not hang shutdown


def _uncount_shared(shared: SharedPool) -> None:
    record("pool_size", -float(shared.max_size), name=shared.name)


class PostgresPool:
    """Query helpers over one asyncpg pool per (event loop, DSN); see the module docstring.

    For example:

        db = PostgresPool(PostgresSettings(dsn=DSN), resources=resources)
        await db.execute("INSERT INTO events(kind) VALUES ($1)", "login")
    """

    pools: ClassVar[PerLoop[SharedPool]] = PerLoop(
        close=_close_shared,
        is_closed=lambda shared: shared.pool.is_closing(),
        forgotten=_uncount_shared,
    )
    """The open pools, one per (event loop, (DSN, settings)); ``PostgresPool.pools.items()``
    lists them (changed: private dicts before). A pool closed by hand is replaced."""

    __slots__ = ("_recent", "name", "settings")

    def __init__(
        self,
        settings: PostgresSettings | None = None,
        *,
        name: str = "postgres",
        resources: Resources | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, PostgresSettings):
            raise TypeError(
                f"PostgresPool settings must be PostgresSettings, got {type(settings).__name__}"
            )
        self.settings = settings or PostgresSettings()
        self.name = name
        # The last pool used: skips hashing the registry key on every call.
        self._recent: tuple[asyncio.AbstractEventLoop, str, SharedPool] | None = None
        if resources is not None:
            resources.add(self)

    def _dsn(self, dsn: str | None) -> str:
        dsn = dsn or self.settings.dsn or os.environ.get("DATABASE_URL")
        if not dsn:
            raise ValueError(
                f"{self.name}: no PostgreSQL DSN; pass dsn=, set PostgresSettings(dsn=...),"
                " the run's context database_url, or the DATABASE_URL environment variable"
            )
        return dsn

    async def pool(self, dsn: str | None = None) -> asyncpg.Pool:
        """This loop's pool for ``dsn``, created on first use (concurrent first calls share it)."""
        return (await self._shared(self._dsn(dsn))).pool

    async def _shared(self, dsn: str) -> SharedPool:
        loop = asyncio.get_running_loop()
        recent = self._recent
        if (
            recent is not None
            and recent[0] is loop
            and recent[1] == dsn
            and not recent[2].pool.is_closing()
        ):
            return recent[2]
        shared = await self.pools.aget(functools.partial(self._create, dsn), (dsn, self.settings))
        self._recent = (loop, dsn, shared)
        return shared

    async def _create(self, dsn: str) -> SharedPool:
        settings = self.settings
        server_settings = {"application_name": self.name}
        if settings.statement_timeout is not None:
            # Whole milliseconds, rounded up: never 0, which would disable the limit.
            server_settings["statement_timeout"] = str(
                math.ceil(settings.statement_timeout * 1000 - 1e-9)
            )
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=settings.min_size,
                max_size=settings.max_size,
                timeout=settings.connect_timeout,
                server_settings=server_settings,
            )
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise ConnectionLostError(
                f"{self.name}: cannot connect to {redact_dsn(dsn)}: {type(exc).__name__}:"
                f" {_redacted(exc, dsn)}"
            ) from None
        record("pool_size", float(settings.max_size), name=self.name)  # a gauge
        return SharedPool(pool, self.name, settings)

    async def aclose(self) -> None:
        """Close this loop's pools of this object's settings (the next call opens new ones)."""
        for key in self.pools.loop_keys():
            if isinstance(key, tuple) and key[1] == self.settings:
                await self.pools.aclose(key)

    async def _acquire(self, shared: SharedPool, dsn: str) -> asyncpg.pool.PoolConnectionProxy:
        pool = shared.pool
        lent = shared.lent
        shared.lent = lent + 1
        if lent >= shared.max_size:
            record("pool_waits", 1.0, name=self.name)
        deadline = None
        try:
            if _free_now(pool):
                # A free connection is taken without waiting (asyncio is single-threaded
                # until the acquire's first suspension), so the timer is not needed.
                return await pool.acquire()
            # Otherwise the wait is bounded whoever holds the connections (a caller of
            # pool() too). asyncio.timeout rather than acquire(timeout=), which costs a
            # task per call.
            deadline = asyncio.timeout(self.settings.acquire_timeout)
            async with deadline:
                return await pool.acquire()
        except BaseException as exc:
            error = self._acquire_failed(shared, dsn, exc, deadline)
            if error is exc:
                raise
            raise error from None

    def _acquire_failed(
        self,
        shared: SharedPool,
        dsn: str,
        exc: BaseException,
        deadline: asyncio.Timeout | None = None,
    ) -> BaseException:
        """The error to raise for ``exc``, which ended an acquire; the lending is undone."""
        _unlend(shared)
        if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
            pool = shared.pool
            in_use = pool.get_size() - pool.get_idle_size()
            why = "all in use" if in_use >= self.settings.max_size else "opening one"
            return PoolExhaustedError(
                f"{self.name}: no PostgreSQL connection free within acquire_timeout="
                f"{self.settings.acquire_timeout:g}s (max_size={self.settings.max_size},"
                f" {why}); raise max_size or acquire_timeout, or hold connections for"
                " less time"
            )
        if isinstance(exc, _CONNECT_ERRORS):  # a slot whose connection is opened now
            return ConnectionLostError(
                f"{self.name}: cannot reach {redact_dsn(dsn)} (nothing was sent):"
                f" {type(exc).__name__}: {_redacted(exc, dsn)}"
            )
        return exc

    async def _release(self, shared: SharedPool, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        try:
            await shared.pool.release(conn)
        except Exception:
            # The pool could not reset it (a server shutdown left its protocol mid-operation)
            # and has terminated it: the call's own outcome stands, the connection is gone.
            _drop(conn)
        finally:
            _unlend(shared)

    @asynccontextmanager
    async def connection(
        self, dsn: str | None = None
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection for several statements (no transaction of its own).

        An error raised inside the block propagates as it is. Only when the connection
        itself is gone is it dropped, and the pool's idle connections replaced (a restart
        kills them all); any other error, yours included, returns it to the pool.

        Typed as what the pool lends, asyncpg's ``PoolConnectionProxy`` (every
        ``Connection`` method); it was annotated ``asyncpg.Connection`` before, which
        mypy --strict with asyncpg-stubs refuses. The object itself is unchanged.
        """
        dsn = self._dsn(dsn)
        shared = await self._shared(dsn)
        conn = await self._acquire(shared, dsn)
        try:
            yield conn
        except Exception as exc:
            if _is_gone(exc, conn):
                _drop(conn)  # never hand a broken connection to the next caller
                await shared.pool.expire_connections()
            raise
        finally:
            await self._release(shared, conn)

    @asynccontextmanager
    async def transaction(
        self, dsn: str | None = None
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        async with self.connection(dsn) as conn, conn.transaction():
            yield conn

    async def _call(
        self,
        method: str,
        query: SQLQuery,
        args: Sequence[Any],
        dsn: str | None,
        idempotent: bool | None,
    ) -> Any:
        dsn = dsn or self._dsn(None)
        retried = False
        while True:
            # connection() inlined: this is the per-query hot path.
            recent = self._recent  # _shared()'s shortcut without awaiting a coroutine
            if (
                recent is not None
                and recent[1] == dsn
                and recent[0] is asyncio.get_running_loop()
                and not recent[2].pool.is_closing()
            ):
                shared = recent[2]
            else:
                shared = await self._shared(dsn)
            pool = shared.pool
            lent = shared.lent
            if lent < shared.max_size and _free_now(pool):
                # _acquire()'s common case inlined: a free connection, no wait to bound.
                shared.lent = lent + 1
                try:
                    conn = await pool.acquire()
                except BaseException as exc:
                    error = self._acquire_failed(shared, dsn, exc)
                    if error is exc:
                        raise
                    raise error from None
            else:
                conn = await self._acquire(shared, dsn)
            try:
                # A CLIENT span, child of the node's span (free when tracing is off).
                with tracing.client_span(
                    _describe_query, query, self.name, covered_by=_INSTRUMENTATION
                ):
                    return await getattr(conn, method)(query, *args)
            except Exception as exc:
                if not _is_gone(exc, conn):
                    raise  # the query or the arguments were wrong: not a lost connection
                _drop(conn)
                lost = exc
            finally:
                # _release() inlined: one coroutine frame less on the release's resume.
                try:
                    await pool.release(conn)
                except Exception:
                    _drop(conn)  # see _release()
                finally:
                    _unlend(shared)
            # A lost connection usually means a restart: every idle one is dead too.
            await pool.expire_connections()
            # Classified only now, off the hot path.
            safe = is_read_only(query) if idempotent is None else idempotent
            if safe and self.settings.retry_reads and not retried:
                retried = True
                record("pg_read_retries", 1.0, name=self.name)
                continue
            if safe:
                kind = "read-only" if idempotent is None else "idempotent"
                detail = f"{kind}; retried once" if retried else f"{kind}; retry_reads=False"
            else:
                detail = (
                    "not known to be read-only, so not retried: it may or may not have"
                    " committed; pass idempotent=True if running it twice is harmless"
                )
            raise ConnectionLostError(
                f"{self.name}: connection to {redact_dsn(dsn)} lost during {method} ({detail}):"
                f" {type(lost).__name__}: {_redacted(lost, dsn)}"
            ) from None

    # The query methods hand back _call()'s coroutine rather than awaiting it in one of
    # their own: one coroutine frame less on each of a query's resumes.
    def fetch(
        self, query: SQLQuery, *args: Any, dsn: str | None = None, idempotent: bool | None = None
    ) -> Coroutine[Any, Any, list[asyncpg.Record]]:
        """All rows of ``query`` run with ``args``.

        ``idempotent``: whether running the statement twice is harmless, which allows one
        retry after a lost connection; ``None`` (the default) asks ``is_read_only``. The
        same holds for every query method (changed: fetch methods used to always retry).
        """
        return self._call("fetch", query, args, dsn, idempotent)

    def fetchrow(
        self, query: SQLQuery, *args: Any, dsn: str | None = None, idempotent: bool | None = None
    ) -> Coroutine[Any, Any, asyncpg.Record | None]:
        """The first row, or ``None``."""
        return self._call("fetchrow", query, args, dsn, idempotent)

    def fetchval(
        self, query: SQLQuery, *args: Any, dsn: str | None = None, idempotent: bool | None = None
    ) -> Coroutine[Any, Any, Any]:
        """The first column of the first row, or ``None``."""
        return self._call("fetchval", query, args, dsn, idempotent)

    def execute(
        self, query: SQLQuery, *args: Any, dsn: str | None = None, idempotent: bool | None = None
    ) -> Coroutine[Any, Any, str]:
        """Run a statement; returns its status (e.g. ``"INSERT 0 1"``).

        Retried after a lost connection only when read-only or ``idempotent=True``.
        """
        return self._call("execute", query, args, dsn, idempotent)

    async def executemany(
        self,
        query: SQLQuery,
        args: Iterable[Sequence[Any]],
        *,
        dsn: str | None = None,
        idempotent: bool | None = None,
    ) -> None:
        """Run a statement once per argument tuple, atomically (one transaction)."""
        await self._call("executemany", query, (list(args),), dsn, idempotent)

    def __repr__(self) -> str:
        return f"PostgresPool(name={self.name!r}, settings={self.settings!r})"


def _unlend(shared: SharedPool) -> None:
    if shared.lent:
        shared.lent -= 1


def _redacted(exc: BaseException, dsn: str) -> str:
    """``exc``'s message with the DSN's password (if any) masked."""
    text = str(exc)
    match = _PASSWORD.search(dsn)
    if match and match.group(2):
        text = text.replace(match.group(2), "***")
    return redact_dsn(text)


def _masked(values: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``values`` with DSN passwords in its strings masked; ``None`` when nothing changes."""
    if not values:
        return None
    masked = {k: redact_dsn(v) if isinstance(v, str) else v for k, v in values.items()}
    return masked if masked != values else None


class _MaskingSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` that masks DSN passwords before LangGraph copies the run's
    ``configurable`` and ``metadata`` strings into the checkpoint's metadata."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = _masked(config.get("configurable"))
        run_metadata = _masked(config.get("metadata"))
        if configurable is not None or run_metadata is not None:
            config = {**config}
            if configurable is not None:
                config["configurable"] = configurable
            if run_metadata is not None:
                config["metadata"] = run_metadata
        masked = _masked(metadata)
        if masked is not None:
            metadata = cast(CheckpointMetadata, masked)
        return await super().aput(config, checkpoint, metadata, new_versions)


@asynccontextmanager
async def postgres_checkpointer(dsn: str) -> AsyncIterator[AsyncPostgresSaver]:
    """An ``AsyncPostgresSaver`` on ``dsn`` with its tables created; for ``compile(checkpointer=)``.

    For example:

        async with postgres_checkpointer(DSN) as saver:
            graph = builder.compile(checkpointer=saver)
            await graph.ainvoke(inputs, config, durability="sync")  # side-effecting nodes

    What a crash costs depends on LangGraph's ``durability`` (per ``invoke``/``stream``):

    - ``"exit"``: one checkpoint when the run ends (returns, fails or is interrupted). A
      process killed mid-run leaves nothing of that run: ``ainvoke(None, config)`` finds
      nothing to resume (``EmptyInputError``); the run starts over from its input.
    - ``"async"`` (LangGraph's default): each step's checkpoint is written while the next
      step already runs. A kill soon after a node finished can lose its checkpoint, so
      resuming runs that *finished* node again (its side effects happen twice).
    - ``"sync"``: each step's checkpoint is committed before the next step starts.
      Resuming re-runs only the node that was running when the process died.

    For nodes with side effects (payments, emails, writes elsewhere) use
    ``durability="sync"`` and make each node idempotent: even then the node that was
    running at the crash runs again, so it must tolerate a second run (an idempotency
    key, ``INSERT ... ON CONFLICT DO NOTHING``).

    DSN passwords found in the run's ``configurable`` or ``metadata`` are masked in
    checkpoint metadata (changed: stored as given); keep secrets out of ``configurable``
    anyway (see ``dsn_from``).
    """
    async with _MaskingSaver.from_conn_string(dsn) as saver:
        await saver.setup()
        yield saver


class QueryRows(AsyncBaseNode):
    """A node running one read query with arguments taken from the state.

    For example:

        builder.add_node(QueryRows(db, "SELECT name FROM users WHERE team = $1", ["team"]))
        # {"team": "red"} -> {"rows": [{"name": ...}, ...]}
    """

    def __init__(
        self,
        db: PostgresPool,
        query: SQLQuery,
        arg_keys: Sequence[str] = (),
        *,
        output_key: str = "rows",
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        if not isinstance(db, PostgresPool):
            raise TypeError(f"QueryRows db must be a PostgresPool, got {type(db).__name__}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"QueryRows query must be a non-empty SQL string, got {query!r}")
        self.db = db
        self.query = query
        self.arg_keys = tuple(arg_keys)
        self.output_key = output_key

    async def execute(
        self, state: Mapping[str, Any], config: RunnableConfig, runtime: Any
    ) -> dict[str, Any]:
        rows = await self.db.fetch(
            self.query,
            *map(state.__getitem__, self.arg_keys),  # no comprehension's frame
            dsn=dsn_from(config, runtime, self.db.settings.dsn),
        )
        if self.verbose:
            self.log("query", rows=len(rows))
        return {self.output_key: list(map(dict, rows))}


class TemporaryPostgres:
    """A throwaway PostgreSQL server in a temporary directory, for examples and tests.

        with TemporaryPostgres() as pg:          # initdb + start on a free 127.0.0.1 port
            db = PostgresPool(PostgresSettings(dsn=pg.dsn))
            pg.restart()                         # stop + start, same port and data
            dsn = pg.create_database()           # a fresh, empty database

    Needs the server binaries (``initdb``, ``pg_ctl``, ``psql``) on PATH or where Debian and
    Ubuntu install them. The server refuses to run as root, so as root they run as the
    ``postgres`` user (``runuser``). Host connections need a password (scram-sha-256), as in
    production; durability is off (``fsync``), so this is for throwaway data only. Every
    method blocks: call them from sync code or through ``asyncio.to_thread``.
    """

    user = "app"
    """The superuser the DSNs name."""

    def __init__(self) -> None:
        self.bin = _find_pg_bin()
        self.port = _free_port()
        self.password = secrets.token_urlsafe(16)
        self._as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="act-pg-"))
        """The directory holding the data, the log and the server's unix socket."""
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        try:
            if self._as_root:
                shutil.chown(self.root, "postgres", "postgres")
            self._initdb()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def dsn(self) -> str:
        """The DSN of the ``postgres`` database, password included."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this server, password included."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}):"
                f" {result.stderr}{result.stdout}\n{log}"
            )

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        pwfile.chmod(0o600)
        self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if not self.running:
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start"
            )
            self.running = True

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back open transactions)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")
            self.running = False

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a random name by default) and return its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        self._psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still in it."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, sql: str) -> None:
        # Over the unix socket (trust auth): the admin work needs no password.
        self._run("psql", "-h", str(self.root), "-p", str(self.port), "-U", self.user,
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql)  # fmt: skip

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TemporaryPostgres(port={self.port}, running={self.running})"


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """A DSN for the block: ``DATABASE_URL`` if set, else a ``TemporaryPostgres`` server's.

    with temporary_postgres() as dsn:      # what the recipes' examples run on
        asyncio.run(main(dsn))
    """
    if dsn := os.environ.get("DATABASE_URL"):
        yield dsn
        return
    with TemporaryPostgres() as server:
        yield server.dsn


def _find_pg_bin() -> Path:
    """The directory of ``initdb``/``pg_ctl``: PATH first, then /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    raise RuntimeError(
        "TemporaryPostgres needs the PostgreSQL server binaries (initdb, pg_ctl) on PATH or"
        " in /usr/lib/postgresql/*/bin: install PostgreSQL, or set DATABASE_URL"
    )


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import StateGraph

    class State(TypedDict, total=False):
        team: str
        rows: list[dict[str, Any]]

    async def main(dsn: str) -> None:
        async with Resources() as resources:
            db = PostgresPool(PostgresSettings(dsn=dsn, max_size=4), resources=resources)
            await db.execute("CREATE TABLE IF NOT EXISTS users (name text, team text)")
            await db.executemany(
                "INSERT INTO users VALUES ($1, $2)",
                [("ada", "red"), ("bob", "blue"), ("cy", "red")],
            )
            builder = StateGraph(State)
            builder.add_node(
                QueryRows(db, "SELECT name FROM users WHERE team = $1 ORDER BY name", ["team"])
            )
            builder.add_edge("__start__", "QueryRows")
            graph = builder.compile()
            for team in ("red", "blue"):
                result = await graph.ainvoke({"team": team})
                print(f"{team}: {[row['name'] for row in result['rows']]}")
            print(f"settings: {db.settings!r}")

    with temporary_postgres() as url:
        asyncio.run(main(url))
