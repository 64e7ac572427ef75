"""Expose ``metrics.snapshot()`` through prometheus-client, read at scrape time.

A custom collector (prometheus-client's documented way to export values kept
elsewhere) so the hot path updates plain counters and pays nothing for exposition.
Names, types, help texts and label names come from the declarations in
``metric_types`` (``metrics.METRICS``); this module never imports ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from act_operator_lib._internal.metric_types import LATENCY_BUCKETS, METRICS, Series, Snapshot

__all__ = ["registry_for"]

_PREFIX = "act_"


def registry_for(take_snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A new registry holding one collector that exports ``take_snapshot()``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(take_snapshot))
    return registry


class _SnapshotCollector:
    def __init__(self, take_snapshot: Callable[[], Snapshot]) -> None:
        self._take_snapshot = take_snapshot

    def collect(self) -> Iterable[Metric]:
        data = self._take_snapshot()
        calls = _family(CounterMetricFamily, "node_calls")
        errors = _family(CounterMetricFamily, "node_errors")
        in_flight = _family(GaugeMetricFamily, "node_in_flight")
        latency = _family(HistogramMetricFamily, "node_latency_seconds")
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


_F = TypeVar("_F", CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)


def _family(family: type[_F], metric: str) -> _F:
    """The family of a declared node metric, named, described and labelled as declared."""
    declared = METRICS[metric]
    return family(_PREFIX + metric, declared.description, labels=list(declared.labels))


# Declared kinds as prometheus-client types: observations keep recent percentiles (a summary).
_TYPES = {"counter": "counter", "gauge": "gauge", "observation": "summary"}


def _primitive_families(all_series: Iterable[Series]) -> Iterable[Metric]:
    families: dict[str, Metric] = {}
    for series in all_series:
        declared = METRICS[series.metric]
        name = _PREFIX + series.metric
        labels = dict(series.labels)
        family = families.get(name)
        if family is None:
            family = families[name] = Metric(name, declared.description, _TYPES[declared.kind])
        if declared.kind == "counter":
            family.add_sample(f"{name}_total", labels, series.value)
        elif declared.kind == "gauge":
            family.add_sample(name, labels, series.value)
        else:
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
