"""Process-wide objects by name: the registry behind ``rate_limiter("api", ...)``,
``circuit_breaker("payments", ...)`` and ``adaptive_limiter("search", ...)``.

    _limiters: Named[RateLimiter] = Named("rate_limiter")

    def rate_limiter(name: str, policy: RateLimit) -> RateLimiter:
        return _limiters.get(name, lambda: RateLimiter(policy, name=name), policy=policy)

The first ``get`` of a name makes its object; every later one returns that object, after
checking that what the caller asked for (``policy=...``, ``shared=...``) is what the object
has: one name with two policies is a mistake, reported as ``ValueError`` naming both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Named"]

T = TypeVar("T")


class Named(Generic[T]):
    """Objects of one kind by name, made once per process; thread-safe."""

    __slots__ = ("_items", "_lock", "kind")

    def __init__(self, kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Named kind must be a non-empty string, got {kind!r}")
        self.kind = kind
        """What the names are of, as errors say it (the getter function's name)."""
        self._items: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, name: str, make: Callable[[], T], **asked: object) -> T:
        """The object called ``name``, made by ``make()`` on first use.

        Each keyword names an attribute of the object and the value the caller expects
        (compared with ``==``, so identity for objects without their own equality, such as
        a shared store); a difference raises ``ValueError``.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        with self._lock:  # make() runs at most once per name, even under concurrent calls
            found = self._items.get(name)
            if found is None:
                found = self._items[name] = make()
                return found
        for field, value in asked.items():
            held = getattr(found, field)
            if held != value:
                raise ValueError(
                    f"{self.kind} {name!r} already exists with {field}={held!r};"
                    f" got {field}={value!r}"
                )
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
