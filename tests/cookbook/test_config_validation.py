"""Every configuration object of the cookbook refuses bad values the same way.

The objects and their fields are found by reading the recipes (their public dataclasses and
type hints), so a new policy, settings class or field is covered without touching this file:
a wrong type raises ``TypeError``, NaN, an infinity, a negative or (unless the field gives
zero a meaning) zero raises ``ValueError``, and every message reads
``"{Owner} {field} must be ..., got {value!r}"``.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from act_operator_lib.cookbook.retry import check_retry_policy
from langgraph.types import RetryPolicy

from act_operator_lib._internal.cookbook_index import find_recipes

# Public dataclasses that describe a result, not a configuration.
NOT_CONFIGURATION = {"BreakerTicket", "EffectTransaction", "WorkerReport"}

# Fields that may hold a secret: a refused value is described by its type, never shown.
SECRET = {("PostgresSettings", "dsn")}

# Fields without a default, given a valid value so the other fields can be tried one by one.
REQUIRED: dict[str, dict[str, Any]] = {
    "FileSettings": {"base_dir": Path("/tmp/act-operator-config-test")},
    "HedgePolicy": {"delay": 0.1},
    "RateLimit": {"rate": 1.0},
}

# Numeric fields where 0 means something ("no limit", "send at once", "never").
ZERO_ALLOWED = {
    ("BatchPolicy", "max_delay"),
    ("HttpSettings", "limit"),
    ("HttpSettings", "limit_per_host"),
    ("HttpSettings", "max_redirects"),
    ("PipelinePolicy", "progress_every"),
    ("PostgresSettings", "min_size"),
    ("RetryPolicy", "initial_interval"),
    ("RetryPolicy", "max_interval"),
}


def configuration_classes() -> list[type]:
    found: list[type] = []
    for recipe in sorted(find_recipes()):
        module = importlib.import_module(f"act_operator_lib.cookbook.{recipe}")
        for name in module.__all__:
            value = getattr(module, name)
            if (
                isinstance(value, type)
                and dataclasses.is_dataclass(value)
                and value.__module__ == module.__name__
                and name not in NOT_CONFIGURATION
            ):
                found.append(value)
    return found


CLASSES = configuration_classes()


def build(cls: type, **values: Any) -> Any:
    """An instance of ``cls`` (``RetryPolicy`` through the retry recipe's check)."""
    if cls is RetryPolicy:
        return check_retry_policy(RetryPolicy(**values))
    return cls(**{**REQUIRED.get(cls.__name__, {}), **values})


def kinds(hint: Any) -> tuple[set[Any], bool]:
    """The non-None types a field's hint allows, and whether it allows None."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return {a for a in args if a is not type(None)}, type(None) in args


def fields_of(cls: type) -> list[tuple[str, set[Any], bool]]:
    hints = typing.get_type_hints(cls)
    if cls is RetryPolicy:
        names = list(RetryPolicy._fields)
    else:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    return [(name, *kinds(hints[name])) for name in names]


def cases(kind: Callable[[set[Any]], bool]) -> list[Any]:
    return [
        pytest.param(cls, name, optional, id=f"{cls.__name__}.{name}")
        for cls in [*CLASSES, RetryPolicy]
        for name, allowed, optional in fields_of(cls)
        if kind(allowed)
    ]


def is_int(allowed: set[Any]) -> bool:
    return allowed == {int}


def is_float(allowed: set[Any]) -> bool:
    return allowed == {float}


def is_str(allowed: set[Any]) -> bool:
    return allowed == {str}


def is_bool(allowed: set[Any]) -> bool:
    return allowed == {bool}


def is_choice(allowed: set[Any]) -> bool:
    return len(allowed) == 1 and typing.get_origin(next(iter(allowed))) is Literal


def refused(cls: type, field: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        build(cls, **{field: value})
    assert type(caught.value) is error
    secret = (cls.__name__, field) in SECRET and not isinstance(value, str)
    shown = type(value).__name__ if secret else repr(value)
    form = rf"{cls.__name__} {field} must be .+, got {re.escape(shown)}"
    assert re.fullmatch(form, str(caught.value)), str(caught.value)


def test_discovery_finds_every_configuration_object() -> None:
    names = {cls.__name__ for cls in CLASSES}
    assert names >= {
        "AdaptiveLimit",
        "BatchPolicy",
        "BreakerPolicy",
        "CacheSettings",
        "CursorStreamPolicy",
        "EgressPolicy",
        "FanoutPolicy",
        "FetchPolicy",
        "FileSettings",
        "HedgePolicy",
        "HttpSettings",
        "HttpStreamPolicy",
        "OffloadSettings",
        "PipelinePolicy",
        "PostgresSettings",
        "RateLimit",
        "TokenStreamPolicy",
    }
    for cls in CLASSES:  # each is a LangGraph-style value: frozen, keyword-only, defaults valid
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, cls
        assert all(f.kw_only for f in dataclasses.fields(cls) if f.init), cls
        build(cls)


@pytest.mark.parametrize(("cls", "field", "optional"), cases(is_int))
def test_int_fields(cls: type, field: str, optional: bool) -> None:
    for wrong in ("10", 2.5, math.nan, math.inf, True, *(() if optional else (None,))):
        refused(cls, field, wrong, TypeError)
    refused(cls, field, -1, ValueError)
    if (cls.__name__, field) in ZERO_ALLOWED:
        assert getattr(build(cls, **{field: 0}), field) == 0
    else:
        refused(cls, field, 0, ValueError)


@pytest.mark.parametrize(("cls", "field", "optional"), cases(is_float))
def test_number_fields(cls: type, field: str, optional: bool) -> None:
    for wrong in ("1", b"1", True, [1.0], *(() if optional else (None,))):
        refused(cls, field, wrong, TypeError)
    for bad in (math.nan, math.inf, -math.inf, -1, -0.5):
        refused(cls, field, bad, ValueError)
    if (cls.__name__, field) in ZERO_ALLOWED:
        assert getattr(build(cls, **{field: 0}), field) == 0
    else:
        refused(cls, field, 0, ValueError)
        refused(cls, field, 0.0, ValueError)
    if optional:
        assert getattr(build(cls, **{field: None}), field) is None


@pytest.mark.parametrize(("cls", "field", "optional"), cases(is_str))
def test_str_fields(cls: type, field: str, optional: bool) -> None:
    for wrong in (3, b"key", ["key"], *(() if optional else (None,))):
        refused(cls, field, wrong, TypeError)
    refused(cls, field, "", ValueError)


@pytest.mark.parametrize(("cls", "field", "optional"), cases(is_bool))
def test_bool_fields(cls: type, field: str, optional: bool) -> None:
    for wrong in (1, 0, "yes", None):
        refused(cls, field, wrong, TypeError)


@pytest.mark.parametrize(("cls", "field", "optional"), cases(is_choice))
def test_choice_fields(cls: type, field: str, optional: bool) -> None:
    refused(cls, field, "no-such-choice", ValueError)
    refused(cls, field, 3, TypeError)
    refused(cls, field, None, TypeError)


def test_the_same_bad_input_fails_the_same_way_everywhere() -> None:
    from act_operator_lib.cookbook.fanout import FanoutPolicy
    from act_operator_lib.cookbook.http_client import HttpSettings
    from act_operator_lib.cookbook.race import HedgePolicy

    with pytest.raises(TypeError, match=r"^HttpSettings limit must be an int >= 0 .*, got '10'$"):
        HttpSettings(limit="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^FanoutPolicy limit must be an int >= 1, got '10'$"):
        FanoutPolicy(limit="10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^HedgePolicy delay must be a finite number of seconds"):
        HedgePolicy(delay="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^HttpSettings timeout must be .*, got nan$"):
        HttpSettings(timeout=math.nan)
