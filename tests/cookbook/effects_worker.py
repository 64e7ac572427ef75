"""A worker for the effects fault-injection suite: runs one graph step per forked child.

The parent (started once per test with ``python -m tests.cookbook.effects_worker``) imports
everything, then reads one JSON spec per stdin line, forks a child that runs it on a fresh
event loop with fresh connections, and answers one JSON line: the child's report, or how it
died. A child SIGKILLs itself at the kill point its spec names, so a kill lands exactly
where asked: before an effect's call, after the call and before the ledger records it, after
the record and before the checkpoint, or after the checkpoint.

The graph: ``work`` performs the effects (``loop``: three occurrences; ``send``: five Send
tasks; ``subgraph``: inside a subgraph node), optionally behind an ``interrupt()`` gate,
optionally followed by an ``interrupt()`` (``style="interrupt"``) or a failure on the first
attempt that ``RetryPolicy`` retries (``style="retry"``); then ``after`` ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import operator
import os
import signal
import sys
import traceback
import uuid
from typing import Annotated, Any, TypedDict

from act_operator_lib.cookbook.effects import (
    NOT_DONE,
    EffectBackend,
    EffectLedger,
    PostgresBackend,
    RedisEffectBackend,
    StoreBackend,
    idempotency_headers,
)
from act_operator_lib.cookbook.http_client import HttpClient, HttpSettings
from act_operator_lib.cookbook.postgres import PostgresPool, PostgresSettings
from act_operator_lib.cookbook.redis_backend import RedisBackend
from act_operator_lib.cookbook.resources import Resources
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.postgres.aio import AsyncPostgresStore
from langgraph.types import Command, RetryPolicy, Send, interrupt


class Flaky(Exception):
    """The later failure in the effect's node that RetryPolicy retries."""


class State(TypedDict, total=False):
    trial: str
    item: int
    results: Annotated[list[Any], operator.add]
    finished: bool


_reached: dict[str, int] = {}


def _maybe_kill(spec: dict[str, Any], point: str) -> None:
    """SIGKILL this process when the spec's kill point is reached for the kill_at-th time."""
    if spec.get("kill") != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] == spec.get("kill_at", 1):
        os.kill(os.getpid(), signal.SIGKILL)


def build(spec: dict[str, Any], db: PostgresPool, http: HttpClient, store: Any) -> Any:
    on = spec["ledger"] == "on"
    backend: EffectBackend
    if spec.get("backend", "pg") == "pg":
        backend = PostgresBackend(db)
    elif spec["backend"] == "redis":
        backend = RedisEffectBackend(RedisBackend(spec["redis_url"]))
    else:
        backend = StoreBackend(store)
    ledger = EffectLedger(backend)
    sink = spec["sink"]
    occurrences = 3 if spec["shape"] == "loop" else 1

    async def effect(trial: str, item: int, k: int, runtime: Runtime[Any]) -> Any:
        body = {"trial": trial, "item": item, "k": k}
        if sink == "pg":
            insert = "INSERT INTO sink_rows (trial, item, k) VALUES ($1, $2, $3)"
            if not on:
                _maybe_kill(spec, "before_call")
                await db.execute(insert, trial, item, k)
                _maybe_kill(spec, "after_call")
                return "row"
            async with ledger.transaction("insert", runtime=runtime) as tx:
                if tx.first:
                    _maybe_kill(spec, "before_call")
                    await tx.conn.execute(insert, trial, item, k)
                    tx.result = "row"
                    _maybe_kill(spec, "after_call")  # written, not yet committed
            return tx.result
        path = "/dedupe" if sink == "http_dedupe" else "/plain"

        async def call(key: str) -> Any:
            _maybe_kill(spec, "before_call")
            answer = await http.request("POST", path, json=body, headers=idempotency_headers(key))
            _maybe_kill(spec, "after_call")
            return answer

        if not on:
            return await call(str(uuid.uuid4()))  # a client without a ledger: a fresh key

        async def reconcile(key: str) -> Any:
            found = await http.request("GET", "/lookup", params={"key": key})
            return found["response"] if found["found"] else NOT_DONE

        return await ledger.once(
            "post",
            call,
            runtime=runtime,
            idempotent=sink == "http_dedupe",
            reconcile=reconcile if sink == "http_reconcile" else None,
        )

    async def work(state: State, runtime: Runtime[Any]) -> dict[str, Any]:
        if spec.get("gate"):
            interrupt("gate")
        results = []
        for k in range(1, occurrences + 1):
            results.append(await effect(state["trial"], state.get("item", 0), k, runtime))
            _maybe_kill(spec, "after_record")
        if spec["style"] == "interrupt":
            interrupt("confirm")
        info = runtime.execution_info
        if spec["style"] == "retry" and info is not None and info.node_attempt == 1:
            raise Flaky("a later step of the node failed")
        return {"results": results}

    def after(state: State) -> dict[str, Any]:
        _maybe_kill(spec, "after_checkpoint")
        return {"finished": True}

    retry = RetryPolicy(retry_on=Flaky, max_attempts=3, initial_interval=0.01, jitter=False)
    builder = StateGraph(State)
    if spec["shape"] == "subgraph":
        inner = StateGraph(State)
        inner.add_node("work", work, retry_policy=retry)
        inner.add_edge(START, "work")
        builder.add_node("work", inner.compile())
    else:
        builder.add_node("work", work, retry_policy=retry)
    builder.add_node("after", after)
    if spec["shape"] == "send":

        def fan(state: State) -> Command[Any]:
            sends = [Send("work", {"trial": state["trial"], "item": i}) for i in range(5)]
            return Command(goto=sends)

        builder.add_node("fan", fan)
        builder.add_edge(START, "fan")
    else:
        builder.add_edge(START, "work")
    builder.add_edge("work", "after")
    builder.add_edge("after", END)
    return builder


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    dsn = spec["dsn"]
    async with (
        Resources() as resources,
        AsyncPostgresSaver.from_conn_string(dsn) as saver,
        contextlib.AsyncExitStack() as stack,
    ):
        store = None
        if spec["action"] == "setup" or spec.get("backend") == "store":
            store = await stack.enter_async_context(AsyncPostgresStore.from_conn_string(dsn))
        if spec["action"] == "setup":
            await saver.setup()
            assert store is not None
            await store.setup()
            db = PostgresPool(PostgresSettings(dsn=dsn, max_size=2), resources=resources)
            await PostgresBackend(db).setup()
            await db.execute("CREATE TABLE IF NOT EXISTS sink_rows (trial text, item int, k int)")
            return {"outcome": "setup"}
        db = PostgresPool(PostgresSettings(dsn=dsn, max_size=6), resources=resources)
        http = HttpClient(HttpSettings(base_url=spec["sink_url"], timeout=10))
        resources.add(http)
        graph = build(spec, db, http, store).compile(checkpointer=saver, store=store)
        config: Any = {"configurable": {"thread_id": spec["thread_id"]}}
        durability = spec["durability"]
        if spec["action"] == "start":
            payload: Any = {"trial": spec["thread_id"], "results": []}
        else:
            state = await graph.aget_state(config)
            if not state.next:
                return {"outcome": "finished" if state.values else "nothing"}
            interrupts = list(state.interrupts)
            payload = Command(resume={i.id: True for i in interrupts}) if interrupts else None
        try:
            await graph.ainvoke(payload, config, durability=durability)
        except Exception as exc:
            return {"outcome": "error", "error": type(exc).__name__, "message": str(exc)[:300]}
        state = await graph.aget_state(config)
        return {"outcome": "paused" if state.next else "finished"}


def child(spec: dict[str, Any], out: int) -> None:
    try:
        report = asyncio.run(run(spec))
    except BaseException:
        report = {"outcome": "crash", "message": traceback.format_exc()[-2000:]}
    os.write(out, json.dumps(report).encode())
    os.close(out)
    os._exit(0)


def main() -> None:
    # Imported modules stay shared with the children: the collector must not touch them.
    gc.freeze()
    for line in sys.stdin:
        spec = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            gc.disable()  # a short-lived child: collecting would only copy shared pages
            os.close(read_end)
            child(spec, write_end)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            report = {"outcome": "killed", "signal": os.WTERMSIG(status)}
        else:
            report = json.loads(b"".join(chunks) or b'{"outcome": "no report"}')
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
