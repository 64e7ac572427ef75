"""What enabling metrics costs a 20-node chain of class nodes, side by side in one run.

    python benchmarks/bench_metrics.py

Prints:
    metrics_overhead_ratio=        20-node BaseNode chain, invoke, metrics on / off (target <= 1.05)
    async_metrics_overhead_ratio=  20-node AsyncBaseNode chain, ainvoke, on / off (target <= 1.05)
    metrics_call_overhead_us=      node(state) with metrics on minus off, per call
    off_call_is_plain=             1 when, metrics off, node classes run base_node's own __call__

Rounds alternate between on and off (enable()/disable() swap each class's __call__),
timed in process CPU time; the median of the on/off ratios of neighbouring rounds is
printed, so a busy machine slows both sides alike. The chain is bench_nodes.py's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import timeit
from collections.abc import Callable

from bench_nodes import NODES, AsyncStep, Step, chain, median_ratio

from act_operator_lib import metrics
from act_operator_lib._internal import node_classes

INVOKES_PER_ROUND = 10


def with_metrics(run_round: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        metrics.enable()
        try:
            return run_round()
        finally:
            metrics.disable()

    return run


def metrics_overhead_ratio() -> float:
    graph = chain(Step)

    def run_round() -> float:
        start = time.process_time()
        for _ in range(INVOKES_PER_ROUND):
            assert graph.invoke({"n": 0})["n"] == NODES
        return time.process_time() - start

    run_round()  # warm up
    return median_ratio(with_metrics(run_round), run_round)


def async_metrics_overhead_ratio() -> float:
    graph = chain(AsyncStep)

    async def run() -> float:
        start = time.process_time()
        for _ in range(INVOKES_PER_ROUND):
            assert (await graph.ainvoke({"n": 0}))["n"] == NODES
        return time.process_time() - start

    with asyncio.Runner() as runner:
        runner.run(run())  # warm up
        return median_ratio(with_metrics(lambda: runner.run(run())), lambda: runner.run(run()))


def metrics_call_overhead_us(number: int = 50_000) -> float:
    node, state = Step(), {"n": 0}
    on_times, off_times = [], []
    for _ in range(9):
        metrics.enable()
        on_times.append(timeit.timeit(lambda: node(state), number=number) / number * 1e6)
        metrics.disable()
        off_times.append(timeit.timeit(lambda: node(state), number=number) / number * 1e6)
    return statistics.median(on_times) - statistics.median(off_times)


def main() -> None:
    print(f"metrics_overhead_ratio={metrics_overhead_ratio():.3f}", flush=True)
    print(f"async_metrics_overhead_ratio={async_metrics_overhead_ratio():.3f}", flush=True)
    print(f"metrics_call_overhead_us={metrics_call_overhead_us():.3f}", flush=True)
    calls = metrics.snapshot().nodes["n0"].calls
    assert calls > 0, "metrics recorded nothing while enabled"
    plain = Step.__dict__["__call__"] is node_classes.generated_call(Step)
    print(f"off_call_is_plain={int(plain)}", flush=True)


if __name__ == "__main__":
    main()
