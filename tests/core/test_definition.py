"""A node class is checked when it is defined: bad definitions fail then, with a clear error."""

from __future__ import annotations

import abc
import inspect
import typing
from typing import Any, Optional

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.errors import NodeError
from langgraph.store.base import BaseStore
from langgraph.types import StreamWriter

from act_operator_lib import AsyncBaseNode, BaseNode


def _define(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run ``source`` with annotations evaluated eagerly (this module's __future__ aside)."""
    exec(compile(source, "<test>", "exec", dont_inherit=True), namespace)
    return namespace


def test_missing_execute_names_the_class() -> None:
    with pytest.raises(TypeError, match=r"NoExecute has no execute\(\); define `def execute"):

        class NoExecute(BaseNode):
            pass


def test_missing_async_execute_suggests_async_def() -> None:
    with pytest.raises(TypeError, match="define `async def execute"):

        class NoExecute(AsyncBaseNode):
            pass


@pytest.mark.parametrize("decorator", [staticmethod, classmethod])
def test_static_and_class_methods_are_refused(decorator: Any) -> None:
    with pytest.raises(TypeError, match=rf"Bad\.execute\(\) is a {decorator.__name__}"):

        class Bad(BaseNode):
            execute = decorator(lambda *args: {})


def test_non_function_execute_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) must be a function, got int"):

        class Bad(BaseNode):
            execute = 3


def test_async_execute_on_base_node_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) is async def; subclass AsyncBaseNode"):

        class Bad(BaseNode):
            async def execute(self, state: dict[str, Any]) -> None:
                return None


def test_sync_execute_on_async_base_node_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) must be async def in an AsyncBaseNode"):

        class Bad(AsyncBaseNode):
            def execute(self, state: dict[str, Any]) -> None:
                return None


def test_generator_execute_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) is a generator"):

        class Bad(BaseNode):
            def execute(self, state: dict[str, Any]) -> Any:
                yield {}


def test_first_parameter_must_be_state() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) has first parameter 'data' after self"):

        class Bad(BaseNode):
            def execute(self, data: dict[str, Any]) -> None:
                return None


def test_state_is_required() -> None:
    with pytest.raises(TypeError, match=r"Bad\.execute\(\) must take \(self, state, \.\.\.\)"):

        class Bad(BaseNode):
            def execute(self) -> None:
                return None


def test_unknown_parameter_names_it_and_what_is_allowed() -> None:
    with pytest.raises(
        TypeError,
        match=r"Bad\.execute\(\) has parameter 'cfg'; allowed after 'state':"
        r" config, runtime, error, store, writer, previous$",
    ):

        class Bad(BaseNode):
            def execute(self, state: dict[str, Any], cfg: Any) -> None:
                return None


@pytest.mark.parametrize("signature", ["*args", "**kwargs", "extra=None", "state2"])
def test_other_parameters_are_refused(signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def execute(self, state, {signature}): return None", namespace)
    name = signature.strip("*").split("=")[0]
    with pytest.raises(TypeError, match=rf"has parameter '{name}'; allowed after 'state'"):
        type("Bad", (BaseNode,), {"execute": namespace["execute"]})


def test_the_injectable_names_are_langgraphs() -> None:
    # LangGraph's own table is private; this keeps the node classes' copy of it honest.
    from langgraph._internal._runnable import KWARGS_CONFIG_KEYS

    from act_operator_lib.base_node import _INJECTED

    assert set(_INJECTED) == {name for name, *_ in KWARGS_CONFIG_KEYS}


@pytest.mark.parametrize(
    ("parameter", "allowed"),
    [
        ("config: dict", "RunnableConfig or RunnableConfig | None"),
        ("config: 'Any'", "RunnableConfig or RunnableConfig | None"),
        ("error", "NodeError"),
        ("error: 'NodeError | None'", "NodeError"),
        ("error: Exception", "NodeError"),
        ("store: int", r"BaseStore or BaseStore \| None"),
        ("writer: 'StreamWriter | None'", "StreamWriter"),
    ],
)
def test_an_annotation_langgraph_would_not_inject_is_refused(parameter: str, allowed: str) -> None:
    namespace = _define(f"def execute(self, state, {parameter}): return None", {})
    name = parameter.split(":")[0]
    with pytest.raises(
        TypeError,
        match=rf"^Bad\.execute\(\) parameter '{name}' must be annotated {allowed}.* for"
        r" LangGraph to inject it, got ('\w|no annotation$)",
    ):
        type("Bad", (BaseNode,), {"execute": namespace["execute"]})


@pytest.mark.parametrize(
    ("parameter", "seen"),
    [
        ("config", inspect.Parameter.empty),
        ("config: RunnableConfig", RunnableConfig),
        ("config: 'RunnableConfig | None'", Optional[RunnableConfig]),  # noqa: UP045
        ("config: 'typing.Optional[RunnableConfig]'", Optional[RunnableConfig]),  # noqa: UP045
        ("config: 'Unimported | None'", None),
        ("config: 'lc.RunnableConfig | None'", Optional[RunnableConfig]),  # noqa: UP045
        ("error: 'NodeError'", NodeError),
        ("store: 'BaseStore | None'", Optional[BaseStore]),  # noqa: UP045
        ("store: 'None | BaseStore'", Optional[BaseStore]),  # noqa: UP045
        ("writer: 'StreamWriter'", StreamWriter),
        ("runtime: 'Runtime[Undefined] | None'", "Runtime[Undefined] | None"),
        ("previous: int", int),
    ],
)
def test_langgraph_sees_an_annotation_it_matches(parameter: str, seen: Any) -> None:
    namespace: dict[str, Any] = {
        "typing": typing,
        "RunnableConfig": RunnableConfig,
        "NodeError": NodeError,
        "BaseStore": BaseStore,
        "StreamWriter": StreamWriter,
    }
    _define(f"def execute(self, state, {parameter}): return None", namespace)
    name = parameter.split(":")[0]
    if seen is None:  # a name that is not LangGraph's, even by spelling
        with pytest.raises(TypeError, match=f"parameter '{name}' must be annotated"):
            type("Node", (BaseNode,), {"execute": namespace["execute"]})
        return
    node = type("Node", (BaseNode,), {"execute": namespace["execute"]})()
    param = inspect.signature(node).parameters[name]
    assert param.annotation == seen
    assert param.default is None


def test_positional_only_injection_is_refused() -> None:
    namespace: dict[str, Any] = {}
    exec("def execute(self, state, config, /): return None", namespace)
    with pytest.raises(TypeError, match="config must be a normal or keyword-only parameter"):
        type("Bad", (BaseNode,), {"execute": namespace["execute"]})


def test_defining_call_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Bad defines __call__; a node implements execute"):

        class Bad(BaseNode):
            def __call__(self, state: Any) -> None:
                return None

            def execute(self, state: Any) -> None:
                return None


def test_abstract_intermediate_classes_are_allowed() -> None:
    class Step(AsyncBaseNode, abc.ABC):
        @abc.abstractmethod
        async def execute(self, state: dict[str, Any]) -> dict[str, Any]: ...

    class Double(Step):
        async def execute(self, state: dict[str, Any]) -> dict[str, Any]:
            return {"n": state["n"] * 2}

    with pytest.raises(TypeError, match="abstract"):
        Step()  # type: ignore[abstract]
    assert Double().name == "Double"


def test_inherited_execute_stays_valid_and_overrides_are_checked() -> None:
    class Parent(BaseNode):
        def execute(self, state: dict[str, Any]) -> dict[str, Any]:
            return {"who": type(self).__name__}

    class Child(Parent):
        pass

    assert Child()({}) == {"who": "Child"}
    with pytest.raises(TypeError, match=r"Broken\.execute\(\) has parameter 'extra'"):

        class Broken(Parent):
            def execute(self, state: dict[str, Any], extra: int) -> dict[str, Any]:  # type: ignore[override]
                return {}
