"""OpenTelemetry middleware (the ``otel`` extra): spans for calls and handler runs.

OpenTelemetry is imported only when :class:`OpenTelemetryMiddleware` is built.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

from .._version import __version__
from ..errors import ServiceError
from .chain import ClientCall, HandlerRequest, Middleware
from .log import describe_error
from .trace import TRACE

__all__ = ["OpenTelemetryMiddleware"]


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
            ours = TRACE.get()
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
                span.set_status(trace.Status(trace.StatusCode.ERROR, describe_error(error)))
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
