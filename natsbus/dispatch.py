"""Decode a request, run its handler, encode the reply: the step every server path shares.

No NATS here: the WorkerPool runs :meth:`Dispatcher.dispatch` on its worker
threads, the durable consumer on the threads it reserves, and the
in-memory test bus on the caller's thread (or a thread of its own).
"""

from __future__ import annotations

import bisect
import inspect
import logging
import threading
import time
import typing
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple, Union

import attrs

from . import codec
from .context import RequestContext, _enter, _leave, new_context
from .envelope import INVALID_REQUEST_PREFIX, Headers, decode_request, error_reply, peek_id, utc_timestamp
from .errors import (
    ConfigError,
    DeadlineExceededError,
    EnvelopeError,
    HandlerError,
    InvalidRequestError,
    RegistrationError,
    ServiceError,
)
from .messages import Kind, ensure_message_class, message_kind, subject_for, type_name
from .middleware import HandlerRequest, Middleware, run_handler

__all__ = ["DURATION_BUCKETS", "Dispatcher", "EndpointStats", "HandlerRoute", "Late", "NotStarted", "ReplyMemory"]

logger = logging.getLogger("natsbus.worker")

# -- metrics: the request-duration histogram's buckets (natsbus.metrics exports them) --
#: Upper bounds in seconds of the request-duration histogram's buckets (``+Inf`` is implied).
DURATION_BUCKETS: Tuple[float, ...] = (
    *(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0),
)
_BOUNDS_NS = tuple(round(bound * 1e9) for bound in DURATION_BUCKETS)


@attrs.define(eq=False)
class EndpointStats:
    """Counters for one handler, updated by the worker threads.

    Attributes:
        num_requests: Requests handled (successes and errors).
        num_errors: Requests answered with an error envelope.
        processing_time_ns: Total handler-side time in nanoseconds.
        last_error: The last error text, or ``""``.
        durations: Requests counted per :data:`DURATION_BUCKETS` bucket (not
            cumulative; the last one is over the last bound). Busy refusals
            are not in it: their handler never ran.
        expired: Requests not started because their caller had already given up.
        overruns: Requests whose handler overran its time limit.
        refused: Requests refused at once because the pool was full.
    """

    num_requests: int = 0
    num_errors: int = 0
    processing_time_ns: int = 0
    last_error: str = ""
    # -- metrics (natsbus.metrics) --
    durations: List[int] = attrs.Factory(lambda: [0] * (len(_BOUNDS_NS) + 1))
    expired: int = 0
    overruns: int = 0
    refused: int = 0

    @property
    def average_processing_time_ns(self) -> int:
        """Mean time per request in nanoseconds (0 before any request)."""
        return self.processing_time_ns // self.num_requests if self.num_requests else 0


@attrs.define(eq=False)
class HandlerRoute:
    """One registered handler: what it handles and how to call it.

    Attributes:
        kind: Command or query.
        name: The wire type name.
        subject: ``commands.{name}`` / ``queries.{name}``.
        message_class: The attrs class the payload is built into.
        call: The callable that handles one message.
        label: A name for logs (the function or handler class).
        time_limit: Seconds after which the caller gets a timeout error
            (the handler's thread runs on; Python cannot kill it).
        stats: Its counters.
    """

    kind: Kind
    name: str
    subject: str
    message_class: type
    call: Callable[[Any], Any]
    label: str
    time_limit: Optional[float] = None
    stats: EndpointStats = attrs.Factory(EndpointStats)


class NotStarted(NamedTuple):
    """The reply to a request whose handler was never started: a ``(body, headers)`` pair like any other.

    :meth:`Dispatcher.dispatch` answers a request whose caller had already
    given up (its deadline passed before it started) with a 504 error in
    this type: ``isinstance(reply, NotStarted)`` tells that the handler did
    not run, without reading the error text. The idempotency store forgets
    such a request, so that its retry runs. It unpacks, compares and is
    sent as the plain 2-tuple.
    """

    body: bytes
    headers: Headers


class Late(NamedTuple):
    """The reply to a request the watchdog already answered (its handler overran): not to be sent.

    :meth:`Dispatcher.dispatch` returns it when given the request's
    ``claim`` and the watchdog took that claim first. The request was
    counted when the watchdog answered it.
    """

    body: bytes
    headers: Headers


class ReplyMemory(Protocol):
    """Where :meth:`Dispatcher.dispatch` remembers command replies (an idempotency store's ``guard()``).

    For a command with an id, once decoded and not expired, the dispatcher
    calls :meth:`claim`; it runs the handler only when that returned no
    reply, and then calls :meth:`settle` with what it answers (``None``
    when the handler raised a ``BaseException`` past it).
    """

    def claim(
        self, route: HandlerRoute, command_id: str, deadline: Optional[float]
    ) -> Tuple[Optional[Tuple[bytes, Headers]], Any]:
        """``(reply, _)`` to answer with ``reply`` at once; ``(None, token)`` to run the handler."""

    def settle(self, route: HandlerRoute, command_id: str, token: Any, reply: Optional[Tuple[bytes, Headers]]) -> None:
        """Remember ``reply`` for the claim ``token``, or (``None``) forget the claim."""


def _resolve(handler: Any, message_type: Optional[type]) -> Tuple[Callable[[Any], Any], type, str]:
    if inspect.isfunction(handler) or inspect.ismethod(handler):
        fn: Callable[[Any], Any] = handler
        label = getattr(handler, "__qualname__", repr(handler))
    elif callable(getattr(handler, "handle", None)):
        fn = handler.handle
        label = type(handler).__qualname__
    elif callable(handler):
        fn = handler
        label = type(handler).__qualname__
    else:
        raise RegistrationError(f"{handler!r} is not a handler: pass a function or an object with a handle(msg) method")
    if message_type is None:
        try:
            params = [
                p
                for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError) as exc:
            raise RegistrationError(f"cannot inspect handler {label}: {exc}") from None
        if not params:
            raise RegistrationError(f"handler {label} takes no message argument")
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:
            raise RegistrationError(f"cannot resolve the annotations of handler {label}: {exc}") from None
        message_type = hints.get(params[0].name)
        if message_type is None:
            raise RegistrationError(
                f"handler {label} has no type annotation on its message parameter "
                f"{params[0].name!r}; annotate it or pass message_type="
            )
    try:
        ensure_message_class(message_type)
    except TypeError as exc:
        raise RegistrationError(f"handler {label}: {exc}") from None
    return fn, message_type, label


class Dispatcher:
    """Decode a request, run its handler, encode the reply. No NATS inside.

    Thread-safe: handlers run concurrently on the worker threads. The
    in-memory test bus uses it too, so both paths encode alike.

    Args:
        service_id: The service's name (for logs).
        middleware: Handler middleware run around each handler, on the
            worker thread (see :mod:`natsbus.middleware`).
    """

    def __init__(self, service_id: str, middleware: Sequence[Middleware[HandlerRequest]] = ()) -> None:
        self.service_id = service_id
        self.middleware: Tuple[Middleware[HandlerRequest], ...] = tuple(middleware)
        self._routes: Dict[str, HandlerRoute] = {}
        self._stats_lock = threading.Lock()
        #: Requests not started because their caller had already given up.
        self.expired = 0

    @property
    def routes(self) -> List[HandlerRoute]:
        """The registered handlers, in registration order."""
        return list(self._routes.values())

    def route_for(self, subject: str) -> Optional[HandlerRoute]:
        """The handler of ``subject``, if any."""
        return self._routes.get(subject)

    def register(
        self,
        handler: Any,
        *,
        message_type: Optional[type] = None,
        kind: Union[Kind, str, None] = None,
        time_limit: Optional[float] = None,
    ) -> HandlerRoute:
        """Register a handler; see :meth:`WorkerPool.register`."""
        if time_limit is not None and time_limit <= 0:
            raise ConfigError(f"time_limit must be > 0 seconds or None, got {time_limit!r}")
        fn, cls, label = _resolve(handler, message_type)
        declared = message_kind(cls)
        wanted = Kind(kind) if kind is not None else None
        if declared is not None and wanted is not None and declared is not wanted:
            raise RegistrationError(f"{cls.__name__} is a {declared.value}, not a {wanted.value}")
        resolved = declared or wanted
        if resolved is None:
            raise RegistrationError(
                f"{cls.__name__} is neither a Command nor a Query subclass; pass kind='command' or kind='query'"
            )
        name = type_name(cls)
        subject = subject_for(resolved, name)
        existing = self._routes.get(subject)
        if existing is not None:
            raise RegistrationError(
                f"two handlers for {subject}: {existing.label} is already registered, cannot add {label}"
            )
        route = HandlerRoute(resolved, name, subject, cls, fn, label, time_limit)
        self._routes[subject] = route
        return route

    def dispatch(
        self,
        route: HandlerRoute,
        data: bytes,
        max_payload: int = 0,
        *,
        headers: Headers = None,
        deadline: Optional[float] = None,
        failed: Optional[Callable[[BaseException], None]] = None,
        memory: Optional[ReplyMemory] = None,
        claim: Optional[threading.Lock] = None,
    ) -> Tuple[bytes, Headers]:
        """Handle one request body; return the reply body and headers.

        ``failed``, when given, is called with the handler's exception when
        the handler (or its middleware) raised one (the in-memory test bus
        keeps it as the ``__cause__`` of the error its caller gets).
        ``memory``, when given, answers a repeated command from the replies
        it remembers (see :class:`ReplyMemory`); it is consulted after the
        envelope is decoded, so the id is read once. ``claim``, when given,
        is the request's one-shot claim on its reply, shared with the
        watchdog: whoever takes it answers, and a reply the watchdog
        answered first comes back as :class:`Late` (counted once, by the
        watchdog's :meth:`count_overrun`).

        Every failure (an ``Exception``) becomes an error envelope. A
        request whose ``deadline`` (``time.monotonic()``) has passed is not
        started and gets a 504 error, as a :class:`NotStarted` pair. A reply over ``max_payload`` (when > 0)
        becomes an error envelope too. The handler can read the request
        through :func:`natsbus.current_request`.

        Raises:
            BaseException: what the handler raised when it is no
                ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ...):
                never swallowed, as in handler middleware. It is counted as
                an error in the handler's stats; the caller of ``dispatch``
                decides what happens (see ``WorkerPool``).
        """
        started = time.perf_counter_ns()
        kind = route.kind
        message_id = ""
        try:
            envelope = decode_request(data, kind)
            message_id = envelope.id
            if envelope.message_type != route.name:
                raise EnvelopeError(
                    f"{kind.value}_type {envelope.message_type!r} does not match subject {route.subject}"
                )
            try:
                message: Any = codec.structure(envelope.payload, route.message_class)
            except ValueError as exc:
                raise EnvelopeError(str(exc)) from None
        except EnvelopeError as exc:
            if not message_id:
                message_id = peek_id(data)[0] or ""
            invalid = InvalidRequestError(INVALID_REQUEST_PREFIX + str(exc), subject=route.subject)
            logger.info("%s %s rejected: %s", route.subject, message_id or "(no id)", invalid)
            return self._error(route, kind, message_id, invalid, started, claim)
        if deadline is not None and time.monotonic() >= deadline:
            with self._stats_lock:
                self.expired += 1
                route.stats.expired += 1
            logger.info("%s %s not started: its caller already gave up", route.subject, message_id)
            late = DeadlineExceededError(
                f"Deadline exceeded: the caller gave up before {route.subject} started", subject=route.subject
            )
            reply = self._error(route, kind, message_id, late, started, claim)
            return reply if type(reply) is Late else NotStarted(*reply)
        context = new_context(route.subject, kind, message_id, envelope.service_id, headers or {}, deadline)
        if memory is None or kind is not Kind.COMMAND or not message_id:
            return self._run(route, context, message, max_payload, failed, started, claim)
        answer, token = memory.claim(route, message_id, deadline)
        if answer is not None:  # a repeat: the reply already sent (or busy), the handler does not run
            return answer if claim is None or claim.acquire(False) else Late(*answer)
        try:
            reply = self._run(route, context, message, max_payload, failed, started, claim)
        except BaseException:
            memory.settle(route, message_id, token, None)
            raise
        memory.settle(route, message_id, token, reply)
        return reply

    def _run(
        self,
        route: HandlerRoute,
        context: RequestContext,
        message: Any,
        max_payload: int,
        failed: Optional[Callable[[BaseException], None]],
        started: int,
        claim: Optional[threading.Lock],
    ) -> Tuple[bytes, Headers]:
        """Run the handler on ``message`` (inside the middleware) and encode its result or error."""
        kind, message_id = route.kind, context.message_id
        token = _enter(context)
        try:
            if self.middleware:  # the handler inside the handler middleware chain
                result = run_handler(
                    self.middleware, HandlerRequest(context, message, route.name, route.label), route.call
                )
            else:
                result = route.call(message)
        except ServiceError as exc:
            logger.info("%s %s failed: %s", route.label, message_id, exc)
            if failed is not None:
                failed(exc)
            return self._error(route, kind, message_id, exc, started, claim)
        except Exception as exc:  # a handler failure must never take the pool down
            logger.error("handler %s failed on %s", route.label, message_id, exc_info=True)
            if failed is not None:
                failed(exc)
            text = str(exc) or type(exc).__name__
            return self._error(route, kind, message_id, HandlerError(text), started, claim)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit, ...: never swallowed
            # Not taking the claim: the caller of dispatch answers (or not) by it.
            # Already taken, it was the watchdog, which counted this request.
            taken = claim if claim is not None and claim.locked() else None
            self.count(route, started, f"the handler raised {type(exc).__name__}", taken)
            raise
        finally:
            _leave(token)
        try:
            body = codec.dumps(
                {
                    "success": True,
                    f"{kind.value}_id": message_id,
                    "timestamp": utc_timestamp(),
                    "payload": codec.unstructure(result),
                    "error": None,
                }
            )
        except Exception as exc:
            logger.error("cannot encode the result of %s for %s", route.label, message_id, exc_info=True)
            error = HandlerError(f"could not encode the result of {route.name}: {exc}")
            return self._error(route, kind, message_id, error, started, claim)
        if max_payload and len(body) > max_payload:
            error = HandlerError(
                f"reply to {route.name} is {len(body)} bytes, over the server's max payload of {max_payload} bytes"
            )
            logger.error("%s %s: %s", route.label, message_id, error)
            return self._error(route, kind, message_id, error, started, claim)
        if not self.count(route, started, None, claim):
            return Late(body, None)
        return body, None

    def _error(
        self,
        route: HandlerRoute,
        kind: Kind,
        message_id: str,
        error: ServiceError,
        started: int,
        claim: Optional[threading.Lock] = None,
    ) -> Tuple[bytes, Headers]:
        answered = self.count(route, started, error.message, claim)
        reply = error_reply(kind, message_id, error)
        return reply if answered else Late(*reply)

    def count(
        self, route: HandlerRoute, started: int, error: Optional[str], claim: Optional[threading.Lock] = None
    ) -> bool:
        """Count a reply to ``route``: a request, the time since ``started`` (``perf_counter_ns``), its error.

        With the request's ``claim``, it takes the claim first: when the
        watchdog took it already (and counted the request as an overrun),
        only the handler's time is added. Returns whether this reply is the
        one to send.
        """
        answered = claim is None or claim.acquire(False)
        elapsed = time.perf_counter_ns() - started
        stats = route.stats
        bucket = bisect.bisect_left(_BOUNDS_NS, elapsed)  # metrics: the histogram's bucket
        with self._stats_lock:
            stats.processing_time_ns += elapsed
            if answered:
                stats.num_requests += 1
                stats.durations[bucket] += 1
                if error is not None:
                    stats.num_errors += 1
                    stats.last_error = error
        return answered

    def snapshot(self) -> List[Tuple[HandlerRoute, EndpointStats]]:
        """Each route with a copy of its counters, all read at one moment (for ``$SRV.STATS``)."""
        with self._stats_lock:
            return [
                (route, attrs.evolve(route.stats, durations=list(route.stats.durations)))
                for route in self._routes.values()
            ]

    # -- metrics: the replies sent for a handler that did not answer itself --

    def count_overrun(self, route: HandlerRoute, error: str) -> None:
        """Count the timeout error sent for ``route`` (its handler overran its limit): a request and an error."""
        with self._stats_lock:
            route.stats.num_requests += 1
            route.stats.num_errors += 1
            route.stats.overruns += 1
            route.stats.last_error = error

    def count_refused(self, route: HandlerRoute, error: str) -> None:
        """Count a busy refusal of a request to ``route``: a request and an error, no handler time."""
        with self._stats_lock:
            route.stats.num_requests += 1
            route.stats.num_errors += 1
            route.stats.refused += 1
            route.stats.last_error = error
