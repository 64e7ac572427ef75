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
``acquire_timeout`` for a free connection raises ``PoolExhaustedError``. After a server
restart the pool reconnects on its own; a read that hit a dead connection is retried
once, a write raises ``ConnectionLostError`` (it may or may not have committed).
The DSN comes from the call, the run's config (``configurable.database_url``), the run's
context (``database_url``), the settings, or ``DATABASE_URL``; its password never
appears in a repr, log line or error raised here.

For durable graph execution on the same server, compile with ``postgres_checkpointer``
(langgraph-checkpoint-postgres): a run whose process dies resumes from its last
checkpoint with ``graph.ainvoke(None, {"configurable": {"thread_id": ...}})``.

When to use LangGraph's native tools instead: state that belongs to the graph (progress,
messages, memory) goes in the checkpointer / ``BaseStore`` (``AsyncPostgresStore``), not
in tables you manage; retrying a failed node is ``RetryPolicy(retry_on=is_connection_error)``.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, LiteralString

import asyncpg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record

from .resources import Resources, close_at_loop_shutdown

__all__ = [
    "ConnectionLostError",
    "PoolExhaustedError",
    "PostgresPool",
    "PostgresSettings",
    "SQLQuery",
    "dsn_from",
    "is_connection_error",
    "postgres_checkpointer",
    "redact_dsn",
]

_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")
_PASSWORD_PARAM = re.compile(r"(password=)([^&\s]*)", re.I)

# Errors meaning "the connection or server went away", not "the query was wrong".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionFailureError,
    asyncpg.InterfaceError,
    # A server shutting down can leave a pooled connection mid-protocol just before
    # its socket closes; asyncpg then reports an internal state error.
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
)


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***\3", dsn))


class PoolExhaustedError(TimeoutError):
    """No connection became free within ``acquire_timeout``."""


class ConnectionLostError(ConnectionError):
    """The server or the connection went away during a call."""


def is_connection_error(exc: BaseException) -> bool:
    """For ``RetryPolicy(retry_on=is_connection_error)``: connection lost or server down."""
    return isinstance(exc, (ConnectionLostError, PoolExhaustedError, *_CONNECTION_ERRORS))


def dsn_from(
    config: RunnableConfig | None = None, runtime: Any = None, default: str | None = None
) -> str | None:
    """The DSN for a run: ``configurable.database_url``, then ``runtime.context.database_url``,
    then ``default``, then the ``DATABASE_URL`` environment variable."""
    if config:
        dsn = config.get("configurable", {}).get("database_url")
        if dsn:
            return str(dsn)
    context = getattr(runtime, "context", None)
    if context is not None:
        dsn = (
            context.get("database_url")
            if isinstance(context, Mapping)
            else getattr(context, "database_url", None)
        )
        if dsn:
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
    """Server-side limit per statement, in seconds (``None``: the server's default)."""
    connect_timeout: float = 10.0
    """Seconds to open one connection."""
    retry_reads: bool = True
    """Retry a read once when its connection turned out to be dead."""

    def __post_init__(self) -> None:
        for name, low in (("min_size", 0), ("max_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"PostgresSettings {name} must be an int >= {low}, got {value!r}")
        if self.min_size > self.max_size:
            raise ValueError(
                f"PostgresSettings min_size must be <= max_size, got {self.min_size} > {self.max_size}"
            )
        for name in ("acquire_timeout", "connect_timeout", "statement_timeout"):
            value = getattr(self, name)
            if value is None and name == "statement_timeout":
                continue
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"PostgresSettings {name} must be a number > 0, got {value!r}")
        if self.dsn is not None and not self.dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError(
                f"PostgresSettings dsn must start with postgresql:// or postgres://, got {redact_dsn(self.dsn)!r}"
            )

    def __repr__(self) -> str:
        dsn = None if self.dsn is None else redact_dsn(self.dsn)
        return (
            f"PostgresSettings(dsn={dsn!r}, min_size={self.min_size}, max_size={self.max_size},"
            f" acquire_timeout={self.acquire_timeout}, statement_timeout={self.statement_timeout})"
        )


SQLQuery = LiteralString
"""A query written in the source, with ``$n`` placeholders: never built from values."""


class PostgresPool:
    """Query helpers over one asyncpg pool per (event loop, DSN); see the module docstring.

    For example:

        db = PostgresPool(PostgresSettings(dsn=DSN), resources=resources)
        await db.execute("INSERT INTO events(kind) VALUES ($1)", "login")
    """

    _pools: ClassVar[
        dict[tuple[asyncio.AbstractEventLoop, str, PostgresSettings], asyncpg.Pool]
    ] = {}
    _locks: ClassVar[
        dict[tuple[asyncio.AbstractEventLoop, str, PostgresSettings], asyncio.Lock]
    ] = {}
    _disarms: ClassVar[dict[int, Any]] = {}
    # id(pool) -> connections acquired through this class and not yet released.
    _lent: ClassVar[dict[int, int]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

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
        self._recent: tuple[asyncio.AbstractEventLoop, str, asyncpg.Pool] | None = None
        if resources is not None:
            resources.add(self)

    def _dsn(self, dsn: str | None) -> str:
        dsn = dsn or self.settings.dsn or os.environ.get("DATABASE_URL")
        if not dsn:
            raise ValueError(
                f"{self.name}: no PostgreSQL DSN; pass dsn=, set PostgresSettings(dsn=...),"
                " configurable.database_url, or the DATABASE_URL environment variable"
            )
        return dsn

    async def pool(self, dsn: str | None = None) -> asyncpg.Pool:
        """This loop's pool for ``dsn``, created on first use (concurrent first calls share it)."""
        loop = asyncio.get_running_loop()
        dsn = self._dsn(dsn)
        recent = self._recent
        if (
            recent is not None
            and recent[0] is loop
            and recent[1] == dsn
            and not recent[2].is_closing()
        ):
            return recent[2]
        key = (loop, dsn, self.settings)
        pool = self._pools.get(key)
        if pool is not None:
            self._recent = (loop, dsn, pool)
            return pool
        with self._guard:
            # Forget what a loop that ended without shutdown_asyncgens left behind.
            for stale in [k for k in {*self._locks, *self._pools} if k[0].is_closed()]:
                self._forget(stale, self._pools.get(stale))
            lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = await self._create(key[1])
                self._pools[key] = pool
                self._disarms[id(pool)] = close_at_loop_shutdown(lambda: self._close(key, pool))
                record("pool_size", float(self.settings.max_size), name=self.name)  # a gauge
        self._recent = (loop, dsn, pool)
        return pool

    async def _create(self, dsn: str) -> asyncpg.Pool:
        settings = self.settings
        server_settings = {"application_name": self.name}
        if settings.statement_timeout is not None:
            server_settings["statement_timeout"] = str(int(settings.statement_timeout * 1000))
        try:
            return await asyncpg.create_pool(
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

    def _forget(self, key: tuple[Any, str, PostgresSettings], pool: asyncpg.Pool | None) -> None:
        """Unregister ``pool`` and cancel its loop-shutdown close; the caller holds ``_guard``."""
        self._locks.pop(key, None)
        if pool is None:
            return
        if self._pools.get(key) is pool:
            del self._pools[key]
        self._lent.pop(id(pool), None)
        disarm = self._disarms.pop(id(pool), None)
        if disarm is not None:
            disarm()
            record("pool_size", -float(key[2].max_size), name=self.name)

    async def _close(self, key: tuple[Any, str, PostgresSettings], pool: asyncpg.Pool) -> None:
        with self._guard:
            self._forget(key, pool)
        try:
            await asyncio.wait_for(pool.close(), self.settings.acquire_timeout)
        except TimeoutError:
            pool.terminate()  # a connection was never released: do not hang shutdown

    async def aclose(self) -> None:
        """Close this loop's pools of this object's settings (the next call opens new ones)."""
        loop = asyncio.get_running_loop()
        for key, pool in list(self._pools.items()):
            if key[0] is loop and key[2] == self.settings:
                await self._close(key, pool)

    async def _acquire(self, pool: asyncpg.Pool, dsn: str) -> asyncpg.Connection:
        key = id(pool)
        lent = self._lent.get(key, 0)
        # Count the connection as lent before awaiting, so a burst of callers cannot all
        # see the same free slot.
        self._lent[key] = lent + 1
        try:
            if lent < self.settings.max_size:
                # A connection is free, so acquire() will not wait for a release: skip
                # the timer (opening a new connection is bounded by connect_timeout).
                idle: asyncpg.Connection = await pool.acquire()
                return idle
            record("pool_waits", 1.0, name=self.name)
            # asyncio.timeout, not acquire(timeout=): no extra task per call.
            async with asyncio.timeout(self.settings.acquire_timeout) as deadline:
                conn: asyncpg.Connection = await pool.acquire()
                return conn
        except BaseException as exc:
            self._unlend(key)
            if (
                isinstance(exc, TimeoutError)
                and lent >= self.settings.max_size
                and deadline.expired()
            ):
                raise PoolExhaustedError(
                    f"{self.name}: no PostgreSQL connection free within acquire_timeout="
                    f"{self.settings.acquire_timeout:g}s (max_size={self.settings.max_size}, all"
                    " in use); raise max_size or acquire_timeout, or hold connections for less time"
                ) from None
            if isinstance(exc, _CONNECTION_ERRORS):
                raise ConnectionLostError(
                    f"{self.name}: cannot reach {redact_dsn(dsn)}: {type(exc).__name__}:"
                    f" {_redacted(exc, dsn)}"
                ) from None
            raise

    async def _release(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        try:
            await pool.release(conn)
        finally:
            self._unlend(id(pool))

    def _unlend(self, key: int) -> None:
        count = self._lent.get(key)
        if count:  # absent once the pool was closed meanwhile
            self._lent[key] = count - 1

    @asynccontextmanager
    async def connection(self, dsn: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for several statements (no transaction of its own)."""
        dsn = self._dsn(dsn)
        pool = await self.pool(dsn)
        conn = await self._acquire(pool, dsn)
        try:
            yield conn
        except _CONNECTION_ERRORS:
            conn.terminate()  # never hand a broken connection to the next caller
            raise
        finally:
            await self._release(pool, conn)

    @asynccontextmanager
    async def transaction(self, dsn: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction: committed on exit, rolled back on error."""
        async with self.connection(dsn) as conn, conn.transaction():
            yield conn

    async def _call(
        self, method: str, query: SQLQuery, args: Sequence[Any], dsn: str | None, read: bool
    ) -> Any:
        dsn = self._dsn(dsn)
        attempts = 2 if read and self.settings.retry_reads else 1
        for attempt in range(1, attempts + 1):
            try:
                # connection() inlined: this is the per-query hot path.
                pool = await self.pool(dsn)
                conn = await self._acquire(pool, dsn)
                try:
                    return await getattr(conn, method)(query, *args)
                except _CONNECTION_ERRORS:
                    conn.terminate()
                    raise
                finally:
                    await self._release(pool, conn)
            except PoolExhaustedError:
                raise
            except ConnectionLostError:
                if attempt == attempts:
                    raise
            except _CONNECTION_ERRORS as exc:
                if attempt == attempts:
                    kind = "read" if read else "write; it may or may not have committed"
                    raise ConnectionLostError(
                        f"{self.name}: connection to {redact_dsn(dsn)} lost during {method}"
                        f" ({kind}): {type(exc).__name__}: {_redacted(exc, dsn)}"
                    ) from None
            record("pg_read_retries", 1.0, name=self.name)
        raise AssertionError("unreachable")

    async def fetch(
        self, query: SQLQuery, *args: Any, dsn: str | None = None
    ) -> list[asyncpg.Record]:
        """All rows of ``query`` run with ``args``."""
        rows: list[asyncpg.Record] = await self._call("fetch", query, args, dsn, read=True)
        return rows

    async def fetchrow(
        self, query: SQLQuery, *args: Any, dsn: str | None = None
    ) -> asyncpg.Record | None:
        """The first row, or ``None``."""
        row: asyncpg.Record | None = await self._call("fetchrow", query, args, dsn, read=True)
        return row

    async def fetchval(self, query: SQLQuery, *args: Any, dsn: str | None = None) -> Any:
        """The first column of the first row, or ``None``."""
        return await self._call("fetchval", query, args, dsn, read=True)

    async def execute(self, query: SQLQuery, *args: Any, dsn: str | None = None) -> str:
        """Run a statement; returns its status (e.g. ``"INSERT 0 1"``). Never retried."""
        status: str = await self._call("execute", query, args, dsn, read=False)
        return status

    async def executemany(
        self, query: SQLQuery, args: Iterable[Sequence[Any]], *, dsn: str | None = None
    ) -> None:
        """Run a statement once per argument tuple, atomically (one transaction)."""
        await self._call("executemany", query, (list(args),), dsn, read=False)

    def __repr__(self) -> str:
        return f"PostgresPool(name={self.name!r}, settings={self.settings!r})"


def _redacted(exc: BaseException, dsn: str) -> str:
    """``exc``'s message with the DSN's password (if any) masked."""
    text = str(exc)
    match = _PASSWORD.search(dsn)
    if match and match.group(2):
        text = text.replace(match.group(2), "***")
    return redact_dsn(text)


@asynccontextmanager
async def postgres_checkpointer(dsn: str) -> AsyncIterator[AsyncPostgresSaver]:
    """An ``AsyncPostgresSaver`` on ``dsn`` with its tables created; for ``compile(checkpointer=)``.

    For example:

        async with postgres_checkpointer(DSN) as saver:
            graph = builder.compile(checkpointer=saver)
    """
    async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
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
        args = [state[key] for key in self.arg_keys]
        rows = await self.db.fetch(
            self.query, *args, dsn=dsn_from(config, runtime, self.db.settings.dsn)
        )
        self.log("query", rows=len(rows))
        return {self.output_key: [dict(row) for row in rows]}


if __name__ == "__main__":
    import shutil
    import subprocess
    import tempfile
    from contextlib import contextmanager
    from pathlib import Path
    from typing import TypedDict

    from langgraph.graph import StateGraph

    @contextmanager
    def temporary_postgres() -> Any:
        """DATABASE_URL if set, else a throwaway local server (initdb + pg_ctl)."""
        if os.environ.get("DATABASE_URL"):
            yield os.environ["DATABASE_URL"]
            return
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        root = Path(tempfile.mkdtemp(prefix="pg-example-"))
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_user:
            shutil.chown(root, "postgres", "postgres")
        data = root / "data"

        def run(tool: str, *args: str) -> None:
            # On PATH, or where Debian/Ubuntu packages put the server binaries.
            found = shutil.which(tool) or next(
                iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), reverse=True)), None
            )
            if found is None:
                raise SystemExit(f"{tool} not found: install PostgreSQL or set DATABASE_URL")
            subprocess.run([*as_user, str(found), *args], check=True, capture_output=True)

        try:
            run("initdb", "-D", str(data), "-U", "example", "--auth=trust", "--no-sync")
            opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
            run("pg_ctl", "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start")
            try:
                yield f"postgresql://example@127.0.0.1:{port}/postgres"
            finally:
                run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)

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
