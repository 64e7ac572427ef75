"""OpenTelemetry traces: a span per node execution, client calls under their node's span.

    from opentelemetry.sdk.trace import TracerProvider
    from act_operator_lib import tracing

    tracing.enable()            # or tracing.enable(tracer_provider=provider); tracing.disable()
    await graph.ainvoke(inputs)  # "invoke_workflow LangGraph" > "node Fetch" > "GET", "SELECT"

Needs the ``otel`` extra (``opentelemetry-api`` only; the SDK and the exporters are the
application's choice). ``enable()`` follows the global tracer provider unless given one.

**What gets a span.** Every ``BaseNode`` / ``AsyncBaseNode`` node, cookbook nodes included,
and each plain function node wrapped with ``traced`` (``builder.add_node("fetch",
traced(fetch))``). The node's span is the current span while its code runs, and OTel's
context lives in ``contextvars``, so whatever the node's code traces is its child: an
``HttpClient`` request or ``PostgresPool`` query (client spans, below), a chat model call
traced by another instrumentation, tasks it starts, work sent through ``offload`` (its
thread pool copies the context), the tasks of a ``Send`` fan-out (each a node span of its
own under the run) and graphs invoked inside the node (their nodes' spans are its
children). When the application has no current span when it invokes the graph, the run
gets a span (``invoke_workflow <graph name>``) and the node spans are its children; it is
started by the run's first traced node, dated back to the run's start, and ended with the
run (LangChain's configure hook adds a tiny callback handler for that while tracing is
enabled).

**Names and attributes.** Following the OpenTelemetry GenAI semantic conventions 1.44
(still "development" stability) where they say something: the run span is
``invoke_workflow {graph}`` with ``gen_ai.operation.name="invoke_workflow"`` and
``gen_ai.workflow.name``; the thread id is ``gen_ai.conversation.id``; failures set
``error.type``, record the exception and set the status to ERROR. The conventions have no
span for a step of a workflow, so a node span is ``node {name}`` (kind INTERNAL) with
LangGraph's own identities under ``langgraph.*``: ``langgraph.node.name`` (the graph's
name for the node), ``langgraph.step``, ``langgraph.task.id``, ``langgraph.node.attempt``
(1, 2, ... under a ``RetryPolicy``: one span per attempt) and ``langgraph.checkpoint.ns``
(inside subgraphs). An ``interrupt()`` or ``Command(graph=PARENT)`` leaving a node is the
event ``langgraph.interrupt`` / ``langgraph.parent_command``, never an error; a
cancellation is the event ``cancelled``. HTTP client spans follow the stable HTTP
conventions (``GET``, ``http.request.method``, ``url.full`` without query or credentials,
``server.address``, ``server.port``, ``http.response.status_code``), PostgreSQL spans the
stable database conventions (``SELECT``, ``db.system.name="postgresql"``,
``db.operation.name``, ``db.query.text`` holding the parameterised statement, never the
values).

**Client spans are written here, not by the OpenTelemetry aiohttp-client / asyncpg
instrumentations.** Their current releases pin an opentelemetry-semantic-conventions
version that conflicts with the one ``langgraph-api`` (``langgraph dev``) needs, so they
cannot be installed next to it; ``client_span`` is the small helper the recipes use. If
you install those instrumentations anyway, their spans are children of our client spans.

**Recipe events.** While tracing, each value a recipe records through ``metrics.record``
is an event on the current span (the node's), named after the declared metric
(``rate_limiter_wait_seconds``, ``retry_attempts`` with ``attempt``, ``delay`` and
``error.type``, ``circuit_state_changes`` with ``state``, ``cache_hits``, ``cache_misses``,
``singleflight_joins``, ``fanout_timeouts``, ``retry_timeouts``, ``batch_calls``...) with
its ``value`` and labels; a ``BlockingDetector`` stall is the event
``event_loop_stall_seconds`` on the span of the node it blocked, dated at the stall's start.

**Free when off.** Without ``enable()``, or when ``enable()`` found no tracer provider,
node classes keep the ``__call__`` ``base_node`` generated (one frame, no check) and
``metrics.record`` stays one flag test; ``client_span`` and ``event`` return after one check.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from act_operator_lib import metrics
from act_operator_lib._internal import node_classes

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = [
    "ClientSpan",
    "client_span",
    "disable",
    "enable",
    "enabled",
    "event",
    "recording",
    "set_attribute",
    "traced",
]

F = TypeVar("F", bound=Callable[..., Any])

_enabled = False
# Whether spans are being made: enable() found a tracer provider (the one check clients make).
_tracing = False


def enabled() -> bool:
    """Whether ``enable()`` is in force."""
    return _enabled


_lock = threading.Lock()
_otel: Any = None  # act_operator_lib._internal.otel once enable() has imported it
_set_env = False
_WRAPPER = "otel"  # the key of the call wrapper tracing installs around node classes


class ClientSpan(Protocol):
    """What ``client_span`` returns: a ``with`` block around the call and ``set``."""

    def set(self, key: str, value: Any) -> None: ...
    def __enter__(self) -> ClientSpan: ...
    def __exit__(self, *exc: Any) -> None: ...


class _NoSpan:
    """What ``client_span`` gives while tracing is off: a ``with`` block doing nothing."""

    __slots__ = ()

    def set(self, key: str, value: Any) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def _import() -> Any:
    global _otel
    if _otel is None:
        try:
            from act_operator_lib._internal import otel
        except ModuleNotFoundError as missing:
            raise ModuleNotFoundError(
                f"act_operator_lib.tracing needs opentelemetry-api ({missing});"
                ' install it with: pip install "act-operator-lib[otel]"'
            ) from missing
        _otel = otel
    return _otel


def enable(tracer_provider: TracerProvider | None = None, *, run_spans: bool = True) -> None:
    """Trace every node class, present and future, and the recipes' client calls.

    ``tracer_provider``: where spans go; ``None`` (the default) follows OpenTelemetry's
    global provider. Calling it again switches the provider. ``disable()`` undoes it.

    With no provider given and no global provider set yet, it records that tracing is
    wanted and changes nothing else: node classes keep their generated call and the
    clients' check stays false, so an application that installs the extra but configures
    no provider pays nothing per node. API change: it used to install the node wrapper and
    look for a global provider on every node call; now call it after setting the global
    provider (``trace.set_tracer_provider``, as OpenTelemetry's SDK set-up does at start).

    Each value a recipe records (``metrics.record``: a rate-limiter wait, a retry, a
    circuit transition, a cache hit, a batch, ...) becomes an event on the current span,
    named after the declared metric, with ``value``, its labels and details; a
    ``BlockingDetector`` stall becomes an event on the span of the node it blocked.

    ``run_spans``: give a run with no current span its own span. It takes a LangChain
    callback handler on every run, which costs LangGraph far more per node than the node
    spans do (``benchmarks/bench_otel.py``); an application that invokes graphs under its
    own span (a request's) can turn it off, and the node spans are then children of
    that span. Without a tracer provider configured the handler is not installed.
    """
    global _enabled, _set_env, _tracing
    otel = _import()
    if tracer_provider is not None and not hasattr(tracer_provider, "get_tracer"):
        raise TypeError(
            f"tracing.enable tracer_provider must be an OpenTelemetry TracerProvider or None,"
            f" got {tracer_provider!r}"
        )
    with _lock:
        otel.configure(tracer_provider)
        live = tracer_provider is not None or otel.live_tracer() is not None
        otel.run_spans = wanted = run_spans and live
        otel.enabled = _tracing = live
        if live:
            # Beside the metrics wrapper, if any: node_classes installs both (see there).
            node_classes.add_call_wrapper(_WRAPPER, otel.traced_call)
            metrics.add_sink(otel.metric_event)
        else:
            node_classes.remove_call_wrapper(_WRAPPER)
            metrics.remove_sink(otel.metric_event)
        if wanted and os.environ.get(otel.RUNS_ENV) is None:
            os.environ[otel.RUNS_ENV] = "true"
            _set_env = True
            _register_run_hook(otel)
        elif not wanted and _set_env:
            os.environ.pop(otel.RUNS_ENV, None)
            _set_env = False
        _enabled = True


def disable() -> None:
    """Stop tracing: node classes get their plain ``__call__`` back. Idempotent."""
    global _enabled, _set_env, _tracing
    with _lock:
        _enabled = _tracing = False
        if _otel is None:
            return
        _otel.enabled = _otel.run_spans = False
        _otel.configure(None)
        node_classes.remove_call_wrapper(_WRAPPER)
        metrics.remove_sink(_otel.metric_event)
        if _set_env:
            os.environ.pop(_otel.RUNS_ENV, None)
            _set_env = False


@contextlib.contextmanager
def recording(tracer_provider: TracerProvider | None = None) -> Iterator[None]:
    """Trace inside the ``with`` block, then leave tracing as it was.

    with tracing.recording(provider):
        graph.invoke({"n": 0})
    """
    was_enabled = _enabled
    enable(tracer_provider)
    try:
        yield
    finally:
        if not was_enabled:
            disable()


def traced(fn: F, *, name: str | None = None) -> F:
    """A plain function node that runs inside its own span when tracing is enabled.

        builder.add_node("fetch", traced(fetch))

    LangGraph sees ``fn``'s signature (what it injects) through ``functools.wraps``; the
    span is named after the graph's name for the node, else ``name`` or ``fn.__name__``.
    Needs the ``otel`` extra only once tracing is enabled.
    """
    if not callable(fn):
        raise TypeError(f"tracing.traced fn must be callable, got {fn!r}")
    label = name or getattr(fn, "__name__", type(fn).__name__)
    try:
        otel = _import()
    except ModuleNotFoundError:
        return fn  # no OpenTelemetry: nothing could ever be traced
    wrapper: F = otel.traced_function(fn, label)
    return wrapper


def client_span(
    describe: Callable[..., tuple[str, Mapping[str, Any]]],
    *args: Any,
    covered_by: str | None = None,
) -> ClientSpan:
    """A CLIENT span around one call, current for the ``with`` block, child of the node's.

        def _describe(method: str, url: str) -> tuple[str, dict[str, Any]]:
            return method, {"http.request.method": method, "url.full": url}

        with tracing.client_span(_describe, "GET", url) as span:
            response = await session.get(url)
            span.set("http.response.status_code", response.status)

    ``describe(*args)`` gives the span's name and attributes; it is called only while
    tracing is on, so building them costs nothing when off (the call returns a shared
    no-op after one check). An exception leaving the block sets ``error.type``, records it
    and sets the status (an interrupt or a cancellation is an event instead).

    ``covered_by`` names an OpenTelemetry instrumentation that makes the same spans, as
    ``"module:Instrumentor"`` (``"opentelemetry.instrumentation.asyncpg:AsyncPGInstrumentor"``):
    while the application has it instrumented, this returns the no-op and that package's
    span, a child of the node's like this one, stands alone (no span is made twice).
    """
    if not _tracing:
        return _NO_SPAN
    if covered_by is not None and _otel.instrumented(covered_by):
        return _NO_SPAN
    name, attributes = describe(*args)
    span: ClientSpan | None = _otel.client_span(name, attributes)
    return _NO_SPAN if span is None else span


def set_attribute(key: str, value: Any) -> None:
    """Set an attribute on the current span (a client span inside ``client_span``); no-op
    when tracing is off."""
    if _tracing:
        _otel.set_attribute(key, value)


def event(name: str, **attributes: Any) -> None:
    """Add an event to the current span (a node's, when called inside one); no-op when off.

    tracing.event("rate_limiter.wait", **{"act.limiter.name": "api", "act.wait.seconds": 0.2})
    """
    if _tracing:
        _otel.add_event(name, attributes)


def _register_run_hook(otel: Any) -> None:
    """Once per process: LangChain adds ``RunSpans`` to callback managers while enabled."""
    if getattr(otel, "hook_registered", False):
        return
    from contextvars import ContextVar

    from langchain_core.tracers.context import register_configure_hook

    register_configure_hook(
        ContextVar("act_operator_lib_otel_runs", default=None),
        True,
        otel.RunSpans,
        otel.RUNS_ENV,
    )
    otel.hook_registered = True


def _stall_began(frame: Any, start_ns: int, node: str | None) -> Any:
    """For ``BlockingDetector``'s watchdog: the span of the node blocked at ``frame``, or
    ``None`` (tracing off, or no traced node on that stack)."""
    if not _tracing:
        return None
    return _otel.stall_began(frame, start_ns, node)


def _stall_ended(span: Any, duration: float) -> None:
    """For ``BlockingDetector``'s heartbeat: the stall on ``span`` lasted ``duration`` s."""
    _otel.stall_ended(span, duration)
