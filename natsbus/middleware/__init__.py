"""Middleware around commands and queries, on both sides; logging and tracing built in.

Client middleware runs on the calling thread around
:meth:`~natsbus.CommandBus.execute` and :meth:`~natsbus.QueryBus.ask`;
handler middleware runs on the worker thread around each handler. Neither
ever runs on the Bus's loop thread::

    from natsbus.middleware import LoggingMiddleware, TraceContextMiddleware

    chain = [TraceContextMiddleware(), LoggingMiddleware()]
    commands = CommandBus(bus, middleware=chain)
    pool = WorkerPool(bus, "user-service", middleware=chain)

The built-ins work on either side; write your own by subclassing
:class:`ClientMiddleware` (hooks get a :class:`ClientCall`) or
:class:`HandlerMiddleware` (hooks get a :class:`HandlerRequest`) and
overriding any of ``before``, ``after`` and ``on_error``.

How a chain ``[a, b, c]`` runs::

    a.before -> b.before -> c.before -> the call -> c.after    -> b.after    -> a.after
                                                 or c.on_error -> b.on_error -> a.on_error

* ``after`` / ``on_error`` run in reverse order, and only for the
  middlewares whose ``before`` returned normally.
* A hook that raises is logged (logger ``natsbus.middleware``, with the
  traceback) and the call goes on as if it had not raised.
* Unless it raises :class:`StopCall` ``(error)``, which stops the call with
  ``error``: from ``before``, the call is not made (no request is sent, the
  handler does not run) and the middlewares already entered get
  ``on_error(error)``; from ``after``, the call fails with ``error`` and the
  outer middlewares get ``on_error``; from ``on_error``, ``error`` replaces
  the error being unwound. The caller gets ``error`` itself.
* In handler middleware, raising a :class:`~natsbus.ServiceError` (e.g.
  ``NotFoundError``, or a subclass with its own ``code``) stops the call
  with it too; the caller gets the error envelope with its text and code.
  A ``StopCall`` whose error is no ``ServiceError`` answers a
  :class:`~natsbus.HandlerError` (500) with the error's text.
* ``KeyboardInterrupt`` and other non-``Exception`` errors are never
  swallowed: they stop the call as well.

Not covered yet: ``submit()``, ``execute_many()`` and ``ask_many()`` run no
middleware, and a :class:`~natsbus.QueryCache` hit runs none (no request is
made).

Trace context: :class:`TraceContextMiddleware` carries a W3C ``traceparent``
(and ``tracestate``) in the NATS headers of each request; inside a handler,
:func:`current_trace` gives the caller's trace id, and calls the handler
makes continue that trace. :class:`OpenTelemetryMiddleware` (the ``otel``
extra) makes a CLIENT span per call and a SERVER span per handler run.
natsbus never imports OpenTelemetry unless that middleware is built.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import sys
import time
from functools import partial
from typing import Any, Callable, Dict, Generic, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import attrs

from ..context import RequestContext
from ..errors import HandlerError, NatsBusError, ServiceError, TraceContextError
from ..messages import Kind

__all__ = [
    "ClientCall",
    "ClientMiddleware",
    "HandlerMiddleware",
    "HandlerRequest",
    "LoggingMiddleware",
    "Middleware",
    "OpenTelemetryMiddleware",
    "StopCall",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TraceContext",
    "TraceContextMiddleware",
    "current_trace",
    "run_client",
    "run_handler",
    "use_trace",
]

logger = logging.getLogger("natsbus.middleware")

#: The W3C trace-context headers, as sent in NATS headers.
TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"

C = TypeVar("C", contravariant=True)
T = TypeVar("T")


# -- what the hooks see ---------------------------------------------------------


@attrs.define(eq=False)
class ClientCall:
    """One command or query being sent, as client middleware sees it.

    Attributes:
        message: The command or query object (already encoded: replacing
            it changes nothing on the wire).
        message_type: Its wire type name.
        kind: Command or query.
        subject: ``commands.X`` / ``queries.Y``.
        message_id: The request's ``command_id`` / ``query_id``.
        service_id: The ``service_id`` the request carries (the caller's).
        timeout: Seconds the caller waits; ``None`` for no limit.
        headers: NATS headers to send with the request; ``before`` may add
            to them (natsbus's own deadline header wins on a clash).
        started: ``time.perf_counter()`` when the chain began.
        extras: Room for middleware state between hooks; key it by the
            middleware instance (``call.extras[self]``).
    """

    message: Any
    message_type: str
    kind: Kind
    subject: str
    message_id: str
    service_id: str = ""
    timeout: Optional[float] = None
    headers: Dict[str, str] = attrs.Factory(dict)
    started: float = attrs.Factory(time.perf_counter)
    extras: Dict[Any, Any] = attrs.Factory(dict)

    @property
    def elapsed(self) -> float:
        """Seconds since :attr:`started`."""
        return time.perf_counter() - self.started


@attrs.define(eq=False)
class HandlerRequest:
    """One request a handler is about to serve, as handler middleware sees it.

    Attributes:
        context: The :class:`~natsbus.RequestContext` (id, subject, headers,
            deadline), also what :func:`natsbus.current_request` returns.
        message: The decoded message; ``before`` may replace it and the
            handler gets the replacement.
        message_type: The wire type name.
        handler: The handler's name (for logs).
        started: ``time.perf_counter()`` when the chain began.
        extras: Room for middleware state between hooks; key it by the
            middleware instance (``request.extras[self]``).
    """

    context: RequestContext
    message: Any
    message_type: str
    handler: str = ""
    started: float = attrs.Factory(time.perf_counter)
    extras: Dict[Any, Any] = attrs.Factory(dict)

    @property
    def subject(self) -> str:
        """``commands.X`` / ``queries.Y``."""
        return self.context.subject

    @property
    def kind(self) -> Kind:
        """Command or query."""
        return self.context.kind

    @property
    def message_id(self) -> str:
        """The request's ``command_id`` / ``query_id``."""
        return self.context.message_id

    @property
    def service_id(self) -> str:
        """The caller's ``service_id``."""
        return self.context.service_id

    @property
    def headers(self) -> Mapping[str, str]:
        """The NATS headers the request came with."""
        return self.context.headers

    @property
    def elapsed(self) -> float:
        """Seconds since :attr:`started`."""
        return time.perf_counter() - self.started


# -- the hooks ---------------------------------------------------------------------


class Middleware(Generic[C]):
    """Hooks around a call; override the ones you need (each does nothing by default).

    ``Middleware[ClientCall]`` goes on a bus, ``Middleware[HandlerRequest]``
    on a worker pool; the built-ins are
    ``Middleware[Union[ClientCall, HandlerRequest]]`` and go on either.
    Keep per-call state in ``call.extras``, not on ``self``: one instance
    serves many threads at once.
    """

    def before(self, call: C) -> None:
        """Called before the request is sent / the handler runs.

        Raise :class:`StopCall` to stop the call; any other exception is
        logged and ignored.
        """

    def after(self, call: C, result: Any) -> None:
        """Called with the result once the call succeeded (reverse order)."""

    def on_error(self, call: C, error: BaseException) -> None:
        """Called with the error once the call failed (reverse order).

        ``error`` is what the caller gets (client side) or what the handler
        raised (handler side); raise :class:`StopCall` to replace it.
        """


class ClientMiddleware(Middleware[ClientCall]):
    """Base class for middleware around ``execute()`` / ``ask()`` (``CommandBus(middleware=...)``).

    The hooks run on the calling thread and get a :class:`ClientCall`;
    ``before`` runs once the request envelope is built (so the message id
    is known) and may add NATS headers; ``after`` gets the typed result.
    Retries happen inside the chain: one ``execute()`` is one call.
    """


class HandlerMiddleware(Middleware[HandlerRequest]):
    """Base class for middleware around each handler (``WorkerPool(middleware=...)``).

    The hooks run on the worker thread, with :func:`natsbus.current_request`
    set, and get a :class:`HandlerRequest`; ``after`` gets the handler's
    return value before it is encoded. Raising a
    :class:`~natsbus.ServiceError` (or :class:`StopCall`) answers the
    caller with that error instead of running the handler.
    """


class StopCall(NatsBusError):
    """Raised by a hook to stop the call with ``error`` (see the module docs).

    Args:
        error: What the caller gets. On the handler side a
            :class:`~natsbus.ServiceError` keeps its code; anything else
            answers a :class:`~natsbus.HandlerError` with its text.

    Attributes:
        error: The error given.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error = error


# -- the chain ---------------------------------------------------------------------------

_Call = Union[ClientCall, HandlerRequest]


def run_client(
    middleware: Sequence[Middleware[ClientCall]],
    call: ClientCall,
    send: Callable[[], T],
    result: Optional[Callable[[T], object]] = None,
) -> T:
    """Run ``send()`` inside a client middleware chain; return what it returns.

    The bus calls this for you; it is public for custom transports and tests.

    Args:
        middleware: The chain, outermost first.
        call: What the hooks get; ``call.headers`` is read by ``send``.
        send: Sends the request and returns its outcome.
        result: Picks what ``after`` hooks get out of ``send()``'s value
            (default: the value itself).

    Raises:
        BaseException: what ``send()`` raised, or a :class:`StopCall`'s error.
    """
    return _run(middleware, call, send, _same if result is None else result, False)


def run_handler(
    middleware: Sequence[Middleware[HandlerRequest]],
    request: HandlerRequest,
    handler: Callable[[Any], T],
) -> T:
    """Run ``handler(request.message)`` inside a handler middleware chain.

    :meth:`natsbus.Dispatcher.dispatch` calls this for you.

    Raises:
        BaseException: what the handler raised, a :class:`~natsbus.ServiceError`
            a hook stopped the call with, or a :class:`~natsbus.HandlerError`
            for a :class:`StopCall` whose error is no ``ServiceError``.
    """

    return _run(middleware, request, partial(_call_with_message, handler, request), _same, True)


def _same(value: T) -> T:
    return value


def _call_with_message(handler: Callable[[Any], T], request: HandlerRequest) -> T:
    return handler(request.message)  # read now: a before-hook may have replaced it


def _run(
    chain: Sequence[Middleware[Any]],
    call: _Call,
    proceed: Callable[[], T],
    result_of: Callable[[T], object],
    handler_side: bool,
) -> T:
    entered: List[Middleware[Any]] = []
    stopped: Optional[BaseException] = None
    for middleware in chain:
        try:
            middleware.before(call)
        except BaseException as exc:
            stopped = _stop_error(exc, handler_side, call.subject)
            if stopped is None:
                _log_hook_failure(middleware, "before", call)
                continue
            break
        entered.append(middleware)
    if stopped is not None:
        # Raised here, outside the except clause, so the caller's error does
        # not carry the StopCall as its context.
        raise _fail(entered, call, stopped, handler_side)
    try:
        value = proceed()
    except BaseException as exc:
        error = _fail(entered, call, exc, handler_side)
        if error is exc:
            raise
        raise error from exc  # a hook replaced it
    failed = _unwind(entered, call, result_of(value), None, handler_side)
    if failed is not None:
        raise failed
    return value


def _fail(entered: List[Middleware[Any]], call: _Call, error: BaseException, handler_side: bool) -> BaseException:
    """Unwind ``on_error`` for ``error``; return the error the call ends with."""
    final = _unwind(entered, call, None, error, handler_side)
    return error if final is None else final


def _unwind(
    entered: List[Middleware[Any]],
    call: _Call,
    result: Any,
    error: Optional[BaseException],
    handler_side: bool,
) -> Optional[BaseException]:
    """Run ``after`` / ``on_error`` in reverse; return the error the call ends with."""
    for middleware in reversed(entered):
        hook = "after" if error is None else "on_error"
        try:
            if error is None:
                middleware.after(call, result)
            else:
                middleware.on_error(call, error)
        except BaseException as exc:
            stop = _stop_error(exc, handler_side, call.subject)
            if stop is None:
                _log_hook_failure(middleware, hook, call)
            else:
                error = stop
    return error


def _stop_error(exc: BaseException, handler_side: bool, subject: str) -> Optional[BaseException]:
    """The error a hook's exception stops the call with; ``None`` when it does not stop it."""
    if isinstance(exc, StopCall):
        error = exc.error
    elif not isinstance(exc, Exception):
        return exc  # KeyboardInterrupt, SystemExit, ...: never swallowed
    elif handler_side and isinstance(exc, ServiceError):
        return exc
    else:
        return None
    if handler_side and not isinstance(error, ServiceError):
        error = HandlerError(str(error) or type(error).__name__, subject=subject)
    return error


def _log_hook_failure(middleware: object, hook: str, call: _Call) -> None:
    logger.error(
        "middleware %s failed in %s() for %s %s; the call goes on",
        type(middleware).__qualname__,
        hook,
        call.subject,
        call.message_id,
        exc_info=True,
    )


# -- W3C trace context ---------------------------------------------------------------

_HEX = frozenset("0123456789abcdef")


def _check_hex_id(length: int) -> Callable[[Any, Any, str], None]:
    def check(instance: Any, attribute: Any, value: str) -> None:
        if len(value) != length or not _HEX.issuperset(value):
            raise TraceContextError(f"{attribute.name} must be {length} lowercase hex digits, got {value!r}")
        if value == "0" * length:
            raise TraceContextError(f"{attribute.name} must not be all zeros")

    return check


def _check_flags(instance: Any, attribute: Any, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise TraceContextError(f"flags must be 0..255, got {value!r}")


def _random_hex(bits: int) -> str:
    while True:
        value = random.getrandbits(bits)
        if value:  # an all-zero id is invalid
            return f"{value:0{bits // 4}x}"


@attrs.frozen
class TraceContext:
    """A W3C trace context: a trace, the current span in it, and its flags.

    Attributes:
        trace_id: 32 lowercase hex digits, not all zeros.
        span_id: 16 lowercase hex digits, not all zeros: this span (the
            ``parent-id`` of the ``traceparent`` sent for it).
        flags: The trace flags (bit 0: sampled).
        parent_id: The span this one is a child of, when known.
        tracestate: The vendor ``tracestate`` carried along unchanged.

    Raises:
        TraceContextError: an id or the flags are malformed.
    """

    trace_id: str = attrs.field(validator=_check_hex_id(32))
    span_id: str = attrs.field(validator=_check_hex_id(16))
    flags: int = attrs.field(default=1, validator=_check_flags)
    parent_id: Optional[str] = None
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        """Whether the sampled flag is set."""
        return bool(self.flags & 1)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` header value for this span: ``00-{trace_id}-{span_id}-{flags}``."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    @classmethod
    def new(cls, *, sampled: bool = True) -> TraceContext:
        """A new trace with random ids (a root span)."""
        return cls(_random_hex(128), _random_hex(64), 1 if sampled else 0)

    def child(self) -> TraceContext:
        """A new span in the same trace, whose parent is this one."""
        return TraceContext(self.trace_id, _random_hex(64), self.flags, self.span_id, self.tracestate)

    @classmethod
    def parse(cls, traceparent: str, tracestate: str = "") -> TraceContext:
        """Read a ``traceparent`` header value, as the W3C Trace Context spec says.

        Version ``00`` is exactly ``00-<32 hex>-<16 hex>-<2 hex>``, all lowercase,
        with neither id all zeros; version ``ff`` is invalid; a later version
        may append ``-...``, which is ignored. Surrounding spaces and tabs
        are stripped.

        Args:
            traceparent: The header value.
            tracestate: The ``tracestate`` header value, kept as it is.

        Returns:
            The context, its ``span_id`` being the sender's span.

        Raises:
            TraceContextError: the value is malformed; the text says how.
        """
        value = traceparent.strip(" \t")
        shown = repr(value[:80])
        if len(value) < 55:
            raise TraceContextError(f"traceparent {shown} is {len(value)} characters; it needs 55")
        version = value[:2]
        if not _HEX.issuperset(version):
            raise TraceContextError(f"traceparent {shown}: version {version!r} is not 2 lowercase hex digits")
        if version == "ff":
            raise TraceContextError(f"traceparent {shown}: version ff is invalid")
        if value[2] != "-" or value[35] != "-" or value[52] != "-":
            raise TraceContextError(f"traceparent {shown}: expected version-traceid-parentid-flags")
        if len(value) > 55 and (version == "00" or value[55] != "-"):
            raise TraceContextError(f"traceparent {shown}: version {version} must be exactly 55 characters")
        flags = value[53:55]
        if not _HEX.issuperset(flags):
            raise TraceContextError(f"traceparent {shown}: flags {flags!r} are not 2 lowercase hex digits")
        try:
            return cls(value[3:35], value[36:52], int(flags, 16), tracestate=tracestate.strip(" \t"))
        except TraceContextError as exc:
            raise TraceContextError(f"traceparent {shown}: {exc}") from None

    @classmethod
    def from_headers(cls, headers: Optional[Mapping[str, str]]) -> Optional[TraceContext]:
        """The context in ``headers`` (any case of the names), or ``None`` when absent or invalid."""
        if not headers:
            return None
        traceparent = _header(headers, TRACEPARENT_HEADER)
        if traceparent is None:
            return None
        try:
            return cls.parse(traceparent, _header(headers, TRACESTATE_HEADER) or "")
        except TraceContextError as exc:
            logger.debug("ignoring an invalid trace context: %s", exc)
            return None


def _header(headers: Mapping[str, str], name: str) -> Optional[str]:
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


_TRACE: contextvars.ContextVar[Optional[TraceContext]] = contextvars.ContextVar("natsbus_trace", default=None)


def current_trace() -> Optional[TraceContext]:
    """The trace natsbus knows on this thread, or ``None``.

    Inside a handler run by a pool with :class:`TraceContextMiddleware`:
    the handler's span in the caller's trace (``trace_id`` is the caller's,
    ``parent_id`` the caller's span). Inside :func:`use_trace`: that one.
    Calls made meanwhile through a bus with the middleware continue it.
    """
    return _TRACE.get()


@contextlib.contextmanager
def use_trace(traceparent: Union[TraceContext, str, None], tracestate: str = "") -> Iterator[Optional[TraceContext]]:
    """Make calls in the block continue a trace, e.g. the one of an incoming HTTP request.

    Example::

        with use_trace(request.headers.get("traceparent")):
            commands.execute(CreateUserCommand(...))   # same trace id

    Args:
        traceparent: A :class:`TraceContext` (used as it is), a
            ``traceparent`` header value (continued by a new child span;
            an invalid one is ignored, as the W3C spec asks), or ``None``.
        tracestate: The ``tracestate`` value going with a header string.

    Yields:
        The current trace in the block.
    """
    trace: Optional[TraceContext]
    if isinstance(traceparent, str):
        incoming = TraceContext.from_headers({TRACEPARENT_HEADER: traceparent, TRACESTATE_HEADER: tracestate})
        trace = incoming.child() if incoming is not None else None
    else:
        trace = traceparent
    token = _TRACE.set(trace)
    try:
        yield trace
    finally:
        _TRACE.reset(token)


def _ambient_trace() -> Optional[TraceContext]:
    """The trace a call from this thread continues: OpenTelemetry's current span, else ours."""
    otel_trace = sys.modules.get("opentelemetry.trace")  # never imported here: only used if already loaded
    if otel_trace is not None:
        span_context = otel_trace.get_current_span().get_span_context()
        if span_context.is_valid:
            return TraceContext(
                f"{span_context.trace_id:032x}",
                f"{span_context.span_id:016x}",
                int(span_context.trace_flags),
                tracestate=span_context.trace_state.to_header(),
            )
    return _TRACE.get()


# -- built-ins ---------------------------------------------------------------------------


class TraceContextMiddleware(Middleware[Union[ClientCall, HandlerRequest]]):
    """W3C trace context in NATS headers (``traceparent``, ``tracestate``), on either side.

    Client side: the request carries a new span of the calling thread's
    trace (OpenTelemetry's current span when OpenTelemetry is in use, else
    :func:`current_trace`), or of a new trace when there is none. A
    ``traceparent`` another middleware already set is left alone.

    Handler side: the caller's ``traceparent`` is read and validated; the
    handler then runs in a new span of that trace (a new trace when the
    header is missing or invalid), visible as :func:`current_trace`, so
    calls it makes continue the caller's trace.

    Args:
        sampled: The sampled flag of the traces it starts.
    """

    def __init__(self, *, sampled: bool = True) -> None:
        self.sampled = sampled

    def before(self, call: Union[ClientCall, HandlerRequest]) -> None:
        """Client: add ``traceparent`` to the headers. Handler: enter the caller's trace."""
        if isinstance(call, HandlerRequest):
            incoming = TraceContext.from_headers(call.headers)
            trace = incoming.child() if incoming is not None else TraceContext.new(sampled=self.sampled)
            call.extras[self] = _TRACE.set(trace)
            return
        if _header(call.headers, TRACEPARENT_HEADER) is not None:
            return
        parent = _ambient_trace()
        span = parent.child() if parent is not None else TraceContext.new(sampled=self.sampled)
        call.headers[TRACEPARENT_HEADER] = span.traceparent
        if span.tracestate:
            call.headers[TRACESTATE_HEADER] = span.tracestate

    def after(self, call: Union[ClientCall, HandlerRequest], result: Any) -> None:
        """Handler: leave the trace."""
        self._leave(call)

    def on_error(self, call: Union[ClientCall, HandlerRequest], error: BaseException) -> None:
        """Handler: leave the trace."""
        self._leave(call)

    def _leave(self, call: Union[ClientCall, HandlerRequest]) -> None:
        token = call.extras.pop(self, None)
        if token is not None:
            _TRACE.reset(token)


class LoggingMiddleware(Middleware[Union[ClientCall, HandlerRequest]]):
    """One log line per call, on either side: type, id, duration, outcome (and trace id).

    Client: ``execute CreateUserCommand cmd-1f… in 2.31ms: ok trace=4bf9…``;
    handler: ``handle GetUserQuery qry-9c… from web in 0.40ms: NotFoundError
    (404): User 7 not found``. Each record also has the fields as
    ``extra`` attributes (``natsbus_message_id``, ``natsbus_duration_ms``,
    ``natsbus_outcome``, ... ) for structured log formatters.

    Args:
        level: The level of successful calls.
        error_level: The level of failed calls.
        logger: A logger or a logger name.
    """

    def __init__(
        self,
        level: int = logging.INFO,
        *,
        error_level: int = logging.WARNING,
        logger: Union[logging.Logger, str] = "natsbus.requests",
    ) -> None:
        self.level = level
        self.error_level = error_level
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def after(self, call: Union[ClientCall, HandlerRequest], result: Any) -> None:
        """Log the call as ``ok``."""
        self._emit(call, self.level, None)

    def on_error(self, call: Union[ClientCall, HandlerRequest], error: BaseException) -> None:
        """Log the call with its error."""
        self._emit(call, self.error_level, error)

    def _emit(self, call: Union[ClientCall, HandlerRequest], level: int, error: Optional[BaseException]) -> None:
        if not self.logger.isEnabledFor(level):
            return
        ms = call.elapsed * 1000.0
        if isinstance(call, HandlerRequest):
            side, verb, origin = "handler", "handle", f" from {call.service_id}" if call.service_id else ""
            trace = TraceContext.from_headers(call.headers) or current_trace()
        else:
            side, verb, origin = "client", "execute" if call.kind is Kind.COMMAND else "ask", ""
            trace = TraceContext.from_headers(call.headers)
        outcome = "ok" if error is None else _describe(error)
        trace_id = trace.trace_id if trace is not None else ""
        self.logger.log(
            level,
            "%s %s %s%s in %.2fms: %s%s",
            verb,
            call.message_type,
            call.message_id,
            origin,
            ms,
            outcome,
            f" trace={trace_id}" if trace_id else "",
            extra={
                "natsbus_side": side,
                "natsbus_kind": call.kind.value,
                "natsbus_message_type": call.message_type,
                "natsbus_message_id": call.message_id,
                "natsbus_subject": call.subject,
                "natsbus_duration_ms": ms,
                "natsbus_outcome": "ok" if error is None else "error",
                "natsbus_error": "" if error is None else type(error).__name__,
                "natsbus_trace_id": trace_id,
            },
        )


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    if isinstance(error, ServiceError):
        return f"{name} ({error.code}): {error.message}"
    text = str(error)
    return f"{name}: {text}" if text else name


class OpenTelemetryMiddleware(Middleware[Union[ClientCall, HandlerRequest]]):
    """OpenTelemetry spans: CLIENT per call, SERVER per handler run (the ``otel`` extra).

    Client side: a span ``send {subject}`` (kind CLIENT), a child of the
    current OpenTelemetry span (or of :func:`current_trace`), injected into
    the request headers with the configured propagator (the global one,
    W3C ``traceparent`` by default). Handler side: the caller's context
    is extracted from the headers and the handler runs in a span
    ``process {subject}`` (kind SERVER), made current, so spans the handler
    starts and calls it makes are its children. Attributes:
    ``messaging.system`` = ``nats``, ``messaging.destination.name``,
    ``messaging.message.id``, ``messaging.operation.name``,
    ``natsbus.kind``, ``natsbus.message_type``; a failure sets the ERROR
    status, ``error.type`` and an exception event.

    Args:
        tracer_provider: The provider to get the tracer from; default the
            global one.
        propagator: A ``TextMapPropagator``; default the global one.

    Raises:
        ImportError: opentelemetry-api is not installed
            (``pip install 'natsbus[otel]'``).
    """

    def __init__(self, tracer_provider: Any = None, *, propagator: Any = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:
            raise ImportError("OpenTelemetryMiddleware needs opentelemetry-api: pip install 'natsbus[otel]'") from exc
        from .._version import __version__

        self.tracer = trace.get_tracer("natsbus", __version__, tracer_provider=tracer_provider)
        self.propagator = propagator

    def _textmap(self) -> Any:
        if self.propagator is not None:
            return self.propagator
        from opentelemetry import propagate

        return propagate.get_global_textmap()

    def before(self, call: Union[ClientCall, HandlerRequest]) -> None:
        """Start the span; client: inject its context into the headers; handler: make it current."""
        from opentelemetry import context, trace

        if isinstance(call, HandlerRequest):
            carrier = {key.lower(): value for key, value in call.headers.items()}
            parent = self._textmap().extract(carrier)
            span = self.tracer.start_span(
                f"process {call.subject}",
                context=parent,
                kind=trace.SpanKind.SERVER,
                attributes=_span_attributes(call, "process"),
            )
            token = context.attach(trace.set_span_in_context(span, parent))
            call.extras[self] = (span, token)
            return
        parent = context.get_current()
        if not trace.get_current_span(parent).get_span_context().is_valid:
            ours = _TRACE.get()
            if ours is not None:
                remote = trace.SpanContext(
                    int(ours.trace_id, 16),
                    int(ours.span_id, 16),
                    is_remote=True,
                    trace_flags=trace.TraceFlags(ours.flags),
                )
                parent = trace.set_span_in_context(trace.NonRecordingSpan(remote), parent)
        span = self.tracer.start_span(
            f"send {call.subject}",
            context=parent,
            kind=trace.SpanKind.CLIENT,
            attributes=_span_attributes(call, "send"),
        )
        call.extras[self] = (span, None)
        self._textmap().inject(call.headers, context=trace.set_span_in_context(span, parent))

    def after(self, call: Union[ClientCall, HandlerRequest], result: Any) -> None:
        """End the span."""
        self._end(call, None)

    def on_error(self, call: Union[ClientCall, HandlerRequest], error: BaseException) -> None:
        """Record the error on the span (status ERROR) and end it."""
        self._end(call, error)

    def _end(self, call: Union[ClientCall, HandlerRequest], error: Optional[BaseException]) -> None:
        entry: Optional[Tuple[Any, Any]] = call.extras.pop(self, None)
        if entry is None:
            return
        span, token = entry
        from opentelemetry import context, trace

        try:
            if error is not None:
                span.set_attribute("error.type", type(error).__qualname__)
                if isinstance(error, ServiceError):
                    span.set_attribute("natsbus.error_code", error.code)
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, _describe(error)))
        finally:
            if token is not None:
                context.detach(token)
            span.end()


def _span_attributes(call: Union[ClientCall, HandlerRequest], operation: str) -> Dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": call.subject,
        "messaging.operation.name": operation,
        "messaging.operation.type": operation,
        "messaging.message.id": call.message_id,
        "natsbus.kind": call.kind.value,
        "natsbus.message_type": call.message_type,
    }
