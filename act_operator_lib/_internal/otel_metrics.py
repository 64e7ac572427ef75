"""The declared metrics as OpenTelemetry instruments (imports opentelemetry-api).

Only ``metrics.export_otel()`` imports this module. Instruments are built from
``metric_types.METRICS``, never from a list of their own, and fed by the metrics sink.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import MeterProvider

from act_operator_lib._internal.metric_types import LATENCY_BUCKETS, METRICS, Metric

INSTRUMENTATION = "act_operator_lib"
_PREFIX = "act."


def instrument_name(metric: Metric) -> str:
    """``act.`` + the declared name, its ``_seconds`` dropped (the unit says it): an
    OpenTelemetry Prometheus exporter adds the unit and ``_total`` back, giving the names
    ``prometheus_registry()`` exports (``act_node_latency_seconds``, ``act_node_calls_total``)."""
    return _PREFIX + metric.name.removesuffix("_seconds")


def _instrument(meter: Any, metric: Metric) -> Any:
    name = instrument_name(metric)
    if metric.kind == "counter":
        return meter.create_counter(name, unit=metric.unit, description=metric.description).add
    if metric.kind == "gauge":
        create = meter.create_up_down_counter
        return create(name, unit=metric.unit, description=metric.description).add
    buckets = list(LATENCY_BUCKETS) if metric.name == "node_latency_seconds" else None
    histogram = meter.create_histogram(
        name,
        unit=metric.unit,
        description=metric.description,
        explicit_bucket_boundaries_advisory=buckets,
    )
    return histogram.record


def instruments_sink(provider: MeterProvider | None) -> Any:
    """A metrics sink feeding one instrument per declared metric of ``provider``'s meter
    (``None``: the global meter provider)."""
    meter = (provider or otel_metrics.get_meter_provider()).get_meter(INSTRUMENTATION)
    feeds = {name: _instrument(meter, metric) for name, metric in METRICS.items()}

    def sink(
        metric: Metric,
        value: float,
        labels: Mapping[str, str],
        details: Mapping[str, str | float] | None,
    ) -> None:
        feeds[metric.name](value, labels)

    return sink
