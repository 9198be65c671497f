"""Test your handlers without a server: the NATS path, in memory.

:class:`InMemoryBus` runs handlers in-process through exactly the code the
NATS path runs, minus the network: the client side builds the request
envelope and reads the reply with :class:`~natsbus.CommandBus`'s own code,
and the service side is :meth:`natsbus.Dispatcher.dispatch`, the decode ->
handler -> encode step a :class:`~natsbus.WorkerPool` runs on its threads.
Every message makes a real JSON round trip, so a field that does not
serialise, a result of the wrong shape or a missing ``Command[R]`` shows up
in a unit test, and errors arrive as the same classes with the same texts
(``NotFoundError``, ``InvalidRequestError: Invalid request format: ...``,
``No handler available for commands.X``)::

    from natsbus.testing import InMemoryBus

    def test_duplicate_email_is_a_conflict() -> None:
        memory = InMemoryBus([CreateUserHandler(UserRepository())])
        memory.commands.execute(CreateUserCommand("Alice", "a@example.com"))
        with pytest.raises(ConflictError, match="User already exists"):
            memory.commands.execute(CreateUserCommand("Alice", "a@example.com"))

``memory.commands`` and ``memory.queries`` satisfy
:class:`~natsbus.ports.CommandBusPort` / :class:`~natsbus.ports.QueryBusPort`,
so code written against the ports takes them unchanged.

Two modes:

* **eager** (the default): the handler runs synchronously in the calling
  thread, inside ``execute()``. Deterministic, no threads, a handler's
  traceback is in the same stack. Timeouts are *not* enforced (the call
  cannot be interrupted), so a slow handler just makes a slow test.
* **threaded** (``eager=False``): handlers run on a thread pool of
  ``max_workers`` threads, as in a WorkerPool, and the caller waits at most
  its timeout: a handler that is too slow raises
  :class:`~natsbus.RequestTimeoutError` (``Command request timeout after
  50ms``) while it keeps running to its end, as it would behind NATS.
  Use it to test concurrency and timeout handling; :meth:`InMemoryBus.close`
  (or ``with``) shuts the threads down.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import (
    Any,
    Callable,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
    overload,
)

from ._transport import Headers, Reply
from .bus import Bus
from .cqrs import DEFAULT, TimeoutArg, _MessageBus
from .dispatch import Dispatcher
from .errors import BusClosedError, ConfigError, NoHandlerError, PayloadTooLargeError, RequestTimeoutError
from .messages import Command, Kind, Query
from .middleware import ClientCall, HandlerRequest, Middleware, run_client
from .worker import WorkerPool

__all__ = ["InMemoryBus", "InMemoryCommandBus", "InMemoryQueryBus"]

R = TypeVar("R")
T = TypeVar("T")

#: NATS's default max payload (1 MiB); requests and replies over it fail as they would there.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class InMemoryBus:
    """Runs registered handlers in-process, with the NATS path's encoding and errors.

    Args:
        handlers: Handlers to register (functions, or objects with a
            ``handle`` method), as for :meth:`natsbus.WorkerPool.register`.
        dispatcher: Serve an existing dispatcher's handlers (e.g.
            ``pool.dispatcher``; see :meth:`from_pool`) instead of a new one.
        service_id: The ``service_id`` the buses put in request envelopes.
        eager: Run handlers in the calling thread (``True``) or on a thread
            pool with timeouts enforced (``False``); see the module docs.
        max_workers: Threads in threaded mode.
        max_payload: Bytes; a larger request raises
            :class:`~natsbus.PayloadTooLargeError`, a larger reply becomes a
            handler error, as against a server with this limit.
        command_timeout: The default timeout of :attr:`commands`.
        query_timeout: The default timeout of :attr:`queries`.
        client_middleware: Client middleware around each ``execute()`` /
            ``ask()``, as ``CommandBus(middleware=...)`` runs it.
        handler_middleware: Handler middleware around each handler, as
            ``WorkerPool(middleware=...)`` runs it (with ``dispatcher=``,
            give it to that dispatcher's pool instead).

    Attributes:
        commands: An :class:`InMemoryCommandBus` (``execute()``).
        queries: An :class:`InMemoryQueryBus` (``ask()``).
        dispatcher: The :class:`~natsbus.Dispatcher` holding the handlers
            (and their stats).
        sent: Every message given to ``execute()`` / ``ask()``, in order,
            whether or not it then succeeded.
    """

    def __init__(
        self,
        handlers: Iterable[Any] = (),
        *,
        dispatcher: Optional[Dispatcher] = None,
        service_id: str = "natsbus-test",
        eager: bool = True,
        max_workers: int = 8,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        command_timeout: Optional[float] = 5.0,
        query_timeout: Optional[float] = 3.0,
        client_middleware: Sequence[Middleware[ClientCall]] = (),
        handler_middleware: Sequence[Middleware[HandlerRequest]] = (),
    ) -> None:
        if max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {max_workers}")
        if max_payload < 1:
            raise ConfigError(f"max_payload must be >= 1, got {max_payload}")
        if dispatcher is not None and handler_middleware:
            raise ConfigError("handler_middleware goes with a new dispatcher; pass it to the pool of the one given")
        self.dispatcher = dispatcher if dispatcher is not None else Dispatcher(service_id, handler_middleware)
        self.client_middleware: Tuple[Middleware[ClientCall], ...] = tuple(client_middleware)
        self.service_id = service_id
        self.eager = eager
        self.max_workers = max_workers
        self.max_payload = max_payload
        self.sent: List[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        for handler in handlers:
            self.dispatcher.register(handler)
        self.commands = InMemoryCommandBus(self, command_timeout, service_id)
        self.queries = InMemoryQueryBus(self, query_timeout, service_id)

    @classmethod
    def from_pool(cls, pool: WorkerPool, **options: Any) -> InMemoryBus:
        """Serve the handlers registered on ``pool`` (which need not be started).

        The pool's dispatcher is shared, so its stats count these calls.

        Args:
            pool: The worker pool whose handlers to run.
            **options: Other :class:`InMemoryBus` arguments.
        """
        return cls(dispatcher=pool.dispatcher, **options)

    def register(
        self,
        handler: Any = None,
        *,
        message_type: Optional[type] = None,
        kind: Union[Kind, str, None] = None,
    ) -> Any:
        """Register a handler, as :meth:`natsbus.WorkerPool.register` (also a decorator).

        Returns:
            The handler, unchanged.

        Raises:
            RegistrationError: no usable message type, or a second handler
                for the same type.
        """
        if handler is None:
            return lambda h: self.register(h, message_type=message_type, kind=kind)
        self.dispatcher.register(handler, message_type=message_type, kind=kind)
        return handler

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def request(
        self,
        subject: str,
        payload: bytes,
        *,
        timeout: Optional[float] = 5.0,
        headers: Optional[Mapping[str, str]] = None,
    ) -> Reply:
        """Send raw request bytes to ``subject``'s handler; return the raw reply.

        The in-memory twin of :meth:`natsbus.Bus.request`: no envelope is
        built or checked here, so it can send malformed requests. The
        handler sees ``headers`` in :func:`natsbus.current_request`.

        Raises:
            NoHandlerError: no handler for ``subject``.
            PayloadTooLargeError: ``payload`` is over ``max_payload``.
            RequestTimeoutError: threaded mode, and no reply in time.
            BusClosedError: after :meth:`close`.
        """
        sent = dict(headers) if headers else None
        return self._exchange(subject, payload, timeout, lambda ms: f"Request timeout after {ms}ms", sent)

    def close(self) -> None:
        """Refuse further calls and stop the threads of threaded mode. Safe twice."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> InMemoryBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "eager" if self.eager else f"threaded({self.max_workers})"
        subjects = [route.subject for route in self.dispatcher.routes]
        return f"<natsbus.testing.InMemoryBus {mode} subjects={subjects}>"

    # -- the exchange: what the transport and a worker thread do on the NATS path

    def _exchange(
        self, subject: str, body: bytes, timeout: Optional[float], text: Callable[[int], str], headers: Headers = None
    ) -> Reply:
        if self._closed:
            raise BusClosedError("the Bus is closed")
        if len(body) > self.max_payload:
            raise PayloadTooLargeError(
                f"request to {subject} is {len(body)} bytes, over the server's max payload of {self.max_payload} bytes",
                subject=subject,
                size=len(body),
                limit=self.max_payload,
            )
        route = self.dispatcher.route_for(subject)
        if route is None:
            raise NoHandlerError(f"No handler available for {subject}", subject=subject)
        if self.eager:
            return Reply(*self.dispatcher.dispatch(route, body, self.max_payload, headers=headers))
        future = self._pool().submit(self.dispatcher.dispatch, route, body, self.max_payload, headers=headers)
        try:
            reply_body, headers = future.result(timeout)
        except concurrent.futures.TimeoutError:
            # The handler runs on to its end, as it would in a worker; its reply is dropped.
            future.cancel()
            ms = round((timeout or 0) * 1000)
            raise RequestTimeoutError(text(ms), subject=subject, timeout=timeout) from None
        except concurrent.futures.CancelledError:
            raise BusClosedError("the Bus is closed") from None
        return Reply(reply_body, headers)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise BusClosedError("the Bus is closed")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="natsbus-inmemory"
                )
            return self._executor

    def _record(self, message: Any) -> None:
        with self._lock:
            self.sent.append(message)


class _ClientSide(_MessageBus):
    """The client half of the NATS path without a connection.

    Only ``_build`` (message -> request envelope bytes) and ``_result``
    (reply -> result or typed error) are used, so the in-memory buses encode
    and map errors with the very code :class:`~natsbus.CommandBus` runs.
    """

    def __init__(
        self, kind: Kind, timeout: Optional[float], service_id: str, middleware: Sequence[Middleware[ClientCall]] = ()
    ) -> None:
        self._kind = kind
        # No Bus: _call, the one method that would use it, is never called here.
        super().__init__(cast(Bus, None), timeout, service_id, middleware=middleware)


class _InMemoryMessageBus:
    _kind: Kind

    def __init__(self, memory: InMemoryBus, timeout: Optional[float], service_id: str) -> None:
        self._client = _ClientSide(self._kind, timeout, service_id, memory.client_middleware)  # validates the timeout
        self.memory = memory
        self.timeout = timeout
        self.service_id = service_id

    def _call(self, message: Any, timeout: TimeoutArg, returns: Any) -> Any:
        request = self._client._build(message)
        limit = self.timeout if timeout is DEFAULT else timeout
        label = self._kind.label
        self.memory._record(message)

        def exchange(headers: Headers) -> Any:
            reply = self.memory._exchange(
                request.route.subject, request.body, limit, lambda ms: f"{label} request timeout after {ms}ms", headers
            )
            return self._client._result(reply, request.route, request.message_id, returns)

        middleware = self._client.middleware
        if not middleware:
            return exchange(None)
        route = request.route
        call = ClientCall(message, route.name, self._kind, route.subject, request.message_id, self.service_id, limit)
        return run_client(middleware, call, lambda: exchange(dict(call.headers) or None))


class InMemoryCommandBus(_InMemoryMessageBus):
    """:class:`~natsbus.CommandBus`'s API on an :class:`InMemoryBus`.

    Args:
        memory: The in-memory bus whose handlers run the commands.
        timeout: Default seconds per call (threaded mode only).
        service_id: The ``service_id`` put in each request envelope.
    """

    _kind = Kind.COMMAND

    def __init__(self, memory: InMemoryBus, timeout: Optional[float] = 5.0, service_id: str = "natsbus-test") -> None:
        super().__init__(memory, timeout, service_id)

    @overload
    def execute(self, command: Command[R], *, timeout: TimeoutArg = DEFAULT) -> R: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT, returns: Type[T]) -> T: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT) -> Any: ...

    def execute(self, command: Any, *, timeout: TimeoutArg = DEFAULT, returns: Any = None) -> Any:
        """Run ``command``'s handler and return its result, as :meth:`natsbus.CommandBus.execute`.

        Raises:
            NoHandlerError: ``No handler available for commands.X``.
            ServiceError: the handler failed; the subclass of its code.
            RequestTimeoutError: threaded mode, and the handler was too slow.
            PayloadTooLargeError: the request is over ``max_payload``.
        """
        return self._call(command, timeout, returns)

    def with_timeout(self, seconds: Optional[float]) -> InMemoryCommandBus:
        """A copy of this bus with another default timeout."""
        return InMemoryCommandBus(self.memory, seconds, self.service_id)


class InMemoryQueryBus(_InMemoryMessageBus):
    """:class:`~natsbus.QueryBus`'s API on an :class:`InMemoryBus`.

    Args:
        memory: The in-memory bus whose handlers answer the queries.
        timeout: Default seconds per call (threaded mode only).
        service_id: The ``service_id`` put in each request envelope.
    """

    _kind = Kind.QUERY

    def __init__(self, memory: InMemoryBus, timeout: Optional[float] = 3.0, service_id: str = "natsbus-test") -> None:
        super().__init__(memory, timeout, service_id)

    @overload
    def ask(self, query: Query[R], *, timeout: TimeoutArg = DEFAULT) -> R: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT, returns: Type[T]) -> T: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT) -> Any: ...

    def ask(self, query: Any, *, timeout: TimeoutArg = DEFAULT, returns: Any = None) -> Any:
        """Run ``query``'s handler and return its result, as :meth:`natsbus.QueryBus.ask`.

        Same errors as :meth:`InMemoryCommandBus.execute`.
        """
        return self._call(query, timeout, returns)

    def with_timeout(self, seconds: Optional[float]) -> InMemoryQueryBus:
        """A copy of this bus with another default timeout."""
        return InMemoryQueryBus(self.memory, seconds, self.service_id)
