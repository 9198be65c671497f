"""W3C trace context: carried in NATS headers, continued inside handlers."""

from __future__ import annotations

import contextlib
import contextvars
import random
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import attrs

from ..errors import TraceContextError
from .chain import ClientCall, HandlerRequest, Middleware, logger

__all__ = [
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "TraceContext",
    "TraceContextMiddleware",
    "current_trace",
    "use_trace",
]

#: The W3C trace-context header ``traceparent``, as sent in NATS headers.
TRACEPARENT_HEADER = "traceparent"
#: The W3C trace-context header ``tracestate``, as sent in NATS headers.
TRACESTATE_HEADER = "tracestate"


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


TRACE: contextvars.ContextVar[Optional[TraceContext]] = contextvars.ContextVar("natsbus_trace", default=None)


def current_trace() -> Optional[TraceContext]:
    """The trace natsbus knows on this thread, or ``None``.

    Inside a handler run by a pool with :class:`TraceContextMiddleware`:
    the handler's span in the caller's trace (``trace_id`` is the caller's,
    ``parent_id`` the caller's span). Inside :func:`use_trace`: that one.
    Calls made meanwhile through a bus with the middleware continue it.
    """
    return TRACE.get()


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
    token = TRACE.set(trace)
    try:
        yield trace
    finally:
        TRACE.reset(token)


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
    return TRACE.get()


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
            call.extras[self] = TRACE.set(trace)
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
            TRACE.reset(token)
