"""Every concrete node class defined so far, for the tools that act on all of them.

``base_node`` registers each class once its ``__call__`` is installed; metrics swap that
``__call__`` for an instrumented one and back, the blocking detector recognises
``execute`` frames. A ``WeakSet`` so a class defined in a test or a notebook cell is
forgotten with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["add_listener", "node_classes", "register", "remove_listener"]

node_classes: weakref.WeakSet[type[Any]] = weakref.WeakSet()
"""Node classes with a generated ``__call__`` (abstract intermediates are left out)."""

_listeners: list[Callable[[type[Any]], None]] = []


def register(cls: type[Any]) -> None:
    """Remember ``cls`` and tell the listeners (e.g. enabled metrics) about it."""
    node_classes.add(cls)
    for listener in tuple(_listeners):
        listener(cls)


def add_listener(listener: Callable[[type[Any]], None]) -> None:
    """Call ``listener(cls)`` for every node class defined from now on."""
    if listener not in _listeners:
        _listeners.append(listener)


def remove_listener(listener: Callable[[type[Any]], None]) -> None:
    """Stop calling ``listener``; a no-op when it was not added."""
    if listener in _listeners:
        _listeners.remove(listener)
