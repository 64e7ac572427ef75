"""The named registry behind rate_limiter(), circuit_breaker() and adaptive_limiter()."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from act_operator_lib.named import Named


@dataclass(frozen=True)
class Policy:
    rate: float


class Thing:
    made = 0

    def __init__(self, policy: Policy, shared: object = None) -> None:
        Thing.made += 1
        self.policy = policy
        self.shared = shared


def test_one_object_per_name_and_a_different_ask_is_refused() -> None:
    things: Named[Thing] = Named("thing")
    store = object()
    first = things.get("a", lambda: Thing(Policy(1.0), store), policy=Policy(1.0), shared=store)
    again = things.get("a", lambda: Thing(Policy(1.0), store), policy=Policy(1.0), shared=store)
    assert again is first
    assert "a" in things
    assert len(things) == 1
    with pytest.raises(
        ValueError,
        match=r"thing 'a' already exists with policy=Policy\(rate=1.0\); got policy=Policy\(rate=2.0\)",
    ):
        things.get("a", lambda: Thing(Policy(2.0)), policy=Policy(2.0), shared=store)
    with pytest.raises(ValueError, match="thing 'a' already exists with shared="):
        things.get("a", lambda: Thing(Policy(1.0)), policy=Policy(1.0), shared=object())
    assert things.get("b", lambda: Thing(Policy(2.0)), policy=Policy(2.0)) is not first


@pytest.mark.parametrize("name", ["", None, 3])
def test_a_name_must_be_a_non_empty_string(name: object) -> None:
    with pytest.raises(ValueError, match="thing name must be a non-empty string"):
        Named[Thing]("thing").get(name, lambda: Thing(Policy(1.0)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Named kind must be a non-empty string"):
        Named(name)  # type: ignore[arg-type]


def test_concurrent_first_calls_make_one_object() -> None:
    things: Named[Thing] = Named("thing")
    before = Thing.made
    start = threading.Barrier(8)
    got: list[Thing] = []

    def ask() -> None:
        start.wait()
        got.append(things.get("shared", lambda: Thing(Policy(1.0)), policy=Policy(1.0)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Thing.made - before == 1
    assert all(thing is got[0] for thing in got)
