"""Suite-wide settings; ResourceWarning is an error (pyproject's filterwarnings)."""

from __future__ import annotations

import gc

import pytest

pytest_plugins = ["tests.pg_server", "tests.http_server", "tests.redis_server"]


@pytest.fixture(autouse=True)
def _collect_garbage() -> None:
    # Unclosed resources warn when collected: collect inside the test that leaked them.
    yield
    gc.collect()
