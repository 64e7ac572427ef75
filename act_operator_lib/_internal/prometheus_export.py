"""Expose ``metrics.snapshot()`` through prometheus-client, read at scrape time.

A custom collector (prometheus-client's documented way to export values kept
elsewhere) so the hot path updates plain counters and pays nothing for exposition.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from act_operator_lib.metrics import Series, Snapshot

__all__ = ["registry_for"]

_PREFIX = "act_"
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")


def registry_for(take_snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A new registry holding one collector that exports ``take_snapshot()``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(take_snapshot))
    return registry


class _SnapshotCollector:
    def __init__(self, take_snapshot: Callable[[], Snapshot]) -> None:
        self._take_snapshot = take_snapshot

    def collect(self) -> Iterable[Metric]:
        from act_operator_lib.metrics import LATENCY_BUCKETS

        data = self._take_snapshot()
        calls = CounterMetricFamily(f"{_PREFIX}node_calls", "Node calls started.", labels=["node"])
        errors = CounterMetricFamily(
            f"{_PREFIX}node_errors", "Node calls that raised, by exception type.",
            labels=["node", "error"],
        )  # fmt: skip
        in_flight = GaugeMetricFamily(
            f"{_PREFIX}node_in_flight", "Node calls started and not finished.", labels=["node"]
        )
        latency = HistogramMetricFamily(
            f"{_PREFIX}node_latency_seconds", "How long node calls took.", labels=["node"]
        )
        bounds = [*(f"{bound:g}" for bound in LATENCY_BUCKETS), "+Inf"]
        for name, node in data.nodes.items():
            calls.add_metric([name], node.calls)
            for kind, count in node.errors.items():
                errors.add_metric([name, kind], count)
            in_flight.add_metric([name], node.in_flight)
            cumulative, running = [], 0
            for bound, count in zip(bounds, node.latency.buckets, strict=True):
                running += count
                cumulative.append((bound, float(running)))
            latency.add_metric([name], cumulative, node.latency.total)
        yield from (calls, errors, in_flight, latency)
        yield from _primitive_families(data.series)


def _primitive_families(all_series: Iterable[Series]) -> Iterable[Metric]:
    families: dict[str, Metric] = {}
    for series in all_series:
        name = _PREFIX + _INVALID.sub("_", series.metric)
        labels = dict(series.labels)
        if series.kind == "counter":
            name = name.removesuffix("_total")
            family = families.setdefault(
                name, Metric(name, f"{series.metric} (counter)", "counter")
            )
            family.add_sample(f"{name}_total", labels, series.value)
        elif series.kind == "gauge":
            family = families.setdefault(name, Metric(name, f"{series.metric} (gauge)", "gauge"))
            family.add_sample(name, labels, series.value)
        else:
            family = families.setdefault(name, Metric(name, f"{series.metric}", "summary"))
            latency = series.latency
            if latency is not None:
                for quantile, value in (
                    ("0.5", latency.p50),
                    ("0.95", latency.p95),
                    ("0.99", latency.p99),
                ):
                    if value is not None:
                        family.add_sample(name, {**labels, "quantile": quantile}, value)
            family.add_sample(f"{name}_count", labels, series.count)
            family.add_sample(f"{name}_sum", labels, series.value)
    return families.values()
