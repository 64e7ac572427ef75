"""The cache recipe: TTL, LRU, single-flight, failures and cancellation, in real graphs."""

from __future__ import annotations

import asyncio
from typing import Any, TypedDict

import pytest
import uvloop
from act_operator_lib.cookbook.cache import AsyncCache, CachedNode, CacheSettings
from langgraph.graph import START, StateGraph

from act_operator_lib import metrics
from tests.helpers import run_example


class Lookup(TypedDict, total=False):
    city: str
    forecast: str


class Weather:
    """A slow weather service that counts its calls and can be told to fail."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.calls: list[str] = []
        self.cancelled = 0
        self.failing = False

    async def __call__(self, state: Lookup) -> dict[str, Any]:
        self.calls.append(state["city"])
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failing:
            raise ConnectionError(f"weather service down for {state['city']}")
        return {"forecast": f"sunny in {state['city']} (call {len(self.calls)})"}


def graph_for(weather: Weather, cache: AsyncCache[dict[str, Any]]) -> Any:
    builder = StateGraph(Lookup)
    builder.add_node("forecast", CachedNode(weather, cache, key=lambda s: s["city"]))
    builder.add_edge(START, "forecast")
    return builder.compile()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"ttl": 0},
            ValueError,
            "CacheSettings ttl must be a finite number of seconds > 0 or None, got 0",
        ),
        ({"ttl": -5.0}, ValueError, "CacheSettings ttl must be a finite number of seconds > 0"),
        (
            {"ttl": "60"},
            TypeError,
            "CacheSettings ttl must be a finite number of seconds > 0 or None, got '60'",
        ),
        ({"maxsize": 0}, ValueError, "CacheSettings maxsize must be an int >= 1, got 0"),
        ({"maxsize": 2.5}, TypeError, "CacheSettings maxsize must be an int"),
    ],
)
def test_invalid_settings_are_refused_at_construction(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        CacheSettings(**kwargs)


def test_misuse_names_what_was_wrong() -> None:
    with pytest.raises(TypeError, match="AsyncCache settings must be a CacheSettings"):
        AsyncCache({"ttl": 5})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CachedNode key must be a callable taking the state"):
        CachedNode(Weather(), AsyncCache(), key="city")  # type: ignore[arg-type]


async def test_values_expire_after_the_ttl() -> None:
    weather = Weather(delay=0)
    graph = graph_for(weather, AsyncCache(CacheSettings(ttl=0.1)))
    first = await graph.ainvoke({"city": "Oslo"})
    second = await graph.ainvoke({"city": "Oslo"})
    assert second["forecast"] == first["forecast"] == "sunny in Oslo (call 1)"
    await asyncio.sleep(0.12)
    third = await graph.ainvoke({"city": "Oslo"})
    assert third["forecast"] == "sunny in Oslo (call 2)"
    assert weather.calls == ["Oslo", "Oslo"]


async def test_the_least_recently_used_value_is_evicted() -> None:
    weather = Weather(delay=0)
    cache: AsyncCache[dict[str, Any]] = AsyncCache(CacheSettings(maxsize=2))
    graph = graph_for(weather, cache)
    for city in ("Oslo", "Lima", "Oslo", "Pune"):  # Oslo was used after Lima: Lima goes
        await graph.ainvoke({"city": city})
    assert len(cache) == 2
    assert cache.get("Lima") is None
    assert cache.get("Oslo") == {"forecast": "sunny in Oslo (call 1)"}
    await graph.ainvoke({"city": "Lima"})
    assert weather.calls == ["Oslo", "Lima", "Pune", "Lima"]
    cache.invalidate("Lima")
    assert cache.get("Lima") is None


async def test_concurrent_runs_share_one_call_per_key() -> None:
    weather = Weather(delay=0.05)
    graph = graph_for(weather, AsyncCache())
    cities = ["Oslo"] * 20 + ["Lima"] * 5
    results = await asyncio.gather(*(graph.ainvoke({"city": c}) for c in cities))
    assert sorted(weather.calls) == ["Lima", "Oslo"]
    oslo = {r["forecast"] for r in results if r["city"] == "Oslo"}
    assert len(oslo) == 1  # all twenty runs got the one call's result


async def test_a_failure_reaches_every_joiner_and_is_not_cached() -> None:
    weather = Weather(delay=0.03)
    weather.failing = True
    graph = graph_for(weather, AsyncCache())
    outcomes = await asyncio.gather(
        *(graph.ainvoke({"city": "Oslo"}) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    assert weather.calls == ["Oslo"]

    weather.failing = False
    result = await graph.ainvoke({"city": "Oslo"})
    assert result["forecast"] == "sunny in Oslo (call 2)"  # the next call tried again


async def test_one_joiner_leaving_does_not_cancel_the_call_for_the_others() -> None:
    weather = Weather(delay=0.05)
    graph = graph_for(weather, AsyncCache())
    runs = [asyncio.create_task(graph.ainvoke({"city": "Oslo"})) for _ in range(3)]
    await asyncio.sleep(0.01)
    runs[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await runs[0]
    rest = await asyncio.gather(*runs[1:])
    assert [r["forecast"] for r in rest] == ["sunny in Oslo (call 1)"] * 2
    assert weather.cancelled == 0


async def test_when_every_caller_leaves_the_call_is_cancelled_and_nothing_leaks() -> None:
    weather = Weather(delay=5.0)
    cache: AsyncCache[dict[str, Any]] = AsyncCache()
    graph = graph_for(weather, cache)
    before = len(asyncio.all_tasks())
    runs = [asyncio.create_task(graph.ainvoke({"city": "Oslo"})) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert len(asyncio.all_tasks()) > before
    for run in runs:
        run.cancel()
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)
    assert weather.cancelled == 1  # the shared call was cancelled, once
    assert len(asyncio.all_tasks()) == before  # ...and had ended when the last caller left
    assert len(cache) == 0
    assert "in_flight=0" in repr(cache)

    weather.delay = 0
    result = await graph.ainvoke({"city": "Oslo"})  # a fresh call, not the cancelled one
    assert result["forecast"] == "sunny in Oslo (call 2)"


async def test_direct_use_with_get_or_load() -> None:
    cache: AsyncCache[int] = AsyncCache(CacheSettings(ttl=None, maxsize=10))
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)
        return 42

    values = await asyncio.gather(*(cache.get_or_load("answer", load) for _ in range(10)))
    assert values == [42] * 10
    assert await cache.get_or_load("answer", load) == 42
    assert loads == 1


async def test_invalidating_a_key_lets_its_load_in_flight_complete_and_be_cached() -> None:
    cache: AsyncCache[int] = AsyncCache()
    release = asyncio.Event()

    async def load() -> int:
        await release.wait()
        return 7

    caller = asyncio.create_task(cache.get_or_load("k", load))
    await asyncio.sleep(0)  # the load is in flight
    cache.invalidate("k")
    release.set()
    assert await caller == 7
    assert cache.get("k") == 7


def run_in_two_loops(runner_factory: Any) -> tuple[Weather, list[str]]:
    """One cache and graph, used from two separate event loops: the values carry over."""
    weather = Weather(delay=0.01)
    graph = graph_for(weather, AsyncCache(CacheSettings(ttl=60)))
    forecasts = []
    for _ in range(2):
        with runner_factory() as runner:
            forecasts.append(runner.run(graph.ainvoke({"city": "Oslo"}))["forecast"])
    return weather, forecasts


def test_values_outlive_an_asyncio_run() -> None:
    weather, forecasts = run_in_two_loops(asyncio.Runner)
    assert forecasts == ["sunny in Oslo (call 1)"] * 2
    assert weather.calls == ["Oslo"]


def test_it_works_on_uvloop() -> None:
    weather, forecasts = run_in_two_loops(
        lambda: asyncio.Runner(loop_factory=uvloop.new_event_loop)
    )
    assert forecasts == ["sunny in Oslo (call 1)"] * 2
    assert weather.calls == ["Oslo"]


def test_the_example_runs() -> None:
    out = run_example("cache")
    assert "7 runs, 3 service calls: ['Lima', 'Oslo', 'Pune']" in out


async def test_hits_misses_and_joins_are_recorded_as_metrics() -> None:
    cache: AsyncCache[dict[str, Any]] = AsyncCache(CacheSettings(name="metered-forecasts"))
    graph = graph_for(Weather(delay=0.02), cache)
    with metrics.collecting():
        await asyncio.gather(*(graph.ainvoke({"city": "Oslo"}) for _ in range(4)))
        await graph.ainvoke({"city": "Oslo"})
        recorded = metrics.snapshot()
    labels = {"name": "metered-forecasts"}
    assert recorded.value("cache_misses", **labels) == 1
    assert recorded.value("singleflight_joins", **labels) == 3
    assert recorded.value("cache_hits", **labels) == 1
