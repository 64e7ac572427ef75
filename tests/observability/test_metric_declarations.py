"""Metrics are declared once: record() takes only declared names and labels, exporters read the
same table, the ``node`` and ``name`` labels each mean one thing, and the node-class call
protocol is shared by metrics, the blocking detector and any other observer."""

from __future__ import annotations

import ast
import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import pytest
from act_operator_lib.cookbook.deadline import deadline_after, gather_by_deadline
from act_operator_lib.cookbook.fanout import FanoutPolicy, bounded_map
from act_operator_lib.cookbook.race import HedgePolicy, hedged
from act_operator_lib.cookbook.retry import retry_call
from langgraph.graph import START, StateGraph
from prometheus_client import generate_latest

from act_operator_lib import AsyncBaseNode, BaseNode, BlockingDetector, metrics
from act_operator_lib._internal import node_classes

ROOT = Path(__file__).resolve().parents[2]


class State(TypedDict, total=False):
    n: int
    out: str


pytestmark = pytest.mark.usefixtures("clean_metrics")


# -- the declarations ---------------------------------------------------------------------


def _record_calls() -> Iterator[tuple[str, ast.Call]]:
    """Every ``record(...)`` / ``metrics.record(...)`` call in the library and the cookbook."""
    for folder in ("act_operator_lib", "cookbook"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called == "record" and path.name != "metrics.py":
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node


def test_every_record_call_names_a_declared_metric_with_its_declared_labels() -> None:
    calls = list(_record_calls())
    assert len(calls) > 30  # the scan finds the cookbook's calls
    wrong = []
    for where, call in calls:
        first = call.args[0] if call.args else None
        if not isinstance(first, ast.Constant) or not isinstance(first.value, str):
            wrong.append(f"{where}: the metric is not a string literal")
            continue
        declared = metrics.METRICS.get(first.value)
        if declared is None or not declared.recorded:
            wrong.append(f"{where}: {first.value!r} is not a declared recorded metric")
            continue
        labels = sorted(keyword.arg or "**" for keyword in call.keywords)
        if labels != sorted(declared.labels):
            wrong.append(f"{where}: {first.value!r} labels {labels} != {list(declared.labels)}")
    assert wrong == []


def test_each_metric_is_declared_completely_and_the_two_labels_have_one_meaning() -> None:
    for name, metric in metrics.METRICS.items():
        assert metric.name == name
        assert metric.kind in ("counter", "gauge", "observation")
        assert metric.unit
        assert metric.description.endswith(".")
        # A duration is an observation in seconds; nothing else is.
        assert (metric.unit == "s") == name.endswith("_seconds") == (metric.kind == "observation")
        assert metric.labels, name
        # The node metrics and the recipe metrics name the graph node; primitives their own name.
        assert not {"node", "name"} <= set(metric.labels), name
    assert not metrics.METRICS["node_calls"].recorded
    assert metrics.METRICS["retry_timeouts"].labels == ("name",)
    assert metrics.METRICS["fanout_timeouts"].labels == ("node",)


def test_record_refuses_undeclared_names_and_wrong_labels_while_enabled() -> None:
    metrics.enable()
    with pytest.raises(ValueError, match=r"metrics.record metric must be a declared metric"):
        metrics.record("retry_atempts", name="x")  # a typo
    with pytest.raises(ValueError, match=r"labels of 'retry_attempts' must be exactly name, got"):
        metrics.record("retry_attempts", node="x")
    with pytest.raises(ValueError, match=r"must be exactly name, got none"):
        metrics.record("retry_attempts")
    with pytest.raises(ValueError, match=r"'node_calls', which node classes keep themselves"):
        metrics.record("node_calls", node="x")
    assert metrics.snapshot().series == ()
    metrics.record("circuit_state_changes", name="db", state="open")
    assert metrics.snapshot().value("circuit_state_changes", name="db") == 1


def test_the_kind_comes_from_the_declaration_not_the_name() -> None:
    with metrics.collecting():
        # Counted in keys, though it ends in nothing a suffix rule knew.
        metrics.record("batch_keys", 3, name="b")
        metrics.record("adaptive_limit_size", 4, name="a")  # a gauge
        metrics.record("adaptive_limit_size", -1, name="a")
    kinds = {series.metric: series.kind for series in metrics.snapshot().series}
    assert kinds == {"batch_keys": "counter", "adaptive_limit_size": "gauge"}
    assert metrics.snapshot().value("adaptive_limit_size", name="a") == 3


def test_snapshot_lookups_refuse_undeclared_metrics_and_labels() -> None:
    data = metrics.snapshot()
    with pytest.raises(ValueError, match=r"Snapshot metric must be a declared metric"):
        data.value("timeouts", name="fanout")
    with pytest.raises(ValueError, match=r"labels of 'fanout_timeouts' must be among node, got"):
        data.count("fanout_timeouts", name="fanout")


def test_enabled_is_a_function_not_a_module_flag() -> None:
    assert inspect.isfunction(metrics.enabled)
    assert metrics.enabled() is False
    with metrics.collecting():
        assert metrics.enabled() is True
    assert metrics.enabled() is False


def test_prometheus_export_takes_help_and_types_from_the_declarations() -> None:
    with metrics.collecting():
        metrics.record("retry_attempts", name="fetch")
        metrics.record("pool_size", 4, name="pg")
        metrics.record("event_loop_stall_seconds", 0.2, node="slow")
    text = generate_latest(metrics.prometheus_registry()).decode()
    for name in ("retry_attempts", "pool_size", "event_loop_stall_seconds", "node_calls"):
        suffix = "_total" if metrics.METRICS[name].kind == "counter" else ""
        assert f"# HELP act_{name}{suffix} {metrics.METRICS[name].description}" in text
    assert "# TYPE act_retry_attempts_total counter" in text
    assert "# TYPE act_pool_size gauge" in text
    assert "# TYPE act_event_loop_stall_seconds summary" in text
    assert 'act_event_loop_stall_seconds_count{node="slow"} 1.0' in text


def _imports(module: Path) -> set[str]:
    """Every act_operator_lib module ``module`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("act_operator_lib")}


def test_recording_and_exporting_do_not_import_each_other() -> None:
    package = ROOT / "act_operator_lib"
    export = _imports(package / "_internal" / "prometheus_export.py")
    declarations = _imports(package / "_internal" / "metric_types.py")
    assert "act_operator_lib.metrics" not in export
    assert declarations == set()  # the bottom of the stack: both sides read it
    assert "act_operator_lib._internal.metric_types" in _imports(package / "metrics.py")


# -- one meaning for the node and name labels, in real graphs --------------------------------


async def _sleep_then(value: int) -> int:
    await asyncio.sleep(0.05 if value else 0)
    return value


class Spread(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        policy = FanoutPolicy(limit=2, item_timeout=0.01, on_error="collect")
        outcome = await bounded_map(_sleep_then, [0, 1, 2], policy)
        return {"out": f"{len(outcome.errors)} timed out"}


class Gather(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        found = await gather_by_deadline(
            {"slow": lambda: asyncio.sleep(5)}, deadline=deadline_after(0.02)
        )
        return {"out": ",".join(found.cancelled)}


class Hedge(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        calls = 0

        async def slow_first() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(5 if calls == 1 else 0)
            return "backup"

        return {"out": await hedged(slow_first, HedgePolicy(delay=0.01))}


class RetryFetch(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        try:
            await retry_call(lambda: asyncio.sleep(5), budget=0.02, name="fetch-user")
        except TimeoutError:
            return {"out": "gave up"}
        return {"out": "done"}


async def test_recipe_metrics_name_the_graph_node_and_primitives_the_users_name() -> None:
    builder = StateGraph(State)
    builder.add_node("spread", Spread())
    builder.add_node("gather", Gather())
    builder.add_node("hedge", Hedge())
    builder.add_node("lookup", RetryFetch())
    builder.add_edge(START, "spread")
    builder.add_edge("spread", "gather")
    builder.add_edge("gather", "hedge")
    builder.add_edge("hedge", "lookup")
    graph = builder.compile()
    with metrics.collecting():
        result = await graph.ainvoke({"n": 0})
    assert result["out"] == "gave up"

    labels = {(s.metric, tuple(sorted(s.labels.items()))) for s in metrics.snapshot().series}
    assert labels == {
        ("fanout_timeouts", (("node", "spread"),)),
        ("gather_by_deadline_timeouts", (("node", "gather"),)),
        ("hedge_started", (("node", "hedge"),)),
        ("retry_timeouts", (("name", "fetch-user"),)),  # retry_call's name, not the node's
    }
    assert metrics.snapshot().value("fanout_timeouts", node="spread") == 2


async def test_current_node_outside_a_graph_is_the_default() -> None:
    assert metrics.current_node() == ""
    assert metrics.current_node("alone") == "alone"
    with metrics.collecting():
        await bounded_map(_sleep_then, [1], FanoutPolicy(item_timeout=0.01, on_error="collect"))
    assert metrics.snapshot().value("fanout_timeouts", node="") == 1


# -- the node-class call protocol --------------------------------------------------------------


class Double(BaseNode):
    def execute(self, state: State) -> dict[str, Any]:
        return {"n": state["n"] * 2}


def _counting(seen: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(below: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(self.name)
            return below(self, state, *args, **kwargs)

        return call

    return wrap


def test_observers_wrap_the_generated_call_side_by_side_and_leave_it_intact() -> None:
    generated = node_classes.generated_call(Double)
    assert generated is Double.__dict__["__call__"]
    signature = inspect.signature(Double.__call__)
    graph = StateGraph(State).add_node("twice", Double()).add_edge(START, "twice").compile()
    seen: list[str] = []
    node_classes.add_call_wrapper("test-observer", _counting(seen))
    try:
        with metrics.collecting():
            assert graph.invoke({"n": 2}) == {"n": 4}
            # What LangGraph and inspect read is the generated call's, under both wrappers.
            assert inspect.signature(Double.__call__) == signature
            assert Double.__call__.__wrapped__ is generated.__wrapped__  # type: ignore[attr-defined]
        assert seen == ["Double"]
        assert metrics.snapshot().nodes["twice"].calls == 1
        # Metrics off: the other observer still runs, and metrics count nothing more.
        assert graph.invoke({"n": 3}) == {"n": 6}
        assert seen == ["Double", "Double"]
        assert metrics.snapshot().nodes["twice"].calls == 1
    finally:
        node_classes.remove_call_wrapper("test-observer")
    assert Double.__dict__["__call__"] is generated


def test_execute_code_is_the_code_the_generated_call_runs() -> None:
    assert node_classes.execute_code(Double) is Double.execute.__code__
    assert Double in node_classes.registered()


class Stall(AsyncBaseNode):
    async def execute(self, state: State) -> dict[str, Any]:
        time.sleep(0.3)  # noqa: ASYNC251  # the stall under test
        return {"n": 1}


async def test_the_blocking_detector_finds_a_node_while_metrics_wrap_its_call() -> None:
    seen: list[str] = []
    node_classes.add_call_wrapper("test-observer", _counting(seen))
    try:
        with metrics.collecting():
            async with BlockingDetector(threshold=0.1) as detector:
                # Called directly: only the execute frame on the stack can name the node.
                await Stall(name="stuck")({"n": 0})
                await asyncio.sleep(0.05)  # the heartbeat after the stall measures it
    finally:
        node_classes.remove_call_wrapper("test-observer")
    assert seen == ["stuck"]
    # A loaded machine may stall the loop elsewhere too; the node's own stall is named.
    assert "stuck" in [stall.node for stall in detector.stalls]
    assert metrics.snapshot().count("event_loop_stall_seconds", node="stuck") >= 1
