"""What a handler can know about the request it serves.

Inside a handler, :func:`current_request` returns the request's id,
subject, headers and deadline::

    def create_user(cmd: CreateUserCommand) -> UserCreated:
        ctx = current_request()
        if ctx and ctx.remaining() is not None and ctx.remaining() < 0.5:
            ...  # not enough time left for the slow path
"""

from __future__ import annotations

import contextvars
import time
from typing import Mapping, Optional

import attrs

from .messages import Kind

__all__ = ["DEADLINE_HEADER", "RequestContext", "current_request"]

#: The NATS header with the caller's timeout in whole milliseconds. The
#: worker counts it from when the request arrives; a caller without a
#: timeout (or a client that only knows the spec) sends none.
DEADLINE_HEADER = "Natsbus-Timeout-Ms"


@attrs.frozen
class RequestContext:
    """The request a handler is serving.

    Attributes:
        subject: ``commands.X`` / ``queries.Y``.
        kind: Command or query.
        message_id: The ``command_id`` / ``query_id``.
        service_id: The caller's ``service_id``.
        headers: The NATS headers sent with the request.
        deadline: When the caller gives up, on the ``time.monotonic()``
            clock; ``None`` when the caller sent no deadline.
    """

    subject: str
    kind: Kind
    message_id: str
    service_id: str
    headers: Mapping[str, str]
    deadline: Optional[float]

    def remaining(self) -> Optional[float]:
        """Seconds left before the caller gives up (may be negative), or ``None``."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def expired(self) -> bool:
        """Whether the caller has already given up."""
        return self.deadline is not None and time.monotonic() >= self.deadline


# RequestContext(...) for the dispatcher, once per request on a worker thread: the
# slots set through their descriptors rather than attrs' frozen __init__
# (object.__setattr__ per field), at a third of the cost. Frozen as ever.
# tests/test_envelope.py checks it builds what RequestContext(...) builds.
_SET_SUBJECT, _SET_KIND, _SET_ID, _SET_SERVICE, _SET_HEADERS, _SET_DEADLINE = (
    RequestContext.__dict__[name].__set__
    for name in ("subject", "kind", "message_id", "service_id", "headers", "deadline")
)


def new_context(
    subject: str,
    kind: Kind,
    message_id: str,
    service_id: str,
    headers: Mapping[str, str],
    deadline: Optional[float],
) -> RequestContext:
    """``RequestContext(subject, kind, message_id, service_id, headers, deadline)``, built faster."""
    ctx = object.__new__(RequestContext)
    _SET_SUBJECT(ctx, subject)
    _SET_KIND(ctx, kind)
    _SET_ID(ctx, message_id)
    _SET_SERVICE(ctx, service_id)
    _SET_HEADERS(ctx, headers)
    _SET_DEADLINE(ctx, deadline)
    return ctx


_CURRENT: contextvars.ContextVar[Optional[RequestContext]] = contextvars.ContextVar("natsbus_request", default=None)


def current_request() -> Optional[RequestContext]:
    """The request being handled on this thread, or ``None`` outside a handler."""
    return _CURRENT.get()


def _enter(ctx: RequestContext) -> contextvars.Token[Optional[RequestContext]]:
    return _CURRENT.set(ctx)


def _leave(token: contextvars.Token[Optional[RequestContext]]) -> None:
    _CURRENT.reset(token)


def parse_deadline(headers: Optional[Mapping[str, str]], received: float) -> Optional[float]:
    """The monotonic deadline a request's headers give, or ``None``.

    Anything malformed is ignored: a worker that cannot know behaves as if
    no deadline was sent.
    """
    if not headers:
        return None
    value = headers.get(DEADLINE_HEADER)
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        return None
    if ms <= 0 or ms > 7 * 24 * 3600 * 1000:
        return None
    return received + ms / 1000.0
