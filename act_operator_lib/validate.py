"""Checks for configuration values, one way for every policy and setting.

    @dataclass(frozen=True, slots=True, kw_only=True)
    class FanoutPolicy:
        limit: int = 10
        item_timeout: float | None = None

        def __post_init__(self) -> None:
            check_int("FanoutPolicy", "limit", self.limit, min=1)
            check_number("FanoutPolicy", "item_timeout", self.item_timeout, gt=0, allow_none=True)

Each function returns the value it accepted and raises with one message form,
``"{owner} {field} must be {what is allowed}, got {value!r}"``: a value of the wrong type
raises ``TypeError``, a value of the right type outside the allowed range (NaN and
infinities included) raises ``ValueError``. ``bool`` is never accepted as an int or a
number (``True`` is almost always a mistake for a count or a duration), and an int or a
float never as a ``bool``.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, TypeVar

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_instance",
    "check_int",
    "check_number",
    "check_str",
]

T = TypeVar("T")


def _fail(error: type[Exception], owner: str, field: str, what: str, value: object) -> Exception:
    return error(f"{owner} {field} must be {what}, got {value!r}")


def _bounds(**limits: float | None) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{signs[name]} {limit:g}" for name, limit in limits.items() if limit is not None]
    return " and ".join(parts)


def _or_none(what: str, allow_none: bool) -> str:
    return f"{what} or None" if allow_none else what


def check_int(
    owner: str,
    field: str,
    value: Any,
    *,
    min: int | None = None,
    max: int | None = None,
    note: str = "",
) -> int:
    """Return ``value`` if it is an int (not a bool) within ``min``/``max`` (inclusive).

    ``note`` is added in parentheses, to say what a special value means ("0: no limit").
    """
    bounds = _bounds(ge=min, le=max)
    what = f"an int {bounds}".rstrip() + (f" ({note})" if note else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(TypeError, owner, field, what, value)
    if (min is not None and value < min) or (max is not None and value > max):
        raise _fail(ValueError, owner, field, what, value)
    return value


def check_number(
    owner: str,
    field: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    finite: bool = True,
    allow_none: bool = False,
    unit: str = "",
    note: str = "",
) -> Any:
    """Return ``value`` if it is an int or float (not a bool) within the bounds given.

    ``finite=True`` (the default) refuses infinities; NaN is always refused. ``unit``
    names what the number counts ("seconds"), ``note`` what a special value means.
    """
    if value is None and allow_none:
        return None
    kind = "a finite number" if finite else "a number"
    if unit:
        kind = f"{kind} of {unit}"
    bounds = _bounds(gt=gt, ge=ge, lt=lt, le=le)
    what = _or_none(f"{kind} {bounds}".rstrip() + (f" ({note})" if note else ""), allow_none)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(TypeError, owner, field, what, value)
    if (
        math.isnan(value)
        or (finite and math.isinf(value))
        or (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (lt is not None and not value < lt)
        or (le is not None and not value <= le)
    ):
        raise _fail(ValueError, owner, field, what, value)
    return value


def check_choice(owner: str, field: str, value: Any, choices: Collection[T]) -> T:
    """Return ``value`` if it is one of ``choices``; of another type: ``TypeError``."""
    shown = [repr(choice) for choice in choices]
    what = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
    if not any(type(value) is type(choice) for choice in choices):
        raise _fail(TypeError, owner, field, what, value)
    if value not in choices:
        raise _fail(ValueError, owner, field, what, value)
    return value  # type: ignore[no-any-return]


def check_str(
    owner: str, field: str, value: Any, *, allow_empty: bool = False, allow_none: bool = False
) -> Any:
    """Return ``value`` if it is a str (non-empty unless ``allow_empty``), or None if allowed."""
    if value is None and allow_none:
        return None
    what = _or_none("a str" if allow_empty else "a non-empty str", allow_none)
    if not isinstance(value, str):
        raise _fail(TypeError, owner, field, what, value)
    if not value and not allow_empty:
        raise _fail(ValueError, owner, field, what, value)
    return value


def check_bool(owner: str, field: str, value: Any) -> bool:
    """Return ``value`` if it is ``True`` or ``False`` (``1`` and ``"yes"`` are not)."""
    if not isinstance(value, bool):
        raise _fail(TypeError, owner, field, "a bool", value)
    return value


def check_callable(
    owner: str, field: str, value: Any, *, what: str = "a callable", allow_none: bool = False
) -> Any:
    """Return ``value`` if it is callable (or None if allowed); ``what`` describes it."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise _fail(TypeError, owner, field, _or_none(what, allow_none), value)
    return value


def check_instance(
    owner: str,
    field: str,
    value: Any,
    types: type[T] | tuple[type[T], ...],
    *,
    what: str = "",
    allow_none: bool = False,
) -> Any:
    """Return ``value`` if it is an instance of ``types`` (or None if allowed)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, types):
        if not what:
            classes = types if isinstance(types, tuple) else (types,)
            what = " or ".join(_article(cls.__name__) for cls in classes)
        raise _fail(TypeError, owner, field, _or_none(what, allow_none), value)
    return value


def _article(name: str) -> str:
    return f"an {name}" if name[:1].lower() in "aeio" else f"a {name}"
