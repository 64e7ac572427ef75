"""Stream a large PostgreSQL result set in batches through an asyncpg cursor, as progress.

    db = PostgresPool(PostgresSettings(dsn=DSN))      # the pooled recipe: one pool per loop
    node = PgCursorStreamNode(
        db,
        "SELECT id, body FROM documents WHERE tenant = $1 ORDER BY id",
        args=lambda state: (state["tenant"],),
        policy=CursorStreamPolicy(batch_size=500, statement_timeout=30),
    )
    async for event in graph.astream({"tenant": "acme"}, stream_mode="custom"):
        ...  # {"node", "batch": 1, "rows_so_far": 500, "rows": [{...}, ...]} per batch

A cursor only exists inside a transaction, so the node opens one (read-only, repeatable
read: every batch sees the same snapshot), fetches ``batch_size`` rows per round trip and
emits each batch on the custom stream before fetching the next: memory holds one batch,
however large the result. ``handle_batch`` (optional, awaited per batch) does the real work
with the rows, e.g. indexing them; with ``emit_rows=False`` the events carry counts only.
The node returns ``{output_key: rows_read}``.

The connection comes from the shared ``PostgresPool`` (its DSN: the run's context
``database_url``, else the pool's settings, see ``dsn_from``; never a password in
``configurable``, which LangGraph copies into checkpoints).
``statement_timeout`` is set with ``SET LOCAL``, so it lasts for this transaction only and
overrides the pool's per-connection default; a fetch that exceeds it raises asyncpg's
``QueryCanceledError`` with a note saying how many rows were read. Any error or
cancellation rolls the transaction back and returns the connection to the pool (asyncpg
cancels the running fetch on the server).

When to use LangGraph's native tools instead: for a result that fits in memory, a plain
node doing ``await conn.fetch(query)`` with ``RetryPolicy`` and ``TimeoutPolicy`` is simpler.
Keep a whole-node deadline in ``TimeoutPolicy(run_timeout=...)``; this node calls
``runtime.heartbeat()`` per batch, so ``TimeoutPolicy(idle_timeout=..., refresh_on=
"heartbeat")`` bounds the time between batches.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import asyncpg
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import current_node, record
from act_operator_lib.validate import check_bool, check_int, check_number, check_str

from .postgres import PostgresPool, PostgresSettings, SQLQuery, dsn_from

__all__ = ["CursorStreamPolicy", "PgCursorStreamNode", "stream_batches"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CursorStreamPolicy:
    """Batch size, time limit and what each progress event carries."""

    batch_size: int = 1000
    """Rows per fetch and per event; memory holds one batch."""
    statement_timeout: float | None = None
    """Seconds any one fetch may run (``SET LOCAL statement_timeout``), at least 0.001: the
    server counts whole milliseconds (a fraction rounds up) and reads 0 as no limit;
    None: the server's."""
    emit_rows: bool = True
    """Put the batch's rows (as dicts) in each event; False: counts only."""
    output_key: str | None = "rows_read"
    """State key for the number of rows read; None: return no update."""

    def __post_init__(self) -> None:
        check_int("CursorStreamPolicy", "batch_size", self.batch_size, min=1)
        check_number(
            "CursorStreamPolicy",
            "statement_timeout",
            self.statement_timeout,
            ge=0.001,
            unit="seconds",
            note="PostgreSQL reads 0 ms as no limit",
            allow_none=True,
        )
        check_bool("CursorStreamPolicy", "emit_rows", self.emit_rows)
        check_str("CursorStreamPolicy", "output_key", self.output_key, allow_none=True)


async def stream_batches(
    connection: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    query: str,
    *args: Any,
    batch_size: int = 1000,
    statement_timeout: float | None = None,
) -> AsyncGenerator[list[asyncpg.Record], None]:
    """Yield ``query``'s rows in lists of up to ``batch_size``, from one read-only snapshot.

        async with pool.acquire() as conn:
            async for rows in stream_batches(conn, "SELECT * FROM big", batch_size=500):
                ...

    Runs its own transaction on ``connection``; close the generator (``aclosing``) to stop
    early and roll it back.
    """
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        if statement_timeout is not None:
            # SET cannot take a bind parameter; the value is a number of whole ms, rounded
            # up so that it is never 0 (no limit).
            if not (math.isfinite(statement_timeout) and statement_timeout >= 0.001):
                raise ValueError(
                    "stream_batches statement_timeout must be >= 0.001 seconds (PostgreSQL"
                    f" reads 0 ms as no limit), got {statement_timeout!r}"
                )
            milliseconds = math.ceil(statement_timeout * 1000 - 1e-9)
            await connection.execute(f"SET LOCAL statement_timeout = {milliseconds}")
        cursor = await connection.cursor(query, *args)
        while rows := await cursor.fetch(batch_size):
            yield rows


class PgCursorStreamNode(AsyncBaseNode):
    """Read ``query`` through a cursor in batches, emitting each batch as progress.

    builder.add_node(PgCursorStreamNode(db, "SELECT * FROM events ORDER BY id"))
    """

    def __init__(
        self,
        db: PostgresPool,
        query: SQLQuery,
        *,
        args: Callable[[Any], Sequence[Any]] | None = None,
        handle_batch: Callable[[list[asyncpg.Record]], Awaitable[Any]] | None = None,
        policy: CursorStreamPolicy | None = None,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        kind = type(self).__name__
        if not isinstance(db, PostgresPool):
            raise TypeError(f"{kind} db must be a PostgresPool, got {type(db).__name__}")
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"{kind} query must be a non-empty SQL string, got {query!r}")
        for label, value in (("args", args), ("handle_batch", handle_batch)):
            if value is not None and not callable(value):
                raise TypeError(
                    f"{kind} {label} must be callable or None, got {type(value).__name__}"
                )
        if policy is not None and not isinstance(policy, CursorStreamPolicy):
            raise TypeError(
                f"{kind} policy must be a CursorStreamPolicy, got {type(policy).__name__}"
            )
        self.db = db
        self.query = query
        self.args = args
        self.handle_batch = handle_batch
        self.policy = policy or CursorStreamPolicy()

    async def execute(
        self, state: Any, config: RunnableConfig, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        policy = self.policy
        args = tuple(self.args(state)) if self.args is not None else ()
        write = runtime.stream_writer if runtime is not None else None
        heartbeat = runtime.heartbeat if runtime is not None else None
        rows_read = batches = 0
        try:
            dsn = dsn_from(config, runtime, self.db.settings.dsn)
            async with self.db.connection(dsn) as connection:
                batches_of_rows = stream_batches(
                    connection,
                    self.query,
                    *args,
                    batch_size=policy.batch_size,
                    statement_timeout=policy.statement_timeout,
                )
                async with aclosing(batches_of_rows):
                    async for rows in batches_of_rows:
                        batches += 1
                        rows_read += len(rows)
                        if self.handle_batch is not None:
                            await self.handle_batch(rows)
                        if heartbeat is not None:
                            heartbeat()
                        if write is not None:
                            event: dict[str, Any] = {
                                "node": self.name,
                                "batch": batches,
                                "rows_so_far": rows_read,
                            }
                            if policy.emit_rows:
                                event["rows"] = [dict(row) for row in rows]
                            write(event)
        except asyncpg.PostgresError as exc:
            exc.add_note(f"{self.name}: stopped after {rows_read} rows in {batches} batches")
            raise
        record("pg_stream_rows", float(rows_read), node=current_node(self.name))
        self.log("read", rows=rows_read, batches=batches)
        return None if policy.output_key is None else {policy.output_key: rows_read}


if __name__ == "__main__":
    import asyncio
    from typing import TypedDict

    from langgraph.graph import START, StateGraph

    from .postgres import temporary_postgres
    from .resources import Resources

    class State(TypedDict, total=False):
        upto: int
        rows_read: int

    async def main(dsn: str) -> None:
        async with Resources() as resources:
            db = PostgresPool(PostgresSettings(dsn=dsn, max_size=2), resources=resources)
            builder = StateGraph(State)
            builder.add_node(
                PgCursorStreamNode(
                    db,
                    "SELECT i, md5(i::text) AS digest FROM generate_series(1, $1::int) AS i",
                    args=lambda state: (state["upto"],),
                    policy=CursorStreamPolicy(batch_size=25_000, emit_rows=False),
                )
            )
            builder.add_edge(START, "PgCursorStreamNode")
            graph = builder.compile()
            async for mode, chunk in graph.astream(
                {"upto": 100_000}, stream_mode=["custom", "values"]
            ):
                print(mode, chunk)

    with temporary_postgres() as dsn:
        asyncio.run(main(dsn))
