"""The blocking command and query buses: :class:`CommandBus` and :class:`QueryBus`.

They turn a message into a request envelope, send it through the
:class:`~natsbus.Bus`, and turn the reply into a result or a typed error;
retries, the query cache, client middleware, ``submit`` and the pipelined
``*_many`` calls live here too.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import time
from collections import OrderedDict
from collections.abc import Sequence, Sized
from concurrent.futures import Future
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterable,
    List,
    Literal,
    Optional,
    Protocol,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)

import attrs
from attrs import AttrsInstance

from . import codec
from ._transport import GatheredReply, Headers, PendingReply, Reply
from ._transport.pending import await_reply
from .bus import Bus, Completer
from .context import DEADLINE_HEADER
from .envelope import INSTANCE_HEADER, SERVICE_HEADER, decode_response, new_id, service_error, utc_timestamp
from .errors import (
    ConfigError,
    EnvelopeError,
    NatsBusError,
    NotConnectedError,
    RequestTimeoutError,
)
from .messages import (
    Command,
    Kind,
    Query,
    ensure_message_class,
    message_kind,
    result_type,
    scatter_subject,
    subject_for,
    type_name,
)
from .middleware import ClientCall, Middleware, run_client
from .policies import DEFAULT, DefaultType, QueryCache, RetryArg, RetryPolicy, TimeoutArg

__all__ = [
    "CommandBus",
    "DEFAULT",
    "DefaultType",
    "InstanceResult",
    "Message",
    "QueryBus",
    "Requester",
    "RetryArg",
    "TimeoutArg",
]

logger = logging.getLogger("natsbus.bus")

R = TypeVar("R")
T = TypeVar("T")


class Requester(Protocol):
    """What the command and query buses send through: the seam under them.

    A :class:`~natsbus.Bus` sends over NATS; the in-memory test bus
    (:class:`natsbus.testing.InMemoryBus`) runs the real dispatcher in
    process. Either way :class:`CommandBus` and :class:`QueryBus` do the
    rest (envelopes, timeouts, retries, cache, middleware, futures), so a
    test against the in-memory bus runs the client code the app runs.
    """

    def begin_request(
        self,
        subject: str,
        payload: bytes,
        headers: Headers = None,
        notify: Optional[Callable[[PendingReply], None]] = None,
    ) -> PendingReply:
        """Send ``payload`` to ``subject``; return at once with the reply to wait for.

        ``notify`` is called with the :class:`PendingReply` once it is
        complete, on a thread that must not run user code: it only hands off.

        Raises:
            BusClosedError, PayloadTooLargeError, NotConnectedError: before
                anything is sent. Errors after sending (no handler, a
                permission refused) complete the PendingReply instead.
        """
        ...

    def completer(self) -> Completer:
        """The thread that completes ``submit()`` futures for this requester."""
        ...


#: ``progress(done, total)`` of the ``*_many`` calls (``total`` is None for iterators).
Progress = Callable[[int, Optional[int]], None]
#: A message that declares no result type (a plain attrs class): calls take it with ``returns=``.
Message = AttrsInstance


@attrs.frozen
class InstanceResult(Generic[R]):
    """One instance's answer to :meth:`QueryBus.ask_all`: its result, or its error.

    Attributes:
        instance_id: The answering instance's id, as it reports it to
            ``$SRV.PING`` (a pool's ``pool.micro.id``).
        result: Its result (``None`` when it answered with an error).
        error: ``None`` on success; else the error it answered with (a
            :class:`~natsbus.ServiceError` subclass per error code, as
            :meth:`QueryBus.ask` raises), or an
            :class:`~natsbus.EnvelopeError` for a reply that cannot be read.
        service: Its service name (the pool's ``service_id``).
        rtt: Seconds from sending the query to this reply.
    """

    instance_id: str
    result: Optional[R] = None
    error: Optional[NatsBusError] = None
    service: str = ""
    rtt: float = attrs.field(default=0.0, eq=False)

    @property
    def ok(self) -> bool:
        """Whether the instance answered with a result."""
        return self.error is None

    def unwrap(self) -> R:
        """The result; raises the instance's error when it answered with one.

        Raises:
            NatsBusError: the instance's :attr:`error`.
        """
        if self.error is not None:
            raise self.error
        return cast(R, self.result)  # None only when R admits it


@attrs.frozen
class _Route:
    name: str
    subject: str
    result: Any


@attrs.frozen
class _Request:
    """One encoded request, ready to send (and to resend, for retries)."""

    route: _Route
    message_id: str
    payload: Any
    body: bytes
    headers: Headers = None  # headers client middleware added


class _MessageBus:
    _kind: Kind

    def __init__(
        self,
        bus: Requester,
        timeout: Optional[float],
        service_id: str,
        retry: Optional[RetryPolicy] = None,
        middleware: Sequence[Middleware[ClientCall]] = (),
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.bus = bus
        self.timeout = timeout
        self.service_id = service_id
        self.retry = retry
        self.middleware: Tuple[Middleware[ClientCall], ...] = tuple(middleware)
        self._routes: Dict[type, _Route] = {}
        self._type_key = f"{self._kind.value}_type"
        self._id_key = f"{self._kind.value}_id"
        self._header_cache: Dict[float, Dict[str, str]] = {}
        #: The timeout error's text, ``{ms}`` for the milliseconds (the spec's wording).
        self._timeout_text = f"{self._kind.label} request timeout after {{ms}}ms"

    def _route(self, cls: type) -> _Route:
        route = self._routes.get(cls)
        if route is None:
            ensure_message_class(cls)
            kind = message_kind(cls)
            if kind is not None and kind is not self._kind:
                raise ConfigError(
                    f"{cls.__name__} is a {kind.value}; send it with the "
                    f"{'CommandBus' if kind is Kind.COMMAND else 'QueryBus'}"
                )
            name = type_name(cls)
            route = _Route(name, subject_for(self._kind, name), result_type(cls))
            self._routes[cls] = route
        return route

    def _build(self, message: Any) -> _Request:
        route = self._route(type(message))
        message_id = new_id(self._kind)
        payload = codec.unstructure(message)
        body = codec.dumps(
            {
                self._type_key: route.name,
                self._id_key: message_id,
                "service_id": self.service_id,
                "timestamp": utc_timestamp(),
                "payload": payload,
            }
        )
        return _Request(route, message_id, payload, body)

    def _with_id(self, request: _Request, message_id: Any) -> _Request:
        """``request`` sent as ``message_id`` instead (an explicit id; :meth:`_build`, the hot path, stays as it is)."""
        if not isinstance(message_id, str) or not message_id:
            raise ConfigError(f"{self._id_key} must be a non-empty string, got {message_id!r}")
        envelope = codec.loads(request.body)
        envelope[self._id_key] = message_id
        return attrs.evolve(request, message_id=message_id, body=codec.dumps(envelope))

    def _limit(self, timeout: TimeoutArg) -> Optional[float]:
        return self.timeout if timeout is DEFAULT else timeout

    def _connection(self, what: str, why: str = "stores commands in JetStream") -> Bus:
        if not isinstance(self.bus, Bus):
            raise ConfigError(f"{what} {why}: it needs a natsbus.Bus connected to NATS, not {type(self.bus).__name__}")
        return self.bus

    def _call(
        self, request: _Request, timeout: TimeoutArg, returns: Any, retry: RetryArg, grace: TimeoutArg
    ) -> Tuple[Any, Reply]:
        """Send (and resend, per the retry policy); return the result and its reply."""
        limit = self._limit(timeout)
        policy = self.retry if retry is DEFAULT else retry
        attempt = 0
        while True:
            try:
                reply = self._exchange(request, limit, grace)
                return self._result(reply, request.route, request.message_id, returns), reply
            except NatsBusError as exc:
                if policy is None or not policy.should_retry(exc, attempt):
                    raise
                delay = policy.delay(attempt)
                attempt += 1
                logger.info(
                    "%s %s: %s; retry %d in %.2fs", request.route.subject, request.message_id, exc, attempt, delay
                )
                time.sleep(delay)

    def _headers(self, limit: Optional[float]) -> Headers:
        """The deadline header for a call with this timeout (shared; never mutated)."""
        if limit is None:
            return None
        headers = self._header_cache.get(limit)
        if headers is None:
            headers = {DEADLINE_HEADER: str(max(1, round(limit * 1000)))}
            if len(self._header_cache) < 64:
                self._header_cache[limit] = headers
        return headers

    def _exchange(self, request: _Request, limit: Optional[float], grace: TimeoutArg) -> Reply:
        headers = self._headers(limit)
        if request.headers:  # a new dict: the cached deadline headers are shared
            headers = {**request.headers, **headers} if headers else dict(request.headers)
        try:
            pending = self.bus.begin_request(request.route.subject, request.body, headers)
        except NotConnectedError as exc:
            pending, left = self._when_connected(exc, request, headers, None, limit, grace)
            return await_reply(pending, left, self._timeout_text, limit)
        return await_reply(pending, limit, self._timeout_text)

    def _when_connected(
        self,
        error: NotConnectedError,
        request: _Request,
        headers: Headers,
        notify: Optional[Callable[[PendingReply], None]],
        limit: Optional[float],
        grace: TimeoutArg,
    ) -> Tuple[PendingReply, Optional[float]]:
        """The request, sent once the Bus is connected again within the call's reconnect grace.

        Returns:
            Its PendingReply, and what is left of ``limit`` for the reply.

        Raises:
            NotConnectedError: still disconnected when the grace ran out.
        """
        bus = self.bus
        if not isinstance(bus, Bus):  # a requester that knows no reconnects
            raise error
        started = time.monotonic()
        pending = bus.begin_request(
            request.route.subject,
            request.body,
            headers,
            notify,
            reconnect_grace=bus.call_grace(grace, limit),
        )
        return pending, None if limit is None else max(0.0, limit - (time.monotonic() - started))

    def _call_in_chain(
        self, message: Any, request: _Request, timeout: TimeoutArg, returns: Any, retry: Any, grace: TimeoutArg
    ) -> Tuple[Any, Reply]:
        """:meth:`_call` inside the client middleware chain (only called when there is one)."""
        route = request.route
        call = ClientCall(
            message, route.name, self._kind, route.subject, request.message_id, self.service_id, self._limit(timeout)
        )

        def send() -> Tuple[Any, Reply]:
            # Read once the before-hooks have run: they may have added headers.
            sent = attrs.evolve(request, headers=dict(call.headers)) if call.headers else request
            return self._call(sent, timeout, returns, retry, grace)

        return run_client(self.middleware, call, send, lambda pair: pair[0])  # after-hooks get the result

    def _result(self, reply: Reply, route: _Route, message_id: str, returns: Any) -> Any:
        target = returns if returns is not None else route.result
        # The common case, checked inline: a well-formed success for this id.
        try:
            obj = codec.loads(reply.data)
        except (ValueError, TypeError):
            obj = None
        if type(obj) is dict and obj.get("success") is True and obj.get(self._id_key) == message_id:
            return _structure_result(obj.get("payload"), target, route)
        # Anything else gets the full validation and a precise error.
        try:
            envelope = decode_response(reply.data, self._kind)
        except EnvelopeError as exc:
            raise EnvelopeError(f"invalid response from {route.subject}: {exc}") from None
        if envelope.id != message_id:
            raise EnvelopeError(f"response from {route.subject} answers {envelope.id!r}, not {message_id!r}")
        if not envelope.success:
            # An in-memory reply keeps the handler's own exception (natsbus.testing).
            raise service_error(envelope, reply.headers, route.subject) from getattr(reply, "cause", None)
        return _structure_result(envelope.payload, target, route)

    def _submit(self, request: _Request, timeout: TimeoutArg, returns: Any, grace: TimeoutArg) -> Future[Any]:
        limit = self._limit(timeout)
        completer = self.bus.completer()
        headers = self._headers(limit)
        left = limit
        try:
            pending = self.bus.begin_request(request.route.subject, request.body, headers, completer.notify)
        except NotConnectedError as exc:
            pending, left = self._when_connected(exc, request, headers, completer.notify, limit, grace)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        ms = round((limit or 0) * 1000)
        completer.watch(
            pending,
            None if left is None else time.monotonic() + left,
            lambda reply: self._result(reply, request.route, request.message_id, returns),
            future,
            lambda: RequestTimeoutError(self._timeout_text.format(ms=ms), subject=request.route.subject, timeout=limit),
        )
        return future

    def _many(
        self,
        messages: Iterable[Any],
        concurrency: int,
        timeout: TimeoutArg,
        return_exceptions: bool,
        progress: Optional[Callable[[int, Optional[int]], None]],
        returns: Any,
        grace: TimeoutArg,
    ) -> List[Any]:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        limit = self._limit(timeout)
        total = len(messages) if isinstance(messages, Sized) else None
        source = iter(messages)
        results: List[Any] = []
        # pending -> (index, deadline, request); insertion order is send
        # order, and every request has the same timeout, so the first entry
        # always has the earliest deadline.
        outstanding: OrderedDict[PendingReply, Tuple[int, float, _Request]] = OrderedDict()
        done: queue.SimpleQueue[PendingReply] = queue.SimpleQueue()
        finished = 0
        exhausted = False
        # Once a wait for the connection ran out, the rest fail at once until
        # one is sent: one outage costs the whole call one grace, not one each.
        outage = False
        ms = round((limit or 0) * 1000)
        headers = self._headers(limit)

        def settle(index: int, value: Any, failed: bool) -> None:
            nonlocal finished
            if failed and not return_exceptions:
                raise value
            results[index] = value
            finished += 1
            if progress is not None:
                progress(finished, total)

        try:
            while True:
                while not exhausted and len(outstanding) < concurrency:
                    try:
                        message = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    index = len(results)
                    results.append(None)
                    left = limit
                    try:
                        request = self._build(message)
                        try:
                            pending = self.bus.begin_request(request.route.subject, request.body, headers, done.put)
                        except NotConnectedError as exc:
                            call_grace: TimeoutArg = 0.0 if outage else grace
                            pending, left = self._when_connected(exc, request, headers, done.put, limit, call_grace)
                    except NotConnectedError as exc:
                        outage = True
                        settle(index, exc, True)
                        continue
                    except (NatsBusError, TypeError, ValueError) as exc:
                        settle(index, exc, True)
                        continue
                    outage = False
                    deadline = math.inf if left is None else time.monotonic() + left
                    outstanding[pending] = (index, deadline, request)
                if not outstanding:
                    if exhausted:
                        return results
                    continue
                first_deadline = next(iter(outstanding.values()))[1]
                wait = None if first_deadline == math.inf else max(0.0, first_deadline - time.monotonic())
                try:
                    ready = [done.get(timeout=wait)]
                except queue.Empty:
                    ready = []
                while True:  # take every completion that is already there
                    try:
                        ready.append(done.get_nowait())
                    except queue.Empty:
                        break
                for pending in ready:
                    entry = outstanding.pop(pending, None)
                    if entry is None:
                        continue  # expired already
                    index, _, request = entry
                    try:
                        value = self._result(pending.result(), request.route, request.message_id, returns)
                    except NatsBusError as exc:
                        settle(index, exc, True)
                    else:
                        settle(index, value, False)
                now = time.monotonic()
                while outstanding:
                    pending, (index, deadline, request) = next(iter(outstanding.items()))
                    if deadline > now or not pending.abandon():
                        break  # not due, or its reply is being handed over: its notice is on the way
                    del outstanding[pending]
                    error = RequestTimeoutError(
                        self._timeout_text.format(ms=ms), subject=request.route.subject, timeout=limit
                    )
                    settle(index, error, True)
        finally:
            for pending in outstanding:
                pending.abandon()


def _structure_result(payload: Any, target: Any, route: _Route) -> Any:
    if target is None or payload is None:
        return payload
    try:
        return codec.structure(payload, target)
    except ValueError as exc:
        raise EnvelopeError(
            f"response payload from {route.subject} does not fit {getattr(target, '__name__', target)}: {exc}"
        ) from None


class CommandBus(_MessageBus):
    """Sends commands (writes) and waits for their results.

    Args:
        bus: The connection.
        timeout: Default seconds per call (``None``: no limit).
        service_id: The ``service_id`` put in each request envelope.
        retry: A :class:`RetryPolicy` for every call (off by default).
        middleware: Client middleware run around each :meth:`execute`, on
            the calling thread (see :mod:`natsbus.middleware`); not run by
            :meth:`submit` and :meth:`execute_many` yet.
    """

    _kind = Kind.COMMAND

    def __init__(
        self,
        bus: Requester,
        timeout: Optional[float] = 5.0,
        service_id: str = "natsbus",
        *,
        retry: Optional[RetryPolicy] = None,
        middleware: Sequence[Middleware[ClientCall]] = (),
    ) -> None:
        super().__init__(bus, timeout, service_id, retry, middleware)

    @overload
    def execute(
        self,
        command: Command[R],
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        retry: RetryArg = DEFAULT,
        command_id: Optional[str] = None,
    ) -> R: ...

    @overload
    def execute(
        self,
        command: Message,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Type[T],
        retry: RetryArg = DEFAULT,
        command_id: Optional[str] = None,
    ) -> T: ...

    def execute(
        self,
        command: Any,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Optional[type] = None,
        retry: RetryArg = DEFAULT,
        command_id: Optional[str] = None,
    ) -> Any:
        """Send ``command`` to ``commands.{Type}`` and return its result.

        Args:
            command: An attrs instance (a :class:`Command` or any attrs class).
            timeout: Seconds for this call; default the bus's; ``None`` no limit.
            reconnect_grace: Seconds to wait for the connection when the
                Bus is disconnected, within ``timeout``; default the Bus's
                (``NatsConfig.reconnect_grace``, 0.5 s); ``None``: up to
                ``timeout``; 0: fail at once.
            returns: Build the result as this type (overrides ``Command[R]``).
            retry: A :class:`RetryPolicy` for this call, or ``None`` for no
                retry; default the bus's. Retries reuse the ``command_id``.
            command_id: Send with this ``command_id`` instead of a fresh
                ``cmd-<uuid4>``: one derived from your own data makes a
                repeat recognisable to an idempotent pool
                (``WorkerPool(idempotency=...)``).

        Returns:
            The result: an ``R`` for ``Command[R]`` or ``returns``, else
            the reply payload as plain JSON data.

        Raises:
            RequestTimeoutError: ``Command request timeout after 5000ms``.
            NotConnectedError: the Bus stayed disconnected for the whole
                reconnect grace; nothing was sent (safe to retry).
            NoHandlerError: ``No handler available for commands.X``, at once.
            ServiceError: the handler failed; a subclass per error code
                (``InvalidRequestError`` for ``Invalid request format: ...``).
            PayloadTooLargeError: the request is over the server's limit.
            EnvelopeError: the reply is not a valid response envelope.
            BusClosedError: the Bus is closed.
            ConfigError: ``command_id`` is not a non-empty string.
        """
        request = self._build(command)
        if command_id is not None:
            request = self._with_id(request, command_id)
        if self.middleware:
            return self._call_in_chain(command, request, timeout, returns, retry, reconnect_grace)[0]
        return self._call(request, timeout, returns, retry, reconnect_grace)[0]

    @overload
    def submit(
        self,
        command: Command[R],
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        command_id: Optional[str] = None,
    ) -> Future[R]: ...

    @overload
    def submit(
        self,
        command: Message,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Type[T],
        command_id: Optional[str] = None,
    ) -> Future[T]: ...

    def submit(
        self,
        command: Any,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Optional[type] = None,
        command_id: Optional[str] = None,
    ) -> Future[Any]:
        """Send ``command`` now; return a ``concurrent.futures.Future`` of its result.

        The future fails with the errors :meth:`execute` raises once the
        request is sent (the timeout included); errors found before sending
        (a closed Bus, a payload over the limit, a bad message, no connection
        within ``reconnect_grace``, which ``submit()`` waits for) are raised
        here. No retries: a future is one attempt. Callbacks run on a natsbus
        helper thread shared by the Bus's futures (never the loop): keep
        them short.

        Args:
            command: An attrs instance.
            timeout: Seconds; default the bus's; ``None`` no limit.
            reconnect_grace: As for :meth:`execute`.
            returns: As for :meth:`execute`.
            command_id: As for :meth:`execute`.

        Raises:
            ConfigError: ``command_id`` is not a non-empty string.
            BusClosedError, PayloadTooLargeError, MessageTypeError, NotConnectedError: before sending.
        """
        request = self._build(command)
        if command_id is not None:
            request = self._with_id(request, command_id)
        return self._submit(request, timeout, returns, reconnect_grace)

    @overload
    def execute_many(
        self,
        messages: Iterable[Command[R]],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[False] = False,
        progress: Optional[Progress] = None,
    ) -> List[R]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Command[R]],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = None,
    ) -> List[Union[R, Exception]]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[False] = False,
        progress: Optional[Progress] = None,
        returns: Type[T],
    ) -> List[T]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = None,
        returns: Type[T],
    ) -> List[Union[T, Exception]]: ...

    def execute_many(
        self,
        messages: Iterable[Any],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: bool = False,
        progress: Optional[Progress] = None,
        returns: Optional[type] = None,
    ) -> List[Any]:
        """Execute many commands from one thread, pipelined.

        At most ``concurrency`` requests are in flight at once; results come
        back in input order. ``messages`` may be any iterable (a generator
        is consumed lazily, so huge inputs need not fit in memory).

        Args:
            messages: The commands.
            concurrency: Requests in flight at most.
            timeout: Seconds per command.
            reconnect_grace: As for :meth:`execute`, for the whole call: once
                a wait for the connection ran out, the commands after it
                fail at once (until one is sent again).
            return_exceptions: Put each failure (a natsbus exception) in
                the result list instead of raising the first one.
            progress: Called as ``progress(done, total)`` after each
                command finishes (``total`` is ``None`` for iterators).
            returns: As for :meth:`execute`.

        Returns:
            The results (and, with ``return_exceptions``, errors) in input order.

        Raises:
            NatsBusError: the first failure, unless ``return_exceptions``;
                the commands still in flight are abandoned.
        """
        return self._many(messages, concurrency, timeout, return_exceptions, progress, returns, reconnect_grace)

    def with_timeout(self, seconds: Optional[float]) -> CommandBus:
        """A copy of this bus with another default timeout."""
        return CommandBus(self.bus, seconds, self.service_id, retry=self.retry, middleware=self.middleware)

    # -- durable commands; natsbus.durable does the work ----------------

    def send(self, command: Any, *, command_id: Optional[str] = None, durable: Any = None) -> str:
        """Store ``command`` in JetStream for a durable worker; return its ``command_id``.

        Fire and forget: returns once JetStream has stored it, whether or
        not a worker runs now. It goes to ``durable.commands.{Type}``,
        never to ``commands.{Type}``; a pool started with ``durable=True``
        runs it. ``Nats-Msg-Id`` is the ``command_id``, so sending the same
        ``command_id`` again within the duplicate window stores it once.
        See :mod:`natsbus.durable`.

        Args:
            command: An attrs command instance.
            command_id: Use this id (e.g. one derived from your own data,
                to make re-sends safe); default a fresh ``cmd-<uuid4>``.
            durable: A :class:`~natsbus.DurableConfig`; default the defaults.

        Returns:
            The ``command_id``, for :meth:`result`.

        Raises:
            JetStreamError: JetStream is off, or did not store it.
            IncompatibleSettingsError: the stream exists with other settings.
            MessageTypeError: not an attrs class, or a query.
            PayloadTooLargeError: over the server's max payload.
        """
        from .durable.client import send_on

        return send_on(
            self._connection("send()"), self.service_id, self.timeout, self.retry, command, command_id, durable
        )

    def result(self, command_id: str, *, wait: float = 0.0, returns: Any = None, durable: Any = None) -> Any:
        """The result of a command sent with :meth:`send`, waiting up to ``wait`` seconds for it.

        Args:
            command_id: What :meth:`send` returned.
            wait: Seconds to wait for the result to be stored (0: look once).
            returns: Build the result as this type (default: plain JSON data).
            durable: A :class:`~natsbus.DurableConfig`; default the defaults.

        Returns:
            The handler's result.

        Raises:
            ResultNotReadyError: no result stored within ``wait`` (still
                waiting, running or being retried; or expired, or unknown).
            ServiceError: the handler's error reply, a subclass per code;
                also after the command was dead-lettered (its last error).
        """
        from .durable.client import result_on

        return result_on(self._connection("result()"), command_id, wait, returns, durable)


class QueryBus(_MessageBus):
    """Sends queries (reads) and waits for their results.

    Args:
        bus: The connection.
        timeout: Default seconds per call (``None``: no limit).
        service_id: The ``service_id`` put in each request envelope.
        retry: A :class:`RetryPolicy` for every call (off by default).
        cache: A :class:`QueryCache` for results (off by default).
        middleware: Client middleware run around each :meth:`ask` that
            sends a request (not on a cache hit), on the calling thread
            (see :mod:`natsbus.middleware`); not run by :meth:`submit` and
            :meth:`ask_many` yet.
    """

    _kind = Kind.QUERY

    def __init__(
        self,
        bus: Requester,
        timeout: Optional[float] = 3.0,
        service_id: str = "natsbus",
        *,
        retry: Optional[RetryPolicy] = None,
        cache: Optional[QueryCache] = None,
        middleware: Sequence[Middleware[ClientCall]] = (),
    ) -> None:
        super().__init__(bus, timeout, service_id, retry, middleware)
        self.cache = cache

    @overload
    def ask(
        self,
        query: Query[R],
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        retry: RetryArg = DEFAULT,
        cache: bool = True,
    ) -> R: ...

    @overload
    def ask(
        self,
        query: Message,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Type[T],
        retry: RetryArg = DEFAULT,
        cache: bool = True,
    ) -> T: ...

    def ask(
        self,
        query: Any,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Optional[type] = None,
        retry: RetryArg = DEFAULT,
        cache: bool = True,
    ) -> Any:
        """Send ``query`` to ``queries.{Type}`` and return its result.

        Same arguments, results and errors as :meth:`CommandBus.execute`;
        the timeout text is ``Query request timeout after 3000ms``.
        ``cache=False`` bypasses (and does not fill) the bus's cache.
        """
        request = self._build(query)
        store = self.cache if cache else None
        if store is None:
            if self.middleware:
                return self._call_in_chain(query, request, timeout, returns, retry, reconnect_grace)[0]
            return self._call(request, timeout, returns, retry, reconnect_grace)[0]
        key = (request.route.name, codec.dumps(request.payload))
        hit = store.get(key)
        if hit is not None:
            # Decode the cached reply afresh: no two callers share a result.
            reply, message_id = hit
            return self._result(reply, request.route, message_id, returns)
        if self.middleware:
            result, reply = self._call_in_chain(query, request, timeout, returns, retry, reconnect_grace)
        else:
            result, reply = self._call(request, timeout, returns, retry, reconnect_grace)
        store.put(key, (reply, request.message_id))
        return result

    @overload
    def ask_all(
        self,
        query: Query[R],
        *,
        timeout: TimeoutArg = DEFAULT,
        max_replies: Optional[int] = None,
        stall: Optional[float] = None,
    ) -> List[InstanceResult[R]]: ...

    @overload
    def ask_all(
        self,
        query: Message,
        *,
        timeout: TimeoutArg = DEFAULT,
        max_replies: Optional[int] = None,
        stall: Optional[float] = None,
        returns: Type[T],
    ) -> List[InstanceResult[T]]: ...

    def ask_all(
        self,
        query: Any,
        *,
        timeout: TimeoutArg = DEFAULT,
        max_replies: Optional[int] = None,
        stall: Optional[float] = None,
        returns: Optional[type] = None,
    ) -> List[InstanceResult[Any]]:
        """Scatter-gather: send ``query`` to every instance that serves it; return each one's answer.

        The query goes to ``scatter.queries.{Type}``, which every running
        pool serving the type subscribes without a queue group (ordinary
        :meth:`ask` calls stay load-balanced on ``queries.{Type}``). Replies
        are gathered until ``timeout`` seconds have passed, ``max_replies``
        are in, or no new one came for ``stall`` seconds after the latest
        one; when nobody subscribes the subject the answer is ``[]`` at
        once. An error is reported per instance (:attr:`InstanceResult.error`),
        never raised for the whole call. No cache, retries or client
        middleware; a Bus is needed (not an in-memory bus).

        Args:
            query: An attrs instance (a :class:`Query` or any attrs class).
            timeout: Seconds to gather in all; default the bus's. It may
                not be ``None``: gathering ends at the timeout at the latest.
            max_replies: Stop once this many replies are in.
            stall: Stop once this many seconds pass without a new reply
                (the first one is awaited up to ``timeout``).
            returns: Build each result as this type (overrides ``Query[R]``).

        Returns:
            One :class:`InstanceResult` per instance that answered, in the
            order the replies arrived, each with the instance's id.

        Raises:
            ConfigError: no timeout, ``max_replies < 1``, ``stall <= 0``,
                or the bus is not a :class:`~natsbus.Bus`.
            BusClosedError: the Bus is closed.
            PayloadTooLargeError: the query is over the server's limit.
            LoopThreadError: called on the Bus's loop thread.
        """
        limit = self._limit(timeout)
        if limit is None or limit <= 0:
            raise ConfigError(f"ask_all() gathers replies until its timeout: give one in seconds, not {limit!r}")
        if max_replies is not None and max_replies < 1:
            raise ConfigError(f"max_replies must be >= 1, got {max_replies!r}")
        if stall is not None and stall <= 0:
            raise ConfigError(f"stall must be > 0 seconds, got {stall!r}")
        bus = self._connection("ask_all()", "gathers the replies of every instance over NATS")
        request = self._build(query)
        route = _Route(request.route.name, scatter_subject(request.route.name), request.route.result)
        transport = bus.live_transport()
        transport.check_send(route.subject, request.body)
        gather = functools.partial(
            transport.gather,
            route.subject,
            request.body,
            timeout=limit,
            quiet=limit if stall is None else stall,
            max_count=max_replies,
            headers=self._headers(limit),
        )
        replies: List[GatheredReply] = bus.run(gather, limit + 5.0)
        results: List[InstanceResult[Any]] = []
        for reply in replies:
            headers = reply.headers or {}
            instance, service = headers.get(INSTANCE_HEADER, ""), headers.get(SERVICE_HEADER, "")
            try:
                value = self._result(Reply(reply.data, reply.headers), route, request.message_id, returns)
            except NatsBusError as exc:
                results.append(InstanceResult(instance, None, exc, service, reply.rtt))
            else:
                results.append(InstanceResult(instance, value, None, service, reply.rtt))
        return results

    @overload
    def submit(
        self, query: Query[R], *, timeout: TimeoutArg = DEFAULT, reconnect_grace: TimeoutArg = DEFAULT
    ) -> Future[R]: ...

    @overload
    def submit(
        self, query: Message, *, timeout: TimeoutArg = DEFAULT, reconnect_grace: TimeoutArg = DEFAULT, returns: Type[T]
    ) -> Future[T]: ...

    def submit(
        self,
        query: Any,
        *,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        returns: Optional[type] = None,
    ) -> Future[Any]:
        """Send ``query`` now; return a ``concurrent.futures.Future`` of its result.

        Callbacks run on a natsbus helper thread, never the loop; they share
        one thread per Bus, so one that blocks delays every other future of
        the Bus. The future fails with the errors :meth:`ask` raises
        once the request is sent (the timeout included); errors found before
        sending (a closed Bus, a payload over the limit, a bad message, no
        connection within ``reconnect_grace``, which ``submit()`` waits
        for) are raised by ``submit()`` itself. No retries: a future is one
        attempt.
        """
        return self._submit(self._build(query), timeout, returns, reconnect_grace)

    @overload
    def ask_many(
        self,
        messages: Iterable[Query[R]],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[False] = False,
        progress: Optional[Progress] = None,
    ) -> List[R]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Query[R]],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = None,
    ) -> List[Union[R, Exception]]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[False] = False,
        progress: Optional[Progress] = None,
        returns: Type[T],
    ) -> List[T]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = None,
        returns: Type[T],
    ) -> List[Union[T, Exception]]: ...

    def ask_many(
        self,
        messages: Iterable[Any],
        *,
        concurrency: int = 64,
        timeout: TimeoutArg = DEFAULT,
        reconnect_grace: TimeoutArg = DEFAULT,
        return_exceptions: bool = False,
        progress: Optional[Progress] = None,
        returns: Optional[type] = None,
    ) -> List[Any]:
        """Ask many queries from one thread, pipelined; see :meth:`CommandBus.execute_many`."""
        return self._many(messages, concurrency, timeout, return_exceptions, progress, returns, reconnect_grace)

    def with_timeout(self, seconds: Optional[float]) -> QueryBus:
        """A copy of this bus with another default timeout."""
        return QueryBus(
            self.bus, seconds, self.service_id, retry=self.retry, cache=self.cache, middleware=self.middleware
        )
