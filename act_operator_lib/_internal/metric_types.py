"""Every metric the library records, declared once, and the plain values a snapshot holds.

``act_operator_lib.metrics`` records into these declarations and re-exports them;
exporters (``prometheus_export``, and any other) read them to name, type, describe and
label what they export. They import this module, never ``metrics``, so the recording
side and the exporting side do not depend on each other.

Two labels recur, each with one meaning everywhere:

* ``node``: the graph's name for the node it happened in (``add_node("fetch", ...)``
  gives ``"fetch"``), as LangGraph reports it in the task's ``langgraph_node`` metadata;
  the node's own ``name`` when it was called outside a graph.
* ``name``: the name the user gave the primitive that recorded it: a rate limiter, a
  circuit breaker, a pool, an HTTP client, a cache, a batcher, a ``retry_call(name=...)``.
  Never the name of a recipe: a recipe's metric has a name of its own
  (``fanout_timeouts``, ``retry_timeouts``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, NamedTuple

__all__ = [
    "LATENCY_BUCKETS",
    "METRICS",
    "RECENT",
    "Kind",
    "Latency",
    "Metric",
    "NodeMetrics",
    "Series",
    "Snapshot",
    "declared",
]

Kind = Literal["counter", "gauge", "observation"]
"""``counter``: only goes up, by the recorded amount. ``gauge``: a level moved by signed
deltas (an OpenTelemetry UpDownCounter). ``observation``: each value is one sample of a
distribution (count, sum, percentiles; a histogram to OpenTelemetry)."""


class Metric(NamedTuple):
    """One declared metric: what ``record`` accepts and what exporters publish."""

    name: str
    """The name given to ``metrics.record`` and used by ``Snapshot.value``; exporters add
    their own prefix and suffixes (Prometheus: ``act_`` and ``_total``)."""
    kind: Kind
    """How recorded values combine; see ``Kind``."""
    unit: str
    """The unit in UCUM form, as OpenTelemetry spells units: ``s``, ``{call}``, ``{row}``."""
    labels: tuple[str, ...]
    """The label names, all required on every record (``node`` and ``name``: see above)."""
    description: str
    """One sentence, used as the exported help text."""
    recorded: bool = True
    """``True``: primitives report it through ``record``. ``False``: one of the ``node_*``
    metrics that node classes keep themselves (``record`` refuses those)."""
    details: tuple[str, ...] = ()
    """Values ``record`` may pass beside the labels (its ``details``) that are too
    many-valued to label a series (an attempt number, a delay): they only reach the span
    event ``tracing`` adds for each record, as attributes."""


_DECLARED: tuple[Metric, ...] = (
    # -- kept by every BaseNode / AsyncBaseNode node --
    Metric("node_calls", "counter", "{call}", ("node",), "Node calls started.", False),
    Metric(
        "node_errors", "counter", "{call}", ("node", "error"),
        "Node calls that raised, by exception class name (interrupts and"
        " Command(graph=PARENT) are not errors).", False,
    ),
    Metric(
        "node_in_flight", "gauge", "{call}", ("node",),
        "Node calls started and not yet finished.", False,
    ),
    Metric(
        "node_latency_seconds", "observation", "s", ("node",),
        "How long node calls took (buckets: LATENCY_BUCKETS).", False,
    ),
    # -- the blocking detector --
    Metric(
        "event_loop_stall_seconds", "observation", "s", ("node",),
        "How long the event loop was blocked, by the node running ('' when none was).",
    ),
    # -- node recipes: labelled by the graph node they ran in --
    Metric(
        "fanout_timeouts", "counter", "{timeout}", ("node",),
        "Fan-outs whose item timeout or deadline expired.",
    ),
    Metric(
        "gather_by_deadline_timeouts", "counter", "{timeout}", ("node",),
        "GatherByDeadline runs that reached the deadline with work unfinished.",
    ),
    Metric(
        "hedge_started", "counter", "{attempt}", ("node",),
        "Backup attempts a hedged call started after its delay.",
    ),
    Metric(
        "llm_stream_tokens", "counter", "{chunk}", ("node",),
        "Chunks streamed from the chat model.",
    ),
    Metric(
        "pg_stream_rows", "counter", "{row}", ("node",),
        "Rows read through a PostgreSQL cursor.",
    ),
    Metric(
        "stream_pipeline_items", "counter", "{item}", ("node",),
        "Items a stream pipeline consumed.",
    ),
    # -- primitives: labelled by the name the user gave them --
    Metric(
        "adaptive_in_flight", "gauge", "{call}", ("name",),
        "Calls holding an adaptive limiter's slot.",
    ),
    Metric(
        "adaptive_limit_changes", "counter", "{change}", ("name", "direction"),
        "Times an adaptive limit moved, 'up' or 'down'.",
    ),
    Metric(
        "adaptive_limit_size", "gauge", "{call}", ("name",),
        "An adaptive limiter's current concurrency limit.",
    ),
    Metric(
        "adaptive_overloads", "counter", "{call}", ("name", "reason"),
        "Calls that signalled overload, by HTTP status or exception class name.",
    ),
    Metric(
        "adaptive_wait_seconds", "observation", "s", ("name",),
        "How long calls queued for an adaptive limiter's slot.",
    ),
    Metric(
        "batch_calls", "counter", "{batch}", ("name", "trigger"),
        "Batches started, by what started them.",
    ),
    Metric("batch_errors", "counter", "{batch}", ("name",), "Batches whose load raised."),
    Metric(
        "batch_fill_seconds", "observation", "s", ("name",),
        "How long a batch collected keys before it started.",
    ),
    Metric("batch_in_flight", "gauge", "{batch}", ("name",), "Batches loading now."),
    Metric(
        "batch_joins", "counter", "{key}", ("name",),
        "Keys asked for again while already in an open batch (loaded once).",
    ),
    Metric("batch_keys", "counter", "{key}", ("name",), "Distinct keys loaded in batches."),
    Metric("cache_hits", "counter", "{lookup}", ("name",), "Lookups served from the cache."),
    Metric("cache_misses", "counter", "{lookup}", ("name",), "Lookups that started a load."),
    Metric(
        "circuit_state_changes", "counter", "{change}", ("name", "state"),
        "Circuit breaker transitions, by the state entered.",
    ),
    Metric(
        "effects_performed", "counter", "{effect}", ("name",),
        "Side effects an effect ledger performed.",
    ),
    Metric(
        "effects_reconciled", "counter", "{effect}", ("name",),
        "Effects of unknown outcome checked with their reconcile function.",
    ),
    Metric(
        "effects_replayed", "counter", "{effect}", ("name",),
        "Effects already done, their recorded result returned instead.",
    ),
    Metric(
        "effects_unknown", "counter", "{effect}", ("name",),
        "Effects of unknown outcome refused (EffectOutcomeUnknown).",
    ),
    Metric("http_requests", "counter", "{request}", ("name",), "HTTP responses received."),
    Metric("http_retries", "counter", "{request}", ("name",), "HTTP requests retried."),
    Metric("http_streams", "counter", "{stream}", ("name",), "HTTP streams opened."),
    Metric(
        "pg_read_retries", "counter", "{query}", ("name",),
        "Read-only or idempotent queries retried after a lost connection.",
    ),
    Metric(
        "pool_size", "gauge", "{slot}", ("name",),
        "Connections or workers open pools may hold (HTTP, PostgreSQL, offload).",
    ),
    Metric(
        "pool_waits", "counter", "{wait}", ("name",),
        "Acquisitions that found every connection or worker taken.",
    ),
    Metric(
        "rate_limiter_wait_seconds", "observation", "s", ("name",),
        "How long each acquisition waited for its tokens.",
    ),
    Metric(
        "retry_attempts", "counter", "{attempt}", ("name",),
        "Failed attempts that were retried.",
        details=("attempt", "delay", "error.type"),
    ),
    Metric(
        "retry_exhausted", "counter", "{call}", ("name",),
        "Retried calls that failed for good (attempts or time ran out).",
    ),
    Metric(
        "retry_timeouts", "counter", "{call}", ("name",),
        "Retried calls stopped by their deadline or budget.",
    ),
    Metric(
        "singleflight_joins", "counter", "{lookup}", ("name",),
        "Lookups that joined a load already in flight.",
    ),
)  # fmt: skip

METRICS: Mapping[str, Metric] = MappingProxyType({metric.name: metric for metric in _DECLARED})
"""Every metric the library records, by name (read-only)."""


def declared(metric: str, owner: str) -> Metric:
    """The declaration of ``metric``; ``ValueError`` naming ``owner`` when there is none."""
    found = METRICS.get(metric)
    if found is None:
        raise ValueError(
            f"{owner} metric must be a declared metric (see metrics.METRICS), got {metric!r}"
        )
    return found


LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of the node latency histogram's buckets; +Inf is implied."""

RECENT = 1024
"""How many recent latencies / observations per series the percentiles are taken over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """A latency distribution: totals since the last reset, percentiles of recent calls."""

    count: int
    """How many calls (or observations) finished."""
    total: float
    """Their summed duration, seconds."""
    p50: float | None
    """Median of the most recent ``RECENT``, seconds; ``None`` when there were none."""
    p95: float | None
    """95th percentile of the most recent ``RECENT``, seconds."""
    p99: float | None
    """99th percentile of the most recent ``RECENT``, seconds."""
    buckets: tuple[int, ...] = ()
    """Calls per ``LATENCY_BUCKETS`` bucket (not cumulative), the last one being +Inf."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeMetrics:
    """What one graph node did."""

    calls: int
    """Calls started."""
    errors: Mapping[str, int]
    """Calls that raised, by exception class name (interrupts are not errors)."""
    in_flight: int
    """Calls started and not yet finished."""
    latency: Latency
    """How long finished calls took."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """One metric a primitive recorded, for one set of labels."""

    metric: str
    """The name given to ``record`` (a key of ``METRICS``)."""
    labels: Mapping[str, str]
    """The labels given to ``record``."""
    kind: Kind
    """``counter``, ``gauge`` or ``observation``, as the metric is declared."""
    value: float
    """The total: a counter's count, a gauge's level, an observation's sum."""
    count: int
    """How many times it was recorded."""
    latency: Latency | None
    """For observations: their distribution."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything recorded, as plain values: ``snapshot().nodes["fetch"].calls``."""

    nodes: Mapping[str, NodeMetrics]
    """Per graph node name."""
    series: tuple[Series, ...]
    """What primitives recorded, sorted by metric then labels."""

    def value(self, metric: str, **labels: str) -> float:
        """The summed value of ``metric`` over the series whose labels include ``labels``.

        snapshot().value("retry_attempts", name="fetch")  # 2.0

        An undeclared metric or a label it does not have raises ``ValueError`` (a typo
        would otherwise read as zero).
        """
        return sum(s.value for s in self._matching(metric, labels))

    def count(self, metric: str, **labels: str) -> int:
        """How many times ``metric`` was recorded with (at least) ``labels``."""
        return sum(s.count for s in self._matching(metric, labels))

    def _matching(self, metric: str, labels: Mapping[str, str]) -> Iterator[Series]:
        allowed = declared(metric, "Snapshot").labels
        unknown = sorted(set(labels) - set(allowed))
        if unknown:
            raise ValueError(
                f"Snapshot labels of {metric!r} must be among {', '.join(allowed)},"
                f" got {', '.join(unknown)}"
            )
        for series in self.series:
            if series.metric == metric and labels.items() <= series.labels.items():
                yield series
