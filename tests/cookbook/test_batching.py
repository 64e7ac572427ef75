"""The batching recipe: many concurrent graph runs' lookups become a few batched calls."""

from __future__ import annotations

import asyncio
import gc
import math
import weakref
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.batching import (
    BatchLoader,
    BatchLookupNode,
    BatchPolicy,
    EmbedNode,
    embedding_loader,
)
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langgraph.graph import START, StateGraph

from act_operator_lib import metrics
from tests.helpers import other_tasks_after, run_example


class Lookup(TypedDict, total=False):
    key: Any
    value: Any


class Users:
    """A bulk lookup endpoint: records every batch it is asked for, can be held or fail."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.batches: list[list[Any]] = []
        self.cancelled = 0
        self.running = 0
        self.peak = 0
        self.gate: asyncio.Event | None = None
        self.fail_batch: Exception | None = None
        self.sent = asyncio.Event()

    async def __call__(self, keys: list[Any]) -> dict[Any, Any]:
        self.batches.append(list(keys))
        self.sent.set()
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        if self.fail_batch is not None:
            raise self.fail_batch
        # A negative id is an unknown user: that key alone fails.
        return {k: {"id": k} if k >= 0 else LookupError(f"no user {k}") for k in keys}


def lookup_graph(loader: BatchLoader[Any, Any]) -> Any:
    builder = StateGraph(Lookup)
    builder.add_node("lookup", BatchLookupNode(loader))
    builder.add_edge(START, "lookup")
    return builder.compile()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_batch": 0}, ValueError, "BatchPolicy max_batch must be an int >= 1, got 0"),
        ({"max_batch": 2.0}, TypeError, "BatchPolicy max_batch must be an int >= 1, got 2.0"),
        ({"max_batch": True}, TypeError, "BatchPolicy max_batch must be an int >= 1, got True"),
        ({"max_in_flight": 0}, ValueError, "BatchPolicy max_in_flight must be an int >= 1, got 0"),
        (
            {"max_delay": -0.1},
            ValueError,
            "BatchPolicy max_delay must be a finite number of seconds >= 0",
        ),
        ({"max_delay": math.nan}, ValueError, "max_delay must be .*, got nan"),
        ({"max_delay": math.inf}, ValueError, "max_delay must be .*, got inf"),
        (
            {"max_delay": "5ms"},
            TypeError,
            "BatchPolicy max_delay must be a finite number of seconds >= 0, got '5ms'",
        ),
    ],
)
def test_invalid_policy_is_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BatchPolicy(**kwargs)


def test_misuse_names_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="BatchLoader batch_fn must be an async callable"):
        BatchLoader("users")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BatchLoader policy must be a BatchPolicy"):
        BatchLoader(Users(), {"max_batch": 3})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BatchLookupNode loader must be a BatchLoader"):
        BatchLookupNode(Users())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="embedding_loader embeddings must be a langchain-core"):
        embedding_loader("text-embedding-3-small")  # type: ignore[arg-type]


async def test_many_concurrent_runs_share_a_few_batch_calls() -> None:
    users = Users()
    graph = lookup_graph(BatchLoader(users, BatchPolicy(max_batch=50, max_delay=0.05)))

    results = await asyncio.gather(*(graph.ainvoke({"key": i}) for i in range(200)))

    assert [r["value"] for r in results] == [{"id": i} for i in range(200)]
    assert sorted(k for batch in users.batches for k in batch) == list(range(200))
    assert len(users.batches) < 20  # 200 runs, a handful of calls
    assert max(len(b) for b in users.batches) <= 50


async def test_duplicate_keys_in_a_window_are_loaded_once_and_map_back_in_order() -> None:
    users = Users()
    loader = BatchLoader(users, BatchPolicy(max_batch=100, max_delay=0.05))
    graph = lookup_graph(loader)

    with metrics.collecting():
        metrics.reset()
        one, many = await asyncio.gather(
            graph.ainvoke({"key": 3}),
            graph.ainvoke({"key": [5, 3, 5, 1]}),  # a list: load_many, in this order
        )
        joins = metrics.snapshot().value("batch_joins", name="batch")

    assert one["value"] == {"id": 3}
    assert many["value"] == [{"id": 5}, {"id": 3}, {"id": 5}, {"id": 1}]
    assert users.batches == [[3, 5, 1]]
    assert joins == 2


async def test_a_key_error_reaches_only_that_keys_callers() -> None:
    users = Users()
    graph = lookup_graph(BatchLoader(users, BatchPolicy(max_delay=0.05)))

    outcomes = await asyncio.gather(
        *(graph.ainvoke({"key": k}) for k in (1, -7, 2, -7)), return_exceptions=True
    )

    assert outcomes[0] == {"key": 1, "value": {"id": 1}}
    assert outcomes[2] == {"key": 2, "value": {"id": 2}}
    for failed in (outcomes[1], outcomes[3]):
        assert isinstance(failed, LookupError)
        assert str(failed) == "no user -7"
    assert users.batches == [[1, -7, 2]]


async def test_missing_and_misaligned_results_are_errors_naming_the_loader() -> None:
    async def partial(keys: list[int]) -> dict[int, str]:
        return {k: str(k) for k in keys if k != 2}

    async def short(keys: list[int]) -> list[str]:
        return ["only one"]

    missing = BatchLoader(partial, BatchPolicy(max_delay=0), name="partial")
    got = await asyncio.gather(missing.load(1), missing.load(2), return_exceptions=True)
    assert got[0] == "1"
    assert isinstance(got[1], KeyError)
    assert "'partial': batch_fn returned no result" in str(got[1])

    misaligned = BatchLoader(short, BatchPolicy(max_delay=0), name="short")
    got = await asyncio.gather(misaligned.load(1), misaligned.load(2), return_exceptions=True)
    for failed in got:
        assert isinstance(failed, ValueError)
        assert "'short': batch_fn returned 1 results for 2 keys" in str(failed)


async def test_a_batch_error_reaches_every_caller_and_the_next_batch_tries_again() -> None:
    users = Users()
    users.fail_batch = ConnectionError("user service down")
    graph = lookup_graph(BatchLoader(users, BatchPolicy(max_delay=0.05)))

    outcomes = await asyncio.gather(
        *(graph.ainvoke({"key": k}) for k in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert len(users.batches) == 1

    users.fail_batch = None
    assert (await graph.ainvoke({"key": 4}))["value"] == {"id": 4}
    assert users.batches[-1] == [4]


async def test_a_full_batch_goes_at_once_without_waiting_for_the_delay() -> None:
    users = Users(delay=0)
    loader = BatchLoader(users, BatchPolicy(max_batch=4, max_delay=60))
    graph = lookup_graph(loader)

    # Eight runs fill two batches; with a 60 s delay only the size trigger can send them.
    results = await asyncio.wait_for(
        asyncio.gather(*(graph.ainvoke({"key": i}) for i in range(8))), 30
    )

    assert [r["value"]["id"] for r in results] == list(range(8))
    assert sorted(map(sorted, users.batches)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


async def test_a_lone_caller_is_sent_after_the_delay() -> None:
    users = Users(delay=0)
    loader = BatchLoader(users, BatchPolicy(max_batch=1000, max_delay=0.02), name="lone")
    graph = lookup_graph(loader)

    with metrics.collecting():
        metrics.reset()
        result = await asyncio.wait_for(graph.ainvoke({"key": 9}), 30)
        snapshot = metrics.snapshot()

    assert result["value"] == {"id": 9}
    assert users.batches == [[9]]
    assert snapshot.value("batch_calls", name="lone", trigger="delay") == 1
    fill = next(s for s in snapshot.series if s.metric == "batch_fill_seconds")
    assert fill.value >= 0.015  # it waited for the window (aimed a timer tick early)


async def test_cancelling_one_caller_never_cancels_the_batch_others_wait_on() -> None:
    users = Users()
    users.gate = asyncio.Event()
    loader = BatchLoader(users, BatchPolicy(max_delay=0.01))
    graph = lookup_graph(loader)

    leaving = asyncio.create_task(graph.ainvoke({"key": 1}))
    staying = asyncio.create_task(graph.ainvoke({"key": 2}))
    await users.sent.wait()  # the batch [1, 2] is sent and held at the gate
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    users.gate.set()

    assert (await staying)["value"] == {"id": 2}
    assert users.batches == [[1, 2]]
    assert users.cancelled == 0


async def test_a_sent_batch_whose_callers_all_left_is_cancelled_and_leaves_nothing() -> None:
    before = asyncio.all_tasks()
    users = Users()
    users.gate = asyncio.Event()
    loader = BatchLoader(users, BatchPolicy(max_delay=0.01))
    graph = lookup_graph(loader)

    runs = [asyncio.create_task(graph.ainvoke({"key": k})) for k in (1, 2, 1)]
    await users.sent.wait()
    for run in runs:
        run.cancel()
    outcomes = await asyncio.gather(*runs, return_exceptions=True)

    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert users.cancelled == 1
    assert await other_tasks_after(before) == set()
    # The loader is still usable afterwards.
    users.gate.set()
    assert (await graph.ainvoke({"key": 3}))["value"] == {"id": 3}


async def test_a_key_whose_callers_left_before_sending_is_not_loaded() -> None:
    users = Users()
    loader = BatchLoader(users, BatchPolicy(max_delay=0.2))

    gone = asyncio.create_task(loader.load(1))
    kept = asyncio.create_task(loader.load(2))
    await asyncio.sleep(0.01)  # both joined the open window
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone

    assert await kept == {"id": 2}
    assert users.batches == [[2]]


async def test_a_duplicate_key_stays_while_one_of_its_callers_waits() -> None:
    users = Users()
    loader = BatchLoader(users, BatchPolicy(max_delay=0.2))

    first = asyncio.create_task(loader.load(1))  # the key's first caller leaves
    second = asyncio.create_task(loader.load(1))
    third = asyncio.create_task(loader.load(1))
    other = asyncio.create_task(loader.load(2))  # both of this key's callers leave
    again = asyncio.create_task(loader.load(2))
    await asyncio.sleep(0.01)  # all joined the open window
    for task in (first, third, other, again):
        task.cancel()
    await asyncio.gather(first, third, other, again, return_exceptions=True)

    assert await second == {"id": 1}
    assert users.batches == [[1]]


async def test_batches_in_flight_are_bounded_and_full_batches_wait_their_turn() -> None:
    users = Users(delay=0.01)
    users.gate = asyncio.Event()
    loader = BatchLoader(users, BatchPolicy(max_batch=4, max_delay=0.005, max_in_flight=2))
    graph = lookup_graph(loader)

    runs = [asyncio.create_task(graph.ainvoke({"key": i})) for i in range(40)]
    await asyncio.sleep(0.2)
    # Two batches run (held); the others fill up and wait for a slot, in order.
    assert len(users.batches) == 2
    assert users.running == 2
    users.gate.set()
    results = await asyncio.gather(*runs)

    assert [r["value"]["id"] for r in results] == list(range(40))
    assert users.peak == 2
    assert all(len(b) <= 4 for b in users.batches)
    assert sorted(k for b in users.batches for k in b) == list(range(40))


async def test_a_queued_batch_whose_callers_left_is_never_sent() -> None:
    users = Users(delay=0)
    users.gate = asyncio.Event()
    loader = BatchLoader(users, BatchPolicy(max_batch=1, max_delay=0, max_in_flight=1))

    first = asyncio.create_task(loader.load(1))  # sent, held at the gate
    second = asyncio.create_task(loader.load(2))  # a full batch, waiting for the slot
    third = asyncio.create_task(loader.load(3))  # another, behind it
    await asyncio.sleep(0.05)
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    users.gate.set()

    assert await asyncio.gather(first, second) == [{"id": 1}, {"id": 2}]
    assert users.batches == [[1], [2]]


def test_one_loader_serves_successive_event_loops() -> None:
    users = Users(delay=0)
    loader = BatchLoader(users, BatchPolicy(max_delay=0.01))
    graph = lookup_graph(loader)

    async def burst(offset: int) -> list[Any]:
        runs = (graph.ainvoke({"key": offset + i}) for i in range(5))
        return [r["value"]["id"] for r in await asyncio.gather(*runs)]

    assert asyncio.run(burst(0)) == [0, 1, 2, 3, 4]
    assert asyncio.run(burst(10)) == [10, 11, 12, 13, 14]
    assert sorted(map(sorted, users.batches)) == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]


def test_a_finished_event_loop_is_not_kept_alive_by_the_loader() -> None:
    users = Users(delay=0)
    loader = BatchLoader(users, BatchPolicy(max_delay=0.01))
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def lookup(key: int) -> Any:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        return await loader.load(key)

    assert asyncio.run(lookup(1)) == {"id": 1}
    gc.collect()
    assert loops[0]() is None  # the loop that finished is freed
    assert asyncio.run(lookup(2)) == {"id": 2}  # and a new loop gets a window of its own
    assert users.batches == [[1], [2]]


class CountingEmbeddings(Embeddings):
    """langchain-core's deterministic fake model, counting embed_documents calls."""

    def __init__(self) -> None:
        self.model = DeterministicFakeEmbedding(size=8)
        self.calls: list[list[str]] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        return self.model.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        return self.model.embed_query(text)


def floats(vectors: list[list[float]]) -> list[list[float]]:
    return [[float(x) for x in vector] for vector in vectors]


class Doc(TypedDict, total=False):
    text: Any
    embedding: Any


async def test_embed_node_embeds_concurrent_runs_in_batches() -> None:
    model = CountingEmbeddings()
    builder = StateGraph(Doc)
    builder.add_node("embed", EmbedNode(model, BatchPolicy(max_batch=16, max_delay=0.05)))
    builder.add_edge(START, "embed")
    graph = builder.compile()

    texts = [f"document {i % 30}" for i in range(60)]
    results = await asyncio.gather(*(graph.ainvoke({"text": t}) for t in texts))
    many = await graph.ainvoke({"text": ["document 1", "document 2"]})

    assert [r["embedding"] for r in results] == floats(model.model.embed_documents(texts))
    assert many["embedding"] == floats(model.model.embed_documents(["document 1", "document 2"]))
    assert all(len(call) <= 16 for call in model.calls)
    assert len(model.calls) < 20


async def test_embed_node_defaults_to_the_offline_deterministic_fake() -> None:
    builder = StateGraph(Doc)
    builder.add_node("embed", EmbedNode())
    builder.add_edge(START, "embed")
    graph = builder.compile()

    out = await graph.ainvoke({"text": "hello"})

    expected = DeterministicFakeEmbedding(size=32).embed_query("hello")
    assert out["embedding"] == floats([expected])[0]
    with pytest.raises(ValueError, match="EmbedNode takes either loader= or embeddings/policy"):
        EmbedNode(CountingEmbeddings(), loader=embedding_loader())


def test_example_runs() -> None:
    out = run_example("batching")
    assert "200 runs, 40 distinct users" in out
    assert "a per-key error reaches only its caller" in out
