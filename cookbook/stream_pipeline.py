"""Backpressured streaming: a producer and a consumer joined by a bounded queue, live on the custom stream.

    async def rows(state):                      # the producer: any async generator
        async for row in source(state["table"]):
            yield row

    async def score(row):                       # the consumer: awaited once per item
        return {"id": row.id, "score": await model(row)}  # streamed; None streams nothing

    builder.add_node(StreamPipelineNode(rows, score, PipelinePolicy(queue_size=64)))
    async for chunk in graph.astream(inputs, stream_mode="custom"):
        ...  # each consumer result as it is made, and {"node", "processed"} progress events

The producer runs in its own task and may get at most ``queue_size`` items ahead of the
consumer: when the consumer is slow, ``queue.put`` waits, so the producer (and whatever it
reads from) slows down instead of memory growing. Items are processed as they arrive, and
memory stays flat however long the stream is: nothing is collected, the node returns only
the number of items processed (under ``PipelinePolicy.count_key``).

Both stages run in an ``asyncio.TaskGroup``: an error in either cancels the other, closes the
producer's generator, and is raised once, as itself (not wrapped in an ``ExceptionGroup``).
Cancelling the run cancels both stages.

When to use LangGraph's native tools instead: to process items independently and in parallel,
fan out with ``Send`` and cap it with ``max_concurrency``; LangGraph checkpoints each item.
That suits hundreds of items, not a million-row stream whose items need no checkpoint each,
which is what this recipe is for. Timeouts and retries of the whole node stay LangGraph's
(``add_node(..., timeout=TimeoutPolicy(idle_timeout=...), retry_policy=RetryPolicy())``): every
streamed result counts as progress for an idle timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from act_operator_lib.base_node import AsyncBaseNode
from act_operator_lib.metrics import record
from act_operator_lib.validate import check_int, check_str

__all__ = ["PipelinePolicy", "StreamPipelineNode", "run_pipeline"]

Item = TypeVar("Item")
Result = TypeVar("Result")

_DONE: Any = object()  # the producer's last item: the stream ended normally


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelinePolicy:
    """How far the producer may run ahead, how often to report progress, where the count goes."""

    queue_size: int = 64
    """Items the producer may have made that the consumer has not taken yet (>= 1)."""
    progress_every: int = 10_000
    """Emit ``{"node": graph node name, "processed": n}`` every this many items and at the end;
    0: never."""
    count_key: str | None = "processed"
    """State key the node writes the number of processed items to; None: return no update."""

    def __post_init__(self) -> None:
        check_int("PipelinePolicy", "queue_size", self.queue_size, min=1)
        check_int(
            "PipelinePolicy",
            "progress_every",
            self.progress_every,
            min=0,
            note="0: no progress events",
        )
        check_str("PipelinePolicy", "count_key", self.count_key, allow_none=True)


async def run_pipeline(
    source: AsyncIterable[Item],
    consume: Callable[[Item], Awaitable[Result | None]],
    *,
    queue_size: int = 64,
    emit: Callable[[Any], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 0,
) -> int:
    """Feed ``source`` through a bounded queue to ``consume``; return how many items it took.

        count = await run_pipeline(read_rows(), score, queue_size=64, emit=print)

    Each non-None result of ``consume`` goes to ``emit``; ``on_progress(n)`` is called every
    ``progress_every`` items and once at the end. The first error of either stage is raised.
    """
    if type(queue_size) is not int or queue_size < 1:
        # asyncio.Queue(0) is unbounded: that would silently remove the backpressure.
        raise ValueError(f"run_pipeline queue_size must be an int >= 1, got {queue_size!r}")
    if type(progress_every) is not int or progress_every < 0:
        raise ValueError(f"run_pipeline progress_every must be an int >= 0, got {progress_every!r}")
    queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
    produced = 0

    async def produce() -> None:
        nonlocal produced
        iterator = aiter(source)
        try:
            async for item in iterator:
                produced += 1
                try:
                    queue.put_nowait(item)  # the common case, without a coroutine per item
                except asyncio.QueueFull:
                    await queue.put(item)  # backpressure: wait for the consumer
        except asyncio.CancelledError:
            _raise_if_cancelled_from_inside("producer", produced)
            raise
        finally:
            # A cancelled producer closes its generator (and what it reads from) now.
            if (aclose := getattr(iterator, "aclose", None)) is not None:
                await aclose()
        await queue.put(_DONE)

    async def consume_all() -> int:
        processed = 0
        get_nowait, get = queue.get_nowait, queue.get
        while True:
            try:
                item = get_nowait()
            except asyncio.QueueEmpty:
                item = await get()
            if item is _DONE:
                break
            try:
                result = await consume(item)
            except asyncio.CancelledError:
                _raise_if_cancelled_from_inside("consumer", processed + 1)
                raise
            processed += 1
            if result is not None and emit is not None:
                emit(result)
            if progress_every and processed % progress_every == 0 and on_progress is not None:
                on_progress(processed)
        if on_progress is not None and (not progress_every or processed % progress_every):
            on_progress(processed)
        return processed

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(produce())
            consumer = group.create_task(consume_all())
    except BaseExceptionGroup as errors:
        # The first failure cancelled the other stage; raise it alone, as the caller wrote it.
        if len(errors.exceptions) == 1:
            raise errors.exceptions[0] from None
        raise
    return consumer.result()


def _raise_if_cancelled_from_inside(stage: str, item_number: int) -> None:
    """Turn a CancelledError nobody asked for into an error the TaskGroup reports.

    A stage awaiting a future that someone else cancelled gets CancelledError although its
    task is not being cancelled; a TaskGroup ignores cancelled children, so the other stage
    would wait forever. ``cancelling()`` tells a real cancellation (let it through) apart.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise RuntimeError(
            f"the pipeline's {stage} got CancelledError at item {item_number} without being"
            " cancelled (an awaited future or task was cancelled by someone else)"
        )


def _graph_node_name(config: RunnableConfig | None) -> str | None:
    """The name the graph gave the running node (``add_node("rows", ...)``), as metrics use."""
    if not config:
        return None
    name = config.get("metadata", {}).get("langgraph_node")
    return name if isinstance(name, str) else None


class StreamPipelineNode(AsyncBaseNode, Generic[Item, Result]):
    """Run ``produce(state)`` into ``consume`` with backpressure, streaming results and progress.

    builder.add_node(StreamPipelineNode(rows, score))  # state update: {"processed": n}

    Progress events and the ``stream_pipeline_items`` metric are named after the graph's node
    (``add_node("rows", StreamPipelineNode(...))`` reports ``"rows"``, like the per-node
    metrics and the blocking detector); earlier versions used the node's own ``name``, which
    is still used when the node is called directly, outside a graph.
    """

    def __init__(
        self,
        produce: Callable[[Any], AsyncIterable[Item]],
        consume: Callable[[Item], Awaitable[Result | None]],
        policy: PipelinePolicy | None = None,
        *,
        name: str | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(name=name, verbose=verbose)
        for label, stage in (("produce", produce), ("consume", consume)):
            if not callable(stage):
                raise TypeError(
                    f"{type(self).__name__} {label} must be callable, got {type(stage).__name__}"
                )
        if policy is not None and not isinstance(policy, PipelinePolicy):
            raise TypeError(
                f"{type(self).__name__} policy must be a PipelinePolicy, got {type(policy).__name__}"
            )
        self.produce = produce
        self.consume = consume
        self.policy = policy or PipelinePolicy()

    async def execute(
        self, state: Any, config: RunnableConfig, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        policy = self.policy
        source = self.produce(state)
        if not isinstance(source, AsyncIterable):
            raise TypeError(
                f"{self.name}: produce(state) must return an async iterable (an async generator),"
                f" got {type(source).__name__}"
            )
        write = runtime.stream_writer if runtime is not None else None
        name = _graph_node_name(config) or self.name

        def progress(processed: int) -> None:
            if write is not None:
                write({"node": name, "processed": processed})
            self.log("progress", processed=processed)

        processed = await run_pipeline(
            source,
            self.consume,
            queue_size=policy.queue_size,
            emit=write,
            on_progress=progress if policy.progress_every else None,
            progress_every=policy.progress_every,
        )
        record("stream_pipeline_items", float(processed), node=name)
        return None if policy.count_key is None else {policy.count_key: processed}


if __name__ == "__main__":
    from typing import TypedDict

    from langgraph.graph import START, StateGraph

    class State(TypedDict, total=False):
        upto: int
        processed: int

    async def numbers(state: State) -> AsyncIterator[int]:
        for n in range(state["upto"]):
            yield n

    async def square_every_100k(n: int) -> dict[str, int] | None:
        return {"n": n, "square": n * n} if n % 100_000 == 0 else None

    async def main() -> None:
        builder = StateGraph(State)
        builder.add_node(
            StreamPipelineNode(numbers, square_every_100k, PipelinePolicy(progress_every=250_000))
        )
        builder.add_edge(START, "StreamPipelineNode")
        graph = builder.compile()
        async for mode, chunk in graph.astream(
            {"upto": 1_000_000}, stream_mode=["custom", "values"]
        ):
            print(mode, chunk)

    asyncio.run(main())
