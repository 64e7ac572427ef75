"""Effects under SIGKILL: real worker processes, the real PostgreSQL, a real aiohttp sink.

Each trial runs a graph in forked worker processes (tests/cookbook/effects_worker.py) with
LangGraph's PostgreSQL checkpointer, kills the worker at a randomized point around an effect,
and continues the run in a fresh process (``invoke(None, config)``, ``Command(resume=...)``
after an ``interrupt()``, a ``RetryPolicy`` retry) until it finishes. Then it counts what the
sinks received: a PostgreSQL table, an HTTP endpoint that dedupes by ``Idempotency-Key`` and
one that does not. The same trials with the ledger off show duplicates.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
KILL_POINTS = ("before_call", "after_call", "after_record", "after_checkpoint")


@dataclass
class Sink:
    """What the HTTP endpoints received: every call, and the deliveries they acted on."""

    url: str = ""
    calls: Counter[tuple[str, str, int, int]] = field(default_factory=Counter)
    deliveries: Counter[tuple[str, str, int, int]] = field(default_factory=Counter)
    by_key: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with running_sink() as state:
        yield state


@asynccontextmanager
async def running_sink() -> AsyncIterator[Sink]:
    """The HTTP sink on 127.0.0.1: /dedupe (by Idempotency-Key), /plain, /lookup?key=."""
    state = Sink()

    async def receive(request: web.Request) -> web.Response:
        endpoint = request.path.strip("/")
        body = await request.json()
        effect = (endpoint, body["trial"], body["item"], body["k"])
        key = request.headers.get("Idempotency-Key", "")
        state.calls[effect] += 1
        if endpoint == "dedupe" and key in state.by_key:
            return web.json_response(state.by_key[key])  # the stored answer, not redone
        state.deliveries[effect] += 1
        answer = {"receipt": f"r{sum(state.deliveries.values())}"}
        state.by_key[key] = answer
        return web.json_response(answer)

    async def lookup(request: web.Request) -> web.Response:
        key = request.query["key"]
        found = key in state.by_key
        return web.json_response({"found": found, "response": state.by_key.get(key)})

    app = web.Application()
    app.router.add_post("/dedupe", receive)
    app.router.add_post("/plain", receive)
    app.router.add_get("/lookup", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


class Worker:
    """One worker parent process; each ``run`` forks a child for one spec."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write((json.dumps(spec) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 120)
        assert line, "the worker parent exited"
        report: dict[str, Any] = json.loads(line)
        assert report["outcome"] not in ("crash", "no report"), report
        return report


@pytest.fixture
async def workers(pg_database: str) -> AsyncIterator[list[Worker]]:
    async with running_workers(pg_database) as pool:
        yield pool


@asynccontextmanager
async def running_workers(dsn: str, count: int = 3) -> AsyncIterator[list[Worker]]:
    """Worker parents (trials run ``count`` at a time: each is mostly waiting), set up."""
    processes = []
    try:
        for _ in range(count):
            processes.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "tests.cookbook.effects_worker",
                    cwd=ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        pool = [Worker(process) for process in processes]
        assert (await pool[0].run({"action": "setup", "dsn": dsn}))["outcome"] == "setup"
        yield pool
    finally:
        for process in processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in processes:
            await asyncio.wait_for(process.wait(), 60)


def random_trial(rng: random.Random, n: int) -> dict[str, Any]:
    """A randomized trial: durability, shape, sink, continuation style, kill point."""
    durability = rng.choice(("sync", "sync", "async", "exit"))
    # Send fan-outs and subgraphs get their task identity from the checkpoint of an earlier
    # step, which only "sync" saves before the step runs (see the effects docstring).
    shapes = ("plain", "loop", "send", "subgraph") if durability == "sync" else ("plain", "loop")
    shape = rng.choice(shapes)
    sink = rng.choice(("pg", "http_dedupe", "http_plain", "http_reconcile"))
    effects = {"loop": 3, "send": 5}.get(shape, 1)
    kill = rng.choice(KILL_POINTS)
    return {
        "thread_id": f"trial-{n}",
        "durability": durability,
        "shape": shape,
        "sink": sink,
        # ledger.transaction needs the PostgreSQL backend; HTTP effects use either.
        "backend": "pg" if sink == "pg" else rng.choice(("pg", "store", "redis")),
        "style": rng.choice(("none", "interrupt", "retry")),
        # Without "sync", the effect's task must come from a saved checkpoint: the gate's.
        "gate": durability != "sync" or rng.random() < 0.3,
        "kill": kill,
        # The k-th effect to reach the point; "after" (past the checkpoint) runs once.
        "kill_at": 1 if kill == "after_checkpoint" else rng.randint(1, effects),
    }


@dataclass
class Outcome:
    killed: bool = False
    finished: bool = False
    unknown: bool = False


async def run_trial(worker: Worker, base: dict[str, Any], trial: dict[str, Any]) -> Outcome:
    """Start the run with the kill armed, then continue it in fresh processes to the end."""
    outcome = Outcome()
    spec = {**base, **trial, "action": "start"}
    for _ in range(12):
        armed = spec if not outcome.killed else {**spec, "kill": None}
        report = await worker.run(armed)
        if report["outcome"] == "killed":
            outcome.killed = True
        elif report["outcome"] == "error":
            assert report["error"] == "EffectOutcomeUnknown", report
            outcome.unknown = True
            return outcome
        elif report["outcome"] == "finished":
            outcome.finished = True
            return outcome
        spec = {**spec, "action": "continue"}
    raise AssertionError(f"trial {trial} did not finish: {report}")


def expected_effects(trial: dict[str, Any]) -> list[tuple[int, int]]:
    items = range(5) if trial["shape"] == "send" else range(1)
    ks = range(1, 4) if trial["shape"] == "loop" else range(1, 2)
    return [(item, k) for item in items for k in ks]


async def sink_counts(dsn: str, sink: Sink, trial: dict[str, Any]) -> dict[tuple[int, int], int]:
    """How many times each (item, k) effect of the trial was delivered."""
    name = trial["thread_id"]
    if trial["sink"] == "pg":
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT item, k, count(*) FROM sink_rows WHERE trial = $1 GROUP BY item, k", name
            )
        finally:
            await conn.close()
        return {(row[0], row[1]): row[2] for row in rows}
    endpoint = "dedupe" if trial["sink"] == "http_dedupe" else "plain"
    return {
        (item, k): count
        for (where, who, item, k), count in sink.deliveries.items()
        if where == endpoint and who == name
    }


async def run_suite(
    workers: list[Worker],
    sink: Sink,
    dsn: str,
    ledger: str,
    trials: list[dict[str, Any]],
    *,
    redis_url: str,
    verify: bool = True,
) -> tuple[int, int]:
    """Run the trials; (kills, duplicated effects). With the ledger on (and ``verify``),
    checks each trial as it ends."""
    base = {"dsn": dsn, "sink_url": sink.url, "ledger": ledger, "redis_url": redis_url}
    totals = Counter[str]()

    async def run_share(worker: Worker, share: list[dict[str, Any]]) -> None:
        for trial in share:
            outcome = await run_trial(worker, base, trial)
            totals["kills"] += outcome.killed
            counts = await sink_counts(dsn, sink, trial)
            totals["duplicates"] += sum(count - 1 for count in counts.values() if count > 1)
            if ledger == "on" and verify:
                check(trial, outcome, counts, sink)

    async with asyncio.TaskGroup() as group:
        for i, worker in enumerate(workers):
            group.create_task(run_share(worker, trials[i :: len(workers)]))
    return totals["kills"], totals["duplicates"]


def check(
    trial: dict[str, Any], outcome: Outcome, counts: dict[tuple[int, int], int], sink: Sink
) -> None:
    """Every effect delivered once; an unknown outcome, or a second call with the same key,
    only for a kill between a call's start and its record."""
    in_window = outcome.killed and (
        trial["kill"] in ("before_call", "after_call")
        # A Send fan-out runs its five tasks at once: a kill after one task's record can
        # land while its siblings are mid-call.
        or (trial["shape"] == "send" and trial["kill"] == "after_record")
    )
    assert all(count == 1 for count in counts.values()), (trial, counts)
    if outcome.unknown:
        # Only a non-idempotent effect without reconcile may stop at an unknown outcome.
        assert trial["sink"] == "http_plain", (trial, outcome)
        assert in_window, (trial, outcome)
    else:
        assert outcome.finished, (trial, outcome)
        assert sorted(counts) == expected_effects(trial), (trial, counts)
    if trial["sink"] != "pg":
        endpoint = "dedupe" if trial["sink"] == "http_dedupe" else "plain"
        name = trial["thread_id"]
        calls = [
            c for (where, who, _, _), c in sink.calls.items() if (where, who) == (endpoint, name)
        ]
        # A recorded effect is never called again; those a kill interrupted mid-call (all
        # five Send tasks may be in flight at once) may be re-sent once with their key, only
        # to the deduping endpoint (never a second time to the plain one).
        most = 2 if in_window and trial["sink"] == "http_dedupe" else 1
        assert all(c <= most for c in calls), (trial, calls)


@pytest.mark.slow
async def test_randomized_kill_points_run_each_effect_exactly_once(
    workers: list[Worker], sink: Sink, pg_database: str, redis_url: str
) -> None:
    rng = random.Random(19)
    trials = [random_trial(rng, n) for n in range(int(os.environ.get("EFFECTS_TRIALS", "215")))]
    kills, duplicates = await run_suite(
        workers, sink, pg_database, "on", trials, redis_url=redis_url
    )
    assert duplicates == 0
    assert kills >= 200  # randomized kill points that actually landed


@pytest.mark.slow
async def test_the_same_trials_without_the_ledger_duplicate_effects(
    workers: list[Worker], sink: Sink, pg_database: str, redis_url: str
) -> None:
    rng = random.Random(7)
    trials = []
    for n in range(24):
        trial = random_trial(rng, n)
        trial.update(durability="sync", kill=rng.choice(("after_call", "after_record")))
        trial["sink"] = rng.choice(("pg", "http_dedupe", "http_plain"))
        trials.append(trial)
    kills, duplicates = await run_suite(
        workers, sink, pg_database, "off", trials, redis_url=redis_url
    )
    assert kills >= 20
    assert duplicates >= 10  # proof the suite can fail
