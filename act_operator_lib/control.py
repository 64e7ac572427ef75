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

``DoNotRetry`` marks a failure that trying again at once cannot fix (an open circuit, a
URL the egress policy refuses): the retry recipe re-raises it at once, whatever its
policy's ``retry_on`` says, and a recipe marks its own errors without importing ``retry``.
"""

from __future__ import annotations

from typing import Final

from langgraph.errors import GraphBubbleUp

__all__ = ["CONTROL_FLOW", "DoNotRetry", "is_control_flow"]

CONTROL_FLOW: Final[tuple[type[Exception], ...]] = (GraphBubbleUp,)
"""The exception classes that are LangGraph control flow, for ``except CONTROL_FLOW:``."""


def is_control_flow(error: BaseException) -> bool:
    """Whether ``error`` is LangGraph pausing or redirecting the run rather than a failure."""
    return isinstance(error, CONTROL_FLOW)


class DoNotRetry:
    """Mixin for exceptions a retry loop must raise at once instead of retrying.

        class CircuitOpenError(DoNotRetry, RuntimeError): ...

    Retrying them only burns the budget: the same call would be refused again.
    """

    __slots__ = ()
