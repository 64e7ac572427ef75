"""A node class is checked when it is defined: bad definitions fail then, with a clear error."""

from __future__ import annotations

import abc
from typing import Any

import pytest

from act_operator_lib import AsyncBaseNode, BaseNode


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
        match=r"Bad\.execute\(\) has parameter 'cfg'; allowed after 'state': config, runtime",
    ):

        class Bad(BaseNode):
            def execute(self, state: dict[str, Any], cfg: Any) -> None:
                return None


@pytest.mark.parametrize("signature", ["*args", "**kwargs", "store=None", "writer=None"])
def test_other_parameters_are_refused(signature: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def execute(self, state, {signature}): return None", namespace)
    name = signature.strip("*").split("=")[0]
    with pytest.raises(TypeError, match=rf"has parameter '{name}'; allowed after 'state'"):
        type("Bad", (BaseNode,), {"execute": namespace["execute"]})


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
