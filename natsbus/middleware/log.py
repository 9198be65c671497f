"""Logging middleware: one line per call or handler run, with structured fields."""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

from ..errors import ServiceError
from ..messages import Kind
from .chain import ClientCall, HandlerRequest, Middleware
from .trace import TraceContext, current_trace

__all__ = ["LoggingMiddleware", "describe_error"]


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
        outcome = "ok" if error is None else describe_error(error)
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


def describe_error(error: BaseException) -> str:
    name = type(error).__name__
    if isinstance(error, ServiceError):
        return f"{name} ({error.code}): {error.message}"
    text = str(error)
    return f"{name}: {text}" if text else name
