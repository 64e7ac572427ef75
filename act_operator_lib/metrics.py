"""Metrics for nodes and cookbook primitives: off by default, free when off.

    from act_operator_lib.metrics import record
    record("retry_attempts", 1, name="fetch")  # a no-op unless metrics are enabled
"""

from __future__ import annotations

__all__ = ["enabled", "record"]

enabled = False
"""Whether metrics are being recorded."""


def record(metric: str, value: float = 1.0, **labels: str) -> None:
    """Add ``value`` to ``metric`` (a counter, or an observation for ``*_seconds``)."""
    if not enabled:
        return
