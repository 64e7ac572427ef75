"""Metrics for nodes and cookbook primitives: off by default, free when off.

    from act_operator_lib import metrics

    with metrics.collecting():                  # or metrics.enable() / metrics.disable()
        graph.invoke({"n": 0})
    print(metrics.format_table(metrics.snapshot()))
    metrics.snapshot().nodes["fetch"].calls     # plain data, for tests
    metrics.enabled()                           # whether they are being recorded
    metrics.prometheus_registry()               # a dedicated prometheus-client registry

Every node built on ``BaseNode`` / ``AsyncBaseNode`` is counted by its graph node name:
calls, errors by exception type, in-flight calls and a latency histogram (p50/p95/p99
over the most recent calls). Cookbook primitives add their own through ``record``
(retries, timeouts, circuit state changes, rate-limiter waits, pool sizes, cache hits...).

Every metric is declared once, in ``METRICS``: its name, kind, unit, labels and
description (``Metric``). ``record`` takes only declared names, with exactly the declared
labels, and exporters read the same table. Two labels recur with one meaning each:
``node`` is the graph's name for the node it happened in (``current_node()``), ``name``
the name the user gave the primitive (a limiter, breaker, pool, client, cache, batcher or
``retry_call``), never a recipe's name.

When metrics are off nothing is measured: node classes keep the ``__call__`` that
``base_node`` generated and ``record`` returns after one flag check. ``enable()`` adds an
instrumenting wrapper around each node class's generated ``__call__`` (so do classes
defined while enabled; see ``_internal/node_classes``) and ``disable()`` removes it.

API changes: ``enabled`` is a function (it was a module attribute); a metric's kind comes
from its declaration (it was guessed from its name's suffix); the recipe metrics recorded
as ``timeouts`` with ``name="fanout"`` / ``"gather_by_deadline"`` / a retry's name are
``fanout_timeouts`` / ``gather_by_deadline_timeouts`` (labelled ``node``) and
``retry_timeouts`` (labelled ``name``); ``hedge_started``, ``llm_stream_tokens``,
``pg_stream_rows`` and ``stream_pipeline_items`` are labelled ``node``.

Export goes through prometheus-client (the ``metrics`` extra), into a registry of its
own rather than the process-wide default, so embedding applications choose whether to
expose it (``prometheus_client.start_http_server(port, registry=prometheus_registry())``).
LangGraph's own tracing (LangSmith callbacks) records runs one by one; use it to debug
a run, and these aggregates to watch a service.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar, Token
from time import perf_counter
from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.errors import GraphBubbleUp

from act_operator_lib._internal import node_classes
from act_operator_lib._internal.metric_types import (
    LATENCY_BUCKETS,
    METRICS,
    RECENT,
    Kind,
    Latency,
    Metric,
    NodeMetrics,
    Series,
    Snapshot,
    declared,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from prometheus_client import CollectorRegistry

__all__ = [
    "LATENCY_BUCKETS",
    "METRICS",
    "RECENT",
    "Kind",
    "Latency",
    "Metric",
    "NodeMetrics",
    "Series",
    "Sink",
    "Snapshot",
    "add_sink",
    "collecting",
    "current_node",
    "disable",
    "enable",
    "enabled",
    "export_otel",
    "format_table",
    "prometheus_registry",
    "record",
    "remove_sink",
    "reset",
    "snapshot",
]

_enabled = False
# The wrapper key metrics install around node classes' generated __call__.
_WRAPPER = "metrics"

Sink = Callable[[Metric, float, Mapping[str, str], Mapping[str, str | float] | None], None]
"""Receives every value ``record`` accepts (its declaration, the value, the labels, the
details or ``None``) and, while metrics are enabled, the node classes' own ``node_*``
values (their declarations say ``recorded=False``)."""

# What record() also feeds (tracing's span events, the OpenTelemetry instruments), and the
# one flag record() tests: true while metrics are enabled or any sink is registered.
_sinks: tuple[Sink, ...] = ()
_active = False


def enabled() -> bool:
    """Whether metrics are being recorded (``enable()`` / ``collecting()``)."""
    return _enabled


def record(
    metric: str,
    value: float = 1.0,
    details: Mapping[str, str | float] | None = None,
    **labels: str,
) -> None:
    """Add ``value`` to the declared ``metric`` with ``labels``; a no-op unless enabled.

        record("retry_attempts", name="fetch")                  # a counter: +1
        record("rate_limiter_wait_seconds", 0.25, name="api")   # an observation
        record("pool_size", -1, name="pg")                      # a gauge: a signed delta

    ``metric`` must be declared in ``METRICS`` (its kind comes from there) and ``labels``
    must be exactly its declared labels; anything else raises ``ValueError`` when metrics
    are enabled. While they are off nothing is checked, so the call stays one flag test;
    ``tests/observability/test_metric_declarations.py`` checks every ``record`` call in the
    library and the cookbook against the declarations instead.

    ``details``: values too many-valued to be labels (an attempt number, a delay), among the
    metric's declared ``details``; they reach the span event ``tracing`` adds for the record,
    never a series. API change: ``record`` also feeds registered sinks (``add_sink``), so it
    runs while tracing is enabled too; the check stays one flag test when both are off.
    """
    if not _active:
        return
    _record(metric, value, labels, details)


def current_node(default: str = "") -> str:
    """The graph's name for the node the running LangGraph task runs, else ``default``.

        record("fanout_timeouts", node=current_node())

    Read from the task's config (its ``langgraph_node`` metadata), which LangGraph hands
    to everything the node runs, tasks it starts included: the value of the ``node`` label.
    """
    config = var_child_runnable_config.get()
    if config is None:
        return default
    name = config.get("metadata", {}).get("langgraph_node")
    return name if isinstance(name, str) else default


# -- per-node instrumentation -----------------------------------------------------------


class _NodeStats:
    """What one graph node has done since the last reset; updated under its lock
    because sync nodes run in executor threads."""

    __slots__ = ("buckets", "calls", "errors", "in_flight", "lock", "name", "recent", "total")

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.in_flight = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.lock = threading.Lock()

    def finished(self, seconds: float, error: BaseException | None = None) -> None:
        with self.lock:
            self.in_flight -= 1
            self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.total += seconds
            self.recent.append(seconds)
            # Interrupts and Command(graph=PARENT) travel as exceptions; they are not errors.
            if error is not None and not isinstance(error, GraphBubbleUp):
                kind = type(error).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
            else:
                kind = ""
        if _sinks:
            node = {"node": self.name}
            for sink in _sinks:
                sink(_NODE_IN_FLIGHT, -1.0, node, None)
                sink(_NODE_LATENCY, seconds, node, None)
                if kind:
                    sink(_NODE_ERRORS, 1.0, {"node": self.name, "error": kind}, None)


_nodes: dict[str, _NodeStats] = {}
_NODE_CALLS, _NODE_ERRORS, _NODE_IN_FLIGHT, _NODE_LATENCY = (
    METRICS[name]
    for name in ("node_calls", "node_errors", "node_in_flight", "node_latency_seconds")
)
_lock = threading.Lock()


# The config of the LangGraph task whose node call is running in this context: a node
# called directly by another node's execute sees the same config as its caller.
_serving: ContextVar[object] = ContextVar("act_operator_lib_metrics_serving", default=None)


def _stats_for(node: Any, config: RunnableConfig | None) -> _NodeStats:
    # The graph's name for the node (add_node("fetch", Fetch())) when LangGraph called
    # it, which puts the task's config in var_child_runnable_config; the node's own name
    # when called directly (alone, or from another node: not counted twice as that node).
    if config is None or config is _serving.get():
        name = node.name
    else:
        name = config.get("metadata", {}).get("langgraph_node", node.name)
    stats = _nodes.get(name)
    if stats is None:
        with _lock:
            stats = _nodes.setdefault(name, _NodeStats(name))
    return stats


def _begin(node: Any) -> tuple[_NodeStats, Token[object], float]:
    """Count a call of ``node`` as started; the caller passes the result to ``_end``."""
    config = var_child_runnable_config.get()
    stats = _stats_for(node, config)
    with stats.lock:
        stats.calls += 1
        stats.in_flight += 1
    if _sinks:
        node = {"node": stats.name}
        for sink in _sinks:
            sink(_NODE_CALLS, 1.0, node, None)
            sink(_NODE_IN_FLIGHT, 1.0, node, None)
    return stats, _serving.set(config), perf_counter()


def _instrumented(plain: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a node class's call to count it (``node_classes`` keeps its signature)."""
    call: Callable[..., Any]
    if inspect.iscoroutinefunction(plain):

        async def acall(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            stats, serving, start = _begin(self)
            try:
                result = await plain(self, state, *args, **kwargs)
            except BaseException as error:
                stats.finished(perf_counter() - start, error)
                raise
            finally:
                _serving.reset(serving)
            stats.finished(perf_counter() - start)
            return result

        call = acall
    else:

        def call(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            stats, serving, start = _begin(self)
            try:
                result = plain(self, state, *args, **kwargs)
            except BaseException as error:
                stats.finished(perf_counter() - start, error)
                raise
            finally:
                _serving.reset(serving)
            stats.finished(perf_counter() - start)
            return result

    return call


def enable() -> None:
    """Start recording: instrument every node class, present and future. Idempotent."""
    global _enabled, _active
    with _lock:
        node_classes.add_call_wrapper(_WRAPPER, _instrumented)
        _enabled = _active = True


def disable() -> None:
    """Stop recording and give node classes back their plain ``__call__``. Keeps the data.

    Also stops the OpenTelemetry export (``export_otel``)."""
    global _enabled, _active
    with _lock:
        _enabled = False
        node_classes.remove_call_wrapper(_WRAPPER)
    if _otel_sink is not None:
        remove_sink(_otel_sink)
    with _lock:
        _active = bool(_sinks)


def add_sink(sink: Sink) -> None:
    """Feed ``sink`` every value ``record`` accepts from now on (and node classes' values
    while metrics are enabled). For observers such as ``tracing``; idempotent."""
    global _sinks, _active
    if not callable(sink):
        raise TypeError(f"metrics.add_sink sink must be callable, got {sink!r}")
    with _lock:
        if sink not in _sinks:
            _sinks = (*_sinks, sink)
        _active = True


def remove_sink(sink: Sink) -> None:
    """Stop feeding ``sink``; a no-op when it is not registered."""
    global _sinks, _active
    with _lock:
        _sinks = tuple(s for s in _sinks if s is not sink)
        _active = _enabled or bool(_sinks)


_otel_sink: Sink | None = None


def export_otel(meter_provider: MeterProvider | None = None) -> None:
    """Enable metrics and send them through the OpenTelemetry metrics API as well.

        from opentelemetry.sdk.metrics import MeterProvider
        metrics.export_otel(MeterProvider(metric_readers=[reader]))  # or the global one

    Every declared metric (``METRICS``) becomes an instrument of the meter
    ``act_operator_lib``: counters are ``Counter``, gauges ``UpDownCounter`` (fed the same
    signed deltas), observations ``Histogram`` (node latency with ``LATENCY_BUCKETS``),
    named ``act.`` + the declared name without ``_seconds``, with the declared unit and
    labels as attributes; an OpenTelemetry Prometheus exporter therefore shows the same
    names as ``prometheus_registry()`` (``act_node_calls_total``,
    ``act_node_latency_seconds``). So a reader or exporter chooses: an OTLP exporter, an
    OpenTelemetry Prometheus reader, or ``prometheus_registry()`` (unchanged, reading the
    in-process snapshot). Needs ``opentelemetry-api`` (the ``otel`` extra); calling it again
    switches the provider; ``disable()`` stops it.
    """
    global _otel_sink
    try:
        from act_operator_lib._internal.otel_metrics import instruments_sink
    except ModuleNotFoundError as missing:
        raise ModuleNotFoundError(
            f"metrics.export_otel needs opentelemetry-api ({missing});"
            ' install it with: pip install "act-operator-lib[otel]"'
        ) from missing
    sink = instruments_sink(meter_provider)
    enable()
    if _otel_sink is not None:
        remove_sink(_otel_sink)
    _otel_sink = sink
    add_sink(sink)


@contextlib.contextmanager
def collecting() -> Iterator[None]:
    """Record metrics inside the ``with`` block; leave them as they were afterwards.

    with metrics.collecting():
        graph.invoke({"n": 0})
    """
    was_enabled = _enabled
    enable()
    try:
        yield
    finally:
        if not was_enabled:
            disable()


def reset() -> None:
    """Forget everything recorded so far (nodes and primitives)."""
    with _lock:
        _nodes.clear()
        _series.clear()


# -- primitives' series -----------------------------------------------------------------


# What record() accepts: the declared metrics primitives report, and their label names.
_RECORDED: dict[str, tuple[Metric, frozenset[str]]] = {
    metric.name: (metric, frozenset(metric.labels))
    for metric in METRICS.values()
    if metric.recorded
}


class _SeriesStats:
    __slots__ = ("count", "kind", "recent", "value")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.value = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=RECENT)


_series: dict[tuple[str, tuple[tuple[str, str], ...]], _SeriesStats] = {}


def _record(
    metric: str,
    value: float,
    labels: Mapping[str, str],
    details: Mapping[str, str | float] | None = None,
) -> None:
    found = _RECORDED.get(metric)
    if found is None:
        declared(metric, "metrics.record")  # raises for a name that is not declared at all
        raise ValueError(
            f"metrics.record metric must be one that primitives record, got {metric!r},"
            " which node classes keep themselves"
        )
    declaration, names = found
    if labels.keys() != names:
        raise ValueError(
            f"metrics.record labels of {metric!r} must be exactly"
            f" {', '.join(declaration.labels)}, got {', '.join(sorted(labels)) or 'none'}"
        )
    if details is not None and not details.keys() <= set(declaration.details):
        raise ValueError(
            f"metrics.record details of {metric!r} must be among"
            f" {', '.join(declaration.details) or 'none'}, got {', '.join(sorted(details))}"
        )
    for sink in _sinks:
        sink(declaration, value, labels, details)
    if not _enabled:
        return
    key = (metric, tuple(sorted((name, str(value)) for name, value in labels.items())))
    with _lock:
        stats = _series.get(key)
        if stats is None:
            stats = _series[key] = _SeriesStats(METRICS[metric].kind)
        stats.value += value
        stats.count += 1
        if stats.kind == "observation":
            stats.recent.append(value)


# -- snapshot ---------------------------------------------------------------------------


def _percentile(ordered: list[float], fraction: float) -> float | None:
    # Nearest rank: an observed value, never an interpolation between two.
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _latency(count: int, total: float, recent: deque[float], buckets: tuple[int, ...]) -> Latency:
    ordered = sorted(recent)
    return Latency(
        count=count,
        total=total,
        p50=_percentile(ordered, 0.50),
        p95=_percentile(ordered, 0.95),
        p99=_percentile(ordered, 0.99),
        buckets=buckets,
    )


def snapshot() -> Snapshot:
    """A consistent copy of everything recorded so far (whether or not still enabled)."""
    with _lock:
        node_items = list(_nodes.items())
        series_items = sorted(_series.items())
    nodes: dict[str, NodeMetrics] = {}
    for name, stats in sorted(node_items):
        with stats.lock:
            buckets = tuple(stats.buckets)
            nodes[name] = NodeMetrics(
                calls=stats.calls,
                errors=dict(sorted(stats.errors.items())),
                in_flight=stats.in_flight,
                latency=_latency(sum(buckets), stats.total, stats.recent.copy(), buckets),
            )
    series = []
    with _lock:
        for (metric, labels), recorded in series_items:
            latency = None
            if recorded.kind == "observation":
                latency = _latency(recorded.count, recorded.value, recorded.recent.copy(), ())
            series.append(
                Series(
                    metric=metric,
                    labels=dict(labels),
                    kind=recorded.kind,
                    value=recorded.value,
                    count=recorded.count,
                    latency=latency,
                )
            )
    return Snapshot(nodes=nodes, series=tuple(series))


# -- reporting --------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3f}"


def format_table(data: Snapshot | None = None) -> str:
    """Render ``data`` (default: a fresh ``snapshot()``) as a small text table.

    print(metrics.format_table())
    # node    calls  errors        in_flight  p50_ms  p95_ms  p99_ms
    # fetch      20  Timeout=1             0   12.10   40.31   41.02
    """
    data = snapshot() if data is None else data
    rows: list[tuple[str, ...]] = [
        ("node", "calls", "errors", "in_flight", "p50_ms", "p95_ms", "p99_ms")
    ]
    for name, node in data.nodes.items():
        errors = ",".join(f"{kind}={n}" for kind, n in node.errors.items()) or "0"
        rows.append(
            (
                name,
                str(node.calls),
                errors,
                str(node.in_flight),
                _ms(node.latency.p50),
                _ms(node.latency.p95),
                _ms(node.latency.p99),
            )
        )
    lines = _aligned(rows, right_from=1)
    if data.series:
        rows = [("metric", "labels", "value", "count", "p50_ms", "p95_ms", "p99_ms")]
        for series in data.series:
            latency = series.latency
            rows.append(
                (
                    series.metric,
                    ",".join(f"{k}={v}" for k, v in series.labels.items()),
                    f"{series.value:g}",
                    str(series.count),
                    _ms(latency.p50 if latency else None),
                    _ms(latency.p95 if latency else None),
                    _ms(latency.p99 if latency else None),
                )
            )
        lines += ["", *_aligned(rows, right_from=2)]
    return "\n".join(lines)


def _aligned(rows: Sequence[tuple[str, ...]], *, right_from: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i >= right_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


@functools.cache
def prometheus_registry() -> CollectorRegistry:
    """A prometheus-client registry exposing these metrics (the ``metrics`` extra).

        from prometheus_client import generate_latest
        generate_latest(metrics.prometheus_registry())  # text exposition format

    Dedicated rather than ``prometheus_client.REGISTRY`` so nothing is exported unless
    the application asks. Metric names start with ``act_``: ``act_node_calls_total``,
    ``act_node_errors_total``, ``act_node_in_flight``, ``act_node_latency_seconds``
    (a histogram), then one per recorded primitive metric.
    """
    try:
        from act_operator_lib._internal.prometheus_export import registry_for
    except ModuleNotFoundError as missing:
        raise ModuleNotFoundError(
            f"metrics.prometheus_registry() needs prometheus-client ({missing});"
            ' install it with: pip install "act-operator-lib[metrics]"'
        ) from missing
    return registry_for(snapshot)
