"""LangGraph's control flow, told apart from failures.

    try:
        value = await operation()
    except CONTROL_FLOW:
        raise  # a pause or a redirect: never retried, counted or wrapped
    except Exception as error:
        ...  # a real failure

LangGraph pauses a run (``interrupt()`` raises ``GraphInterrupt``) and redirects it
(``Command(graph=Command.PARENT)`` raises ``ParentCommand``) with exceptions derived from
``langgraph.errors.GraphBubbleUp``. They pass through a node on their way to the runner,
which never retries them under a node ``RetryPolicy``. Code that catches ``Exception``
inside a node (a retry loop, a circuit breaker, a fan-out, a race) must let them through
the same way: resuming the run re-executes the node, and the ``interrupt()`` call then
returns the human's answer.
"""

from __future__ import annotations

from typing import Final

from langgraph.errors import GraphBubbleUp

__all__ = ["CONTROL_FLOW", "is_control_flow"]

CONTROL_FLOW: Final[tuple[type[Exception], ...]] = (GraphBubbleUp,)
"""The exception classes that are LangGraph control flow, for ``except CONTROL_FLOW:``."""


def is_control_flow(error: BaseException) -> bool:
    """Whether ``error`` is LangGraph pausing or redirecting the run rather than a failure."""
    return isinstance(error, CONTROL_FLOW)
