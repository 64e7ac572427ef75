"""Fixtures of the observability tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from act_operator_lib import metrics


@pytest.fixture
def clean_metrics() -> Iterator[None]:
    """Metrics off and empty before the test and again after it, whatever it switched on.

    A module whose every test needs it says ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    metrics.disable()
    metrics.reset()
    yield
    metrics.disable()
    metrics.reset()
