"""Circuit breaker shared by name: fail fast while a dependency is down, probe to recover.

breaker = CircuitBreaker.named("search-api", BreakerPolicy(failure_threshold=5, reset_timeout=30))
result = await breaker.call(fetch, query)  # raises CircuitOpenError(retry_after=...) while open
"""

from __future__ import annotations

__all__ = ["CircuitOpenError"]


class CircuitOpenError(RuntimeError):
    """A call was refused because the circuit is open; ``retry_after`` seconds until a probe.

    Retrying before ``retry_after`` is pointless: the retry recipe never retries it.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; next probe in {retry_after:.3f}s")
        self.name = name
        """The breaker's name."""
        self.retry_after = retry_after
        """Seconds until the breaker lets a probe call through."""

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.name, self.retry_after))
