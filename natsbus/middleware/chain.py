"""The middleware chain: what the hooks see, the hooks, and how a chain runs.

See :mod:`natsbus.middleware` for the rules a chain follows.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, Sequence, TypeVar, Union

import attrs

from ..context import RequestContext
from ..errors import HandlerError, NatsBusError, ServiceError
from ..messages import Kind

__all__ = [
    "ClientCall",
    "ClientMiddleware",
    "HandlerMiddleware",
    "HandlerRequest",
    "Middleware",
    "StopCall",
    "run_client",
    "run_handler",
]

logger = logging.getLogger("natsbus.middleware")

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
