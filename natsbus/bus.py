"""The connection (:class:`Bus`) and the blocking command and query buses."""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import os
import threading
import weakref
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar, Union, overload

import attrs

from . import codec, discovery
from ._portal import Portal
from ._transport import Headers, PendingReply, Reply, Transport
from .config import NatsConfig
from .envelope import INVALID_REQUEST_PREFIX, ResponseEnvelope, decode_response, new_id, utc_timestamp
from .errors import (
    BusClosedError,
    ConfigError,
    EnvelopeError,
    HandlerError,
    InvalidRequestError,
    RequestTimeoutError,
    ServiceError,
    error_class_for_code,
)
from .messages import (
    Command,
    Kind,
    Query,
    ensure_message_class,
    message_kind,
    result_type,
    subject_for,
    type_name,
)

__all__ = ["Bus", "CommandBus", "QueryBus"]

logger = logging.getLogger("natsbus.bus")

R = TypeVar("R")
T = TypeVar("T")

#: NATS micro headers carrying an error reply's text and code.
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


class _Default(enum.Enum):
    DEFAULT = "DEFAULT"


#: "Use the bus's own timeout" (``None`` would mean "no limit").
DEFAULT = _Default.DEFAULT
TimeoutArg = Union[float, None, _Default]


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


# Buses alive in this process, so a fork can reset their locks in the child
# (a lock held by another thread at fork time would never be released there).
_LIVE_BUSES: weakref.WeakSet[Bus] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for bus in list(_LIVE_BUSES):
        bus._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Bus:
    """A connection to NATS, usable from any number of threads at once.

    It owns one background thread running an asyncio loop with a nats-py
    client; every method blocks the calling thread, never the loop. It
    connects when built and fails fast when no server answers.

    After ``os.fork()`` the child's first call opens its own connection
    (and loop thread); the parent keeps its own.

    Args:
        config: A :class:`NatsConfig`, a server URL, or ``None`` for
            :meth:`NatsConfig.from_env`.
        **overrides: :class:`NatsConfig` fields that win over ``config``.

    Raises:
        ConnectError: no server answered within ``config.connect_timeout``;
            the text names the URLs.
    """

    def __init__(self, config: Union[NatsConfig, str, None] = None, **overrides: Any) -> None:
        if config is None:
            config = NatsConfig.from_env(**overrides)
        elif isinstance(config, str):
            config = NatsConfig(servers=config, **overrides)
        elif overrides:
            config = attrs.evolve(config, **overrides)
        self.config: NatsConfig = config
        self._lock = threading.Lock()
        self._state = _State.OPEN
        self._pid = os.getpid()
        self._portal, self._transport = self._open()
        _LIVE_BUSES.add(self)

    def _open(self) -> Tuple[Portal, Transport]:
        portal = Portal()
        portal.start()
        transport = Transport(self.config, portal)
        try:
            portal.call(transport.connect)
        except BaseException:
            portal.stop()
            raise
        return portal, transport

    def _live(self) -> Transport:
        """The transport to use now; reopens once in a forked child."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # The parent's loop thread does not exist here; its
                    # objects are dropped unclosed, as the parent owns them.
                    self._portal, self._transport = self._open()
                    self._pid = os.getpid()
        if self._state is _State.CLOSED:
            raise BusClosedError("the Bus is closed")
        return self._transport

    # -- public ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._state is _State.CLOSED

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now (false while reconnecting)."""
        return self._state is _State.OPEN and self._transport.is_connected

    @property
    def connected_url(self) -> str:
        """The URL of the server currently connected to, or ``""``."""
        return self._transport.connected_url

    @property
    def max_payload(self) -> int:
        """The server's max payload in bytes."""
        return self._transport.max_payload

    def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: Optional[float] = 5.0,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Reply:
        """Send raw bytes and wait for the raw reply (no envelopes).

        Args:
            subject: Where to send.
            payload: The body.
            timeout: Seconds; ``None`` waits forever.
            headers: NATS headers to send.

        Returns:
            ``Reply(data, headers)``.

        Raises:
            RequestTimeoutError: no reply in time.
            NoHandlerError: nobody subscribes ``subject``.
            PayloadTooLargeError: ``payload`` is over the server's limit.
            BusClosedError: the Bus is (or got) closed.
            LoopThreadError: called on the Bus's loop thread.
        """
        pending = self._send(subject, payload, dict(headers) if headers else None)
        return self._wait(pending, timeout, lambda ms: f"Request timeout after {ms}ms")

    def _send(self, subject: str, payload: bytes, headers: Headers) -> PendingReply:
        transport = self._live()
        self._portal.check_caller("a blocking natsbus request")
        return transport.request(subject, payload, headers)

    @staticmethod
    def _wait(pending: PendingReply, timeout: Optional[float], text: Any) -> Reply:
        try:
            return pending.result(timeout)  # type: ignore[no-any-return]
        except concurrent.futures.TimeoutError:
            if pending.done() and pending.exception() is not None:
                raise
            pending.abandon()
            ms = round((timeout or 0) * 1000)
            raise RequestTimeoutError(text(ms), subject=pending.subject, timeout=timeout) from None

    def run(self, coro_fn: Any, timeout: Optional[float] = None) -> Any:
        """Run ``coro_fn()`` on the Bus's loop and wait (for extensions)."""
        self._live()
        return self._portal.call(coro_fn, timeout)

    # -- service discovery (NATS micro protocol; see natsbus.discovery) --------

    def ping(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = discovery.DEFAULT_TIMEOUT,
        quiet: float = discovery.DEFAULT_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServicePing]:
        """PING every NATS micro service instance; see :func:`natsbus.discovery.ping`."""
        return discovery.ping(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def discover(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = discovery.DEFAULT_TIMEOUT,
        quiet: float = discovery.DEFAULT_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServiceInfo]:
        """INFO from every service instance: what each serves; see :func:`natsbus.discovery.discover`."""
        return discovery.discover(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def stats(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = discovery.DEFAULT_TIMEOUT,
        quiet: float = discovery.DEFAULT_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServiceStats]:
        """STATS from every service instance: per-endpoint counters; see :func:`natsbus.discovery.stats`."""
        return discovery.stats(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def has_handler(
        self,
        message_type: Union[str, type],
        *,
        kind: Union[Kind, str, None] = None,
        timeout: float = discovery.DEFAULT_TIMEOUT,
        quiet: float = discovery.DEFAULT_QUIET,
    ) -> bool:
        """Whether a running service lists ``message_type``; see :func:`natsbus.discovery.has_handler`."""
        return discovery.has_handler(self, message_type, kind=kind, timeout=timeout, quiet=quiet)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, close the connection and join the loop thread.

        Calls waiting for a reply fail at once with :class:`BusClosedError`.
        Safe to call twice.
        """
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        _LIVE_BUSES.discard(self)
        if self._pid != os.getpid():
            return  # a forked child that never used the Bus owns nothing
        if self._portal.in_loop_thread():
            self._transport.mark_closed()
            self._portal.stop()
            return
        try:
            self._portal.call(lambda: self._transport.close(timeout), timeout + 1.0)
        except Exception as exc:  # the loop is stopped below whatever happened
            logger.debug("closing the connection failed: %r", exc)
            self._transport.mark_closed()
        self._portal.stop(timeout)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<natsbus.Bus {self._state.value} servers={list(self.config.servers)}>"


@attrs.frozen
class _Route:
    name: str
    subject: str
    result: Any


class _MessageBus:
    _kind: Kind

    def __init__(self, bus: Bus, timeout: Optional[float], service_id: str) -> None:
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        self.bus = bus
        self.timeout = timeout
        self.service_id = service_id
        self._routes: Dict[type, _Route] = {}
        self._type_key = f"{self._kind.value}_type"
        self._id_key = f"{self._kind.value}_id"

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

    def _build(self, message: Any) -> Tuple[_Route, str, bytes]:
        route = self._route(type(message))
        message_id = new_id(self._kind)
        body = codec.dumps(
            {
                self._type_key: route.name,
                self._id_key: message_id,
                "service_id": self.service_id,
                "timestamp": utc_timestamp(),
                "payload": codec.unstructure(message),
            }
        )
        return route, message_id, body

    def _call(self, message: Any, timeout: TimeoutArg, returns: Any) -> Any:
        route, message_id, body = self._build(message)
        limit = self.timeout if timeout is DEFAULT else timeout
        pending = self.bus._send(route.subject, body, None)
        label = self._kind.label
        reply = self.bus._wait(pending, limit, lambda ms: f"{label} request timeout after {ms}ms")
        return self._result(reply, route, message_id, returns)

    def _result(self, reply: Reply, route: _Route, message_id: str, returns: Any) -> Any:
        try:
            envelope = decode_response(reply.data, self._kind)
        except EnvelopeError as exc:
            raise EnvelopeError(f"invalid response from {route.subject}: {exc}") from None
        if envelope.id != message_id:
            raise EnvelopeError(f"response from {route.subject} answers {envelope.id!r}, not {message_id!r}")
        if not envelope.success:
            raise _service_error(envelope, reply.headers, route.subject)
        target = returns if returns is not None else route.result
        if target is None or envelope.payload is None:
            return envelope.payload
        try:
            return codec.structure(envelope.payload, target)
        except ValueError as exc:
            raise EnvelopeError(
                f"response payload from {route.subject} does not fit {getattr(target, '__name__', target)}: {exc}"
            ) from None


def _service_error(envelope: ResponseEnvelope, headers: Headers, subject: str) -> ServiceError:
    text = envelope.error or "unknown error"
    code = headers.get(ERROR_CODE_HEADER) if headers else None
    if code is not None:
        cls: Type[ServiceError] = error_class_for_code(code)
    elif text.startswith(INVALID_REQUEST_PREFIX):
        cls = InvalidRequestError
    else:
        cls = HandlerError
    return cls(text, subject=subject, envelope=envelope)


class CommandBus(_MessageBus):
    """Sends commands (writes) and waits for their results.

    Args:
        bus: The connection.
        timeout: Default seconds per call (``None``: no limit).
        service_id: The ``service_id`` put in each request envelope.
    """

    _kind = Kind.COMMAND

    def __init__(self, bus: Bus, timeout: Optional[float] = 5.0, service_id: str = "natsbus") -> None:
        super().__init__(bus, timeout, service_id)

    @overload
    def execute(self, command: Command[R], *, timeout: TimeoutArg = DEFAULT) -> R: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT, returns: Type[T]) -> T: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT) -> Any: ...

    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT, returns: Any = None) -> Any:
        """Send ``command`` to ``commands.{Type}`` and return its result.

        Args:
            command: An attrs instance (a :class:`Command` or any attrs class).
            timeout: Seconds for this call; default the bus's; ``None`` no limit.
            returns: Build the result as this type (overrides ``Command[R]``).

        Returns:
            The result: an ``R`` for ``Command[R]`` or ``returns``, else
            the reply payload as plain JSON data.

        Raises:
            RequestTimeoutError: ``Command request timeout after 5000ms``.
            NoHandlerError: ``No handler available for commands.X``, at once.
            ServiceError: the handler failed; a subclass per error code
                (``InvalidRequestError`` for ``Invalid request format: ...``).
            PayloadTooLargeError: the request is over the server's limit.
            EnvelopeError: the reply is not a valid response envelope.
            BusClosedError: the Bus is closed.
        """
        return self._call(command, timeout, returns)

    def with_timeout(self, seconds: Optional[float]) -> CommandBus:
        """A copy of this bus with another default timeout."""
        return CommandBus(self.bus, seconds, self.service_id)


class QueryBus(_MessageBus):
    """Sends queries (reads) and waits for their results.

    Args:
        bus: The connection.
        timeout: Default seconds per call (``None``: no limit).
        service_id: The ``service_id`` put in each request envelope.
    """

    _kind = Kind.QUERY

    def __init__(self, bus: Bus, timeout: Optional[float] = 3.0, service_id: str = "natsbus") -> None:
        super().__init__(bus, timeout, service_id)

    @overload
    def ask(self, query: Query[R], *, timeout: TimeoutArg = DEFAULT) -> R: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT, returns: Type[T]) -> T: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT) -> Any: ...

    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT, returns: Any = None) -> Any:
        """Send ``query`` to ``queries.{Type}`` and return its result.

        Same arguments, results and errors as :meth:`CommandBus.execute`;
        the timeout text is ``Query request timeout after 3000ms``.
        """
        return self._call(query, timeout, returns)

    def with_timeout(self, seconds: Optional[float]) -> QueryBus:
        """A copy of this bus with another default timeout."""
        return QueryBus(self.bus, seconds, self.service_id)
