"""Micro-batching: many concurrent single lookups become a few batched calls.

    async def fetch_users(ids: list[int]) -> list[User]:        # one request for many ids
        return await api.post_json("/users:batchGet", json={"ids": ids})

    users = BatchLoader(fetch_users, BatchPolicy(max_batch=64, max_delay=0.005))
    user = await users.load(42)              # from any node of any run on this loop
    builder.add_node(BatchLookupNode(users, input_key="user_id", output_key="user"))
    builder.add_node(EmbedNode())            # embeddings in batches (offline fake by default)

``load(key)`` joins the open batch; ``batch_fn(keys)`` is called once per batch and its
results are handed back key by key. A batch is sent when it holds ``max_batch`` keys or
when ``max_delay`` seconds have passed since its first key, whichever comes first, so a
lone caller waits at most ``max_delay``. Semantics:

- a key asked for twice in one batch window is loaded once; ``load_many`` returns results
  in the caller's own order;
- ``batch_fn`` returns a sequence aligned with ``keys`` or a mapping by key; an
  ``Exception`` instance in place of a value fails only that key's callers (a key missing
  from a mapping fails with ``KeyError``); ``batch_fn`` raising fails every caller of that
  batch, and the next batch tries again (failures are not remembered);
- cancelling one caller never cancels a batch others wait on: a key nobody waits for any
  more leaves the open batch, and a sent batch whose callers have all gone is cancelled;
- at most ``max_in_flight`` batches run at once: a burst never opens a request per batch
  to the dependency. While they all run, the open batch keeps filling up to ``max_batch``
  (batches grow under load) and full batches wait their turn in order. Every waiting key
  has a caller awaiting it, so what waits is bounded by the callers themselves: nothing
  is queued that nobody waits for (``load`` is not fire-and-forget).

Compared with aiodataloader (one batch per event-loop tick, no delay window, every batch
sent at once), callers that arrive a few ticks apart, as independent graph runs do, still
share a batch, and a burst cannot open unbounded requests to the dependency. There is no
cross-window cache: put ``cache.AsyncCache`` in front when values may be reused.

When to use LangGraph's native tools instead: when the items are already together in one
state (a list to process), batch them in one node or fan out with ``Send`` +
``max_concurrency``, and give the node a ``RetryPolicy`` for transient failures; nothing
needs to be collected across runs. Use this recipe when many separate runs or branches
each need one item from a dependency that is much cheaper per item in batches (a bulk
lookup endpoint, a database ``WHERE id = ANY($1)``, an embeddings model).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.embeddings import Embeddings

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_int, check_number

from .resources import PerLoop

__all__ = ["BatchLoader", "BatchLookupNode", "BatchPolicy", "EmbedNode", "embedding_loader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPolicy:
    """When a batch is sent and how many may run at once.

        BatchPolicy(max_batch=64, max_delay=0.005)    # up to 64 keys, at most 5 ms late
        BatchPolicy(max_batch=100, max_delay=0)       # whatever arrived in this loop tick

    Validated once, here: a bad value fails where the loader is configured.
    """

    max_batch: int = 64
    """Most keys in one ``batch_fn`` call; >= 1. A full batch is sent at once."""
    max_delay: float = 0.005
    """Seconds a batch waits for more keys after its first one; >= 0 and finite."""
    max_in_flight: int = 8
    """Most batches running at once (per event loop); >= 1."""

    def __post_init__(self) -> None:
        check_int("BatchPolicy", "max_batch", self.max_batch, min=1)
        check_number("BatchPolicy", "max_delay", self.max_delay, ge=0, unit="seconds")
        check_int("BatchPolicy", "max_in_flight", self.max_in_flight, min=1)


class _Batch:
    """One batch: each key with the future of its first caller (and of any later ones)."""

    __slots__ = ("callers", "due", "futures", "more", "opened", "task", "timer")

    def __init__(self, opened: float) -> None:
        # Most keys have one caller: its future alone, no list per key.
        self.futures: dict[Hashable, asyncio.Future[Any]] = {}
        self.more: dict[Hashable, list[asyncio.Future[Any]]] | None = None  # duplicates
        self.callers = 0  # futures not yet resolved nor abandoned
        self.opened = opened
        self.due = False  # max_delay has passed; sent as soon as a slot is free
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # set once sent

    def pending(self) -> Iterator[asyncio.Future[Any]]:
        """Every caller's future, answered or not."""
        yield from self.futures.values()
        if self.more:
            for extra in self.more.values():
                yield from extra

    def remove(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        """Take ``future`` out of an unsent batch; its key goes if nobody else wants it."""
        more = self.more.get(key) if self.more else None
        if self.futures.get(key) is future:
            if more:
                self.futures[key] = more.pop(0)
            else:
                del self.futures[key]
        elif more and future in more:
            more.remove(future)
        if more is not None and not more:
            del self.more[key]  # type: ignore[union-attr]


class _Window:
    """A loader's state on one event loop: the open batch, full batches waiting for a
    slot, batches running. Batches never mix callers of different loops."""

    __slots__ = ("loop", "open", "ready", "running")

    def __init__(self) -> None:
        # Weak: the loader's shortcut to its latest window must not keep a finished loop.
        self.loop = weakref.ref(asyncio.get_running_loop())
        self.open: _Batch | None = None
        self.ready: deque[_Batch] = deque()  # full, waiting for one of max_in_flight
        self.running: set[_Batch] = set()


_MISSING: Any = object()


class BatchLoader(Generic[K, V]):
    """Collects concurrent ``load(key)`` calls into ``batch_fn(keys)`` calls.

        loader = BatchLoader(fetch_many, BatchPolicy(max_batch=64, max_delay=0.005))
        one = await loader.load("a")
        some = await loader.load_many(["b", "a", "c"])     # in this order; "a" loaded once

    One loader serves every node and run on a loop (and keeps a separate window per loop
    when several loops use it; a loop's window is dropped when that loop shuts down).
    ``batch_fn`` runs in a task of its own, in the context of the caller that opened the
    batch. Per ``load`` the loader allocates one future (and the ``load`` coroutine), the
    same work as aiodataloader's one future per load.
    """

    __slots__ = (
        "__weakref__",
        "_delay",
        "_max_batch",
        "_recent",
        "_windows",
        "batch_fn",
        "name",
        "policy",
    )

    def __init__(
        self,
        batch_fn: Callable[
            [list[K]], Awaitable[Sequence[V | Exception] | Mapping[K, V | Exception]]
        ],
        policy: BatchPolicy | None = None,
        *,
        name: str = "batch",
    ) -> None:
        if not callable(batch_fn):
            raise TypeError(
                f"BatchLoader batch_fn must be an async callable taking a list of keys, got {batch_fn!r}"
            )
        policy = BatchPolicy() if policy is None else policy
        if not isinstance(policy, BatchPolicy):
            raise TypeError(f"BatchLoader policy must be a BatchPolicy, got {policy!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"BatchLoader name must be a non-empty string, got {name!r}")
        self.batch_fn = batch_fn
        self.policy = policy
        self.name = name
        """The name metrics use."""
        # One window per loop, forgotten when the loop shuts down: a WeakKeyDictionary keyed
        # by loop would keep a loop alive through a window whose batches reference it.
        self._windows: PerLoop[_Window] = PerLoop()
        self._max_batch = policy.max_batch
        # Event-loop timers fire up to a millisecond late (epoll's resolution): aim that
        # much early so that a lone caller's wait stays within max_delay.
        self._delay = max(0.0, policy.max_delay - 0.001)
        # The latest window: skips the registry on the common path (its loop held weakly).
        self._recent: _Window | None = None

    def __repr__(self) -> str:
        p = self.policy
        return (
            f"BatchLoader(name={self.name!r}, max_batch={p.max_batch},"
            f" max_delay={p.max_delay}, max_in_flight={p.max_in_flight})"
        )

    def _window(self, loop: asyncio.AbstractEventLoop) -> _Window:
        """This loop's window (``load`` checks the latest one inline first)."""
        window = self._recent
        if window is None or window.loop() is not loop:
            window = self._recent = self._windows.get(_Window)
        return window

    async def load(self, key: K) -> V:
        """The value ``batch_fn`` gives for ``key``, loaded in a batch with other callers'."""
        loop = asyncio.get_running_loop()
        window = self._recent
        if window is None or window.loop() is not loop:
            window = self._window(loop)
        batch = window.open
        if batch is None:
            batch = self._open(window, loop)
        future = loop.create_future()
        futures = batch.futures
        if futures.setdefault(key, future) is not future:
            self._join_again(batch, key, future)
        batch.callers += 1
        if len(futures) >= self._max_batch:
            self._seal(window, batch, "full")
        try:
            value: V = await future
        except asyncio.CancelledError:
            await self._leave(window, batch, key, future)
            raise
        return value

    async def load_many(self, keys: Iterable[K]) -> list[V]:
        """``load`` for each key, results in the order given; the first failing key's error
        (in that order) is raised once every key has an answer."""
        loop = asyncio.get_running_loop()
        window = self._window(loop)
        joined: list[tuple[_Batch, K, asyncio.Future[Any]]] = []
        try:
            for key in keys:
                batch = window.open
                if batch is None:
                    batch = self._open(window, loop)
                future = loop.create_future()
                if batch.futures.setdefault(key, future) is not future:
                    self._join_again(batch, key, future)
                batch.callers += 1
                joined.append((batch, key, future))
                if len(batch.futures) >= self._max_batch:
                    self._seal(window, batch, "full")
            results: list[V] = []
            failure: BaseException | None = None
            for _, _, future in joined:
                try:
                    results.append(await future)
                except Exception as error:
                    failure = failure or error
            if failure is not None:
                raise failure
            return results
        except asyncio.CancelledError:
            for batch, key, future in joined:
                await self._leave(window, batch, key, future)
            raise

    # -- joining and leaving a batch (no await between a check and its update) --------

    def _open(self, window: _Window, loop: asyncio.AbstractEventLoop) -> _Batch:
        batch = window.open = _Batch(loop.time())
        batch.timer = loop.call_at(batch.opened + self._delay, self._on_due, window, batch)
        return batch

    def _join_again(self, batch: _Batch, key: Hashable, future: asyncio.Future[Any]) -> None:
        """A key already in the batch: this caller waits for the same answer."""
        if batch.more is None:
            batch.more = {}
        batch.more.setdefault(key, []).append(future)
        record("batch_joins", name=self.name)  # a duplicate key: loaded once

    async def _leave(
        self, window: _Window, batch: _Batch, key: K, future: asyncio.Future[Any]
    ) -> None:
        """A caller gave up (cancelled): drop its key if nobody else wants it, or cancel
        its batch if nobody else waits for it."""
        if future.done() and not future.cancelled():
            future.exception()  # answered already; marked as read, since nobody will
            return
        future.cancel()
        batch.callers -= 1
        if batch.task is None:  # not sent yet: the key goes if nobody else wants it
            batch.remove(key, future)
            if not batch.futures:
                if window.open is batch:
                    window.open = None
                if batch.timer is not None:
                    batch.timer.cancel()
                    batch.timer = None
            return  # an empty batch waiting in `ready` is skipped when its turn comes
        task = batch.task
        if batch.callers == 0 and not task.done():
            # The last caller is leaving: stop the call and wait for it, so nothing runs on
            # unobserved after the caller has gone.
            task.cancel()
            await asyncio.wait([task])

    # -- sending ------------------------------------------------------------------------

    def _on_due(self, window: _Window, batch: _Batch) -> None:
        batch.timer = None
        batch.due = True
        if window.open is batch and len(window.running) < self.policy.max_in_flight:
            window.open = None
            self._start(window, batch, "delay")
        # Otherwise every slot is busy: it keeps filling and goes when one frees.

    def _seal(self, window: _Window, batch: _Batch, trigger: str) -> None:
        """``batch`` takes no more keys: start it, or queue it behind the running ones."""
        window.open = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        if len(window.running) < self.policy.max_in_flight and not window.ready:
            self._start(window, batch, trigger)
        else:
            window.ready.append(batch)

    def _start(self, window: _Window, batch: _Batch, trigger: str) -> None:
        window.running.add(batch)
        loop = asyncio.get_running_loop()
        record("batch_in_flight", 1, name=self.name)
        record("batch_calls", name=self.name, trigger=trigger)
        record("batch_keys", len(batch.futures), name=self.name)
        record("batch_fill_seconds", loop.time() - batch.opened, name=self.name)
        batch.task = loop.create_task(self._run(window, batch))

    async def _run(self, window: _Window, batch: _Batch) -> None:
        keys: list[Any] = list(batch.futures)
        try:
            try:
                results = await self.batch_fn(keys)
            except asyncio.CancelledError:
                for future in batch.pending():
                    future.cancel()
                raise
            except Exception as error:
                record("batch_errors", name=self.name)
                self._answer_all(batch, error)
                return
            try:
                self._answer(batch, keys, results)
            except Exception as error:
                self._answer_all(batch, error)
        finally:
            self._finished(window, batch)

    def _answer(self, batch: _Batch, keys: list[Any], results: Any) -> None:
        """Hand each caller its key's answer, in one pass over the batch's futures."""
        if isinstance(results, Mapping):
            answers: Iterable[Any] = [results.get(key, _MISSING) for key in keys]
        elif not isinstance(results, Sequence) or isinstance(results, str | bytes):
            raise TypeError(
                f"BatchLoader {self.name!r}: batch_fn must return a sequence aligned with"
                f" its keys or a mapping by key, got {type(results).__name__}"
            )
        elif len(results) != len(keys):
            raise ValueError(
                f"BatchLoader {self.name!r}: batch_fn returned {len(results)} results"
                f" for {len(keys)} keys"
            )
        else:
            answers = results
        for key, future, answer in zip(keys, batch.futures.values(), answers, strict=True):
            if future.done():  # its caller left
                continue
            if answer is _MISSING:
                answer = self._missing(key)
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        if batch.more:  # keys asked for more than once: their other callers
            by_key = dict(zip(keys, answers, strict=True))
            for key, extra in batch.more.items():
                answer = by_key[key]
                if answer is _MISSING:
                    answer = self._missing(key)
                for future in extra:
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)

    def _missing(self, key: Any) -> KeyError:
        return KeyError(f"BatchLoader {self.name!r}: batch_fn returned no result for {key!r}")

    @staticmethod
    def _answer_all(batch: _Batch, error: Exception) -> None:
        for future in batch.pending():
            if not future.done():
                future.set_exception(error)

    def _finished(self, window: _Window, batch: _Batch) -> None:
        window.running.discard(batch)
        record("batch_in_flight", -1, name=self.name)
        while window.ready and len(window.running) < self.policy.max_in_flight:
            waiting = window.ready.popleft()
            if waiting.futures:  # its callers may all have left meanwhile
                self._start(window, waiting, "full")
        collecting = window.open
        if (
            collecting is not None
            and collecting.due
            and len(window.running) < self.policy.max_in_flight
        ):
            window.open = None
            self._start(window, collecting, "delay")


class BatchLookupNode(AsyncBaseNode):
    """A node that loads ``state[input_key]`` through a shared ``BatchLoader``.

        users = BatchLoader(fetch_users, BatchPolicy(max_batch=100))
        builder.add_node("user", BatchLookupNode(users, input_key="user_id", output_key="user"))

    ``state[input_key]`` is one key, or a list of keys (results in that order). Concurrent
    runs of the graph (and other nodes using the same loader) share batches.
    """

    def __init__(
        self,
        loader: BatchLoader[Any, Any],
        *,
        input_key: str = "key",
        output_key: str = "value",
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(loader, BatchLoader):
            raise TypeError(f"BatchLookupNode loader must be a BatchLoader, got {loader!r}")
        for field, value in (("input_key", input_key), ("output_key", output_key)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"BatchLookupNode {field} must be a non-empty str, got {value!r}")
        super().__init__(name=name, verbose=verbose)
        self.loader = loader
        self.input_key = input_key
        self.output_key = output_key

    async def execute(self, state: Any) -> dict[str, Any]:
        try:  # a TypedDict state, or a dataclass / pydantic one
            wanted = (
                state[self.input_key]
                if isinstance(state, Mapping)
                else getattr(state, self.input_key)
            )
        except (KeyError, AttributeError):
            raise KeyError(
                f"{self.name} looks up state[{self.input_key!r}], which is missing"
            ) from None
        if isinstance(wanted, list):
            return {self.output_key: await self.loader.load_many(wanted)}
        return {self.output_key: await self.loader.load(wanted)}


def embedding_loader(
    embeddings: Embeddings | None = None,
    policy: BatchPolicy | None = None,
    *,
    name: str = "embeddings",
) -> BatchLoader[str, list[float]]:
    """A loader embedding texts with ``embeddings.aembed_documents`` in batches.

        vectors = embedding_loader(OpenAIEmbeddings(), BatchPolicy(max_batch=256))
        vector = await vectors.load("a sentence")

    ``None`` uses langchain-core's ``DeterministicFakeEmbedding(size=32)``: offline and
    repeatable, for examples and tests (it needs numpy).
    """
    if embeddings is None:
        try:
            import numpy  # noqa: F401  # the fake model fails late without it: fail here
        except ModuleNotFoundError as missing:
            raise ModuleNotFoundError(
                "embedding_loader's default embeddings (langchain-core's DeterministicFakeEmbedding)"
                f" need numpy ({missing}); pip install numpy, or pass embeddings="
            ) from missing
        from langchain_core.embeddings import DeterministicFakeEmbedding

        embeddings = DeterministicFakeEmbedding(size=32)
    if not isinstance(embeddings, Embeddings):
        raise TypeError(
            f"embedding_loader embeddings must be a langchain-core Embeddings, got {embeddings!r}"
        )
    model = embeddings

    async def embed(texts: list[str]) -> list[list[float]]:
        return [list(map(float, vector)) for vector in await model.aembed_documents(texts)]

    return BatchLoader(embed, policy, name=name)


class EmbedNode(AsyncBaseNode):
    """A node embedding ``state[input_key]`` (a text or a list of texts) in shared batches.

        builder.add_node("embed", EmbedNode(OpenAIEmbeddings(), BatchPolicy(max_batch=256)))
        # {"text": "..."} -> {"embedding": [...]};  {"text": ["a", "b"]} -> {"embedding": [[...], [...]]}

    Every run of the graph on a loop shares one ``embed_documents`` call per batch, and a
    text asked for twice in one window is embedded once. Without ``embeddings`` it uses
    langchain-core's deterministic fake model (offline). Pass ``loader=`` to share one
    ``embedding_loader`` between several nodes.
    """

    def __init__(
        self,
        embeddings: Embeddings | None = None,
        policy: BatchPolicy | None = None,
        *,
        loader: BatchLoader[str, list[float]] | None = None,
        input_key: str = "text",
        output_key: str = "embedding",
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        if loader is None:
            loader = embedding_loader(embeddings, policy)
        elif embeddings is not None or policy is not None:
            raise ValueError("EmbedNode takes either loader= or embeddings/policy, got both")
        self.lookup = BatchLookupNode(loader, input_key=input_key, output_key=output_key)
        super().__init__(name=name, verbose=verbose)
        self.loader = loader

    async def execute(self, state: Any) -> dict[str, Any]:
        return await self.lookup.execute(state)


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import START, StateGraph

    class State(TypedDict, total=False):
        user_id: int
        user: dict[str, Any]
        text: str
        embedding: list[float]

    requests: list[list[int]] = []

    async def fetch_users(ids: list[int]) -> dict[int, dict[str, Any] | Exception]:
        requests.append(ids)
        await asyncio.sleep(0.01)  # one round trip for the whole batch
        return {i: {"id": i, "name": f"user {i}"} if i >= 0 else LookupError(i) for i in ids}

    async def main() -> None:
        users = BatchLoader(fetch_users, BatchPolicy(max_batch=32, max_delay=0.005))
        builder = StateGraph(State)
        builder.add_node("user", BatchLookupNode(users, input_key="user_id", output_key="user"))
        builder.add_node("embed", EmbedNode(policy=BatchPolicy(max_batch=100)))
        builder.add_edge(START, "user")
        builder.add_edge("user", "embed")
        graph = builder.compile()
        started = time.perf_counter()
        runs = [graph.ainvoke({"user_id": i % 40, "text": f"bio {i % 40}"}) for i in range(200)]
        results = await asyncio.gather(*runs)
        elapsed = time.perf_counter() - started
        print(
            f"200 runs, 40 distinct users: {len(requests)} batch calls {[len(r) for r in requests]}"
        )
        print(
            results[7]["user"],
            "embedding[:3] =",
            [round(x, 3) for x in results[7]["embedding"][:3]],
        )
        try:
            await users.load(-1)
        except LookupError as error:
            print(f"a per-key error reaches only its caller: LookupError({error})")
        print(f"{elapsed:.2f}s")

    asyncio.run(main())
