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

``memory.commands`` and ``memory.queries`` are a real
:class:`~natsbus.CommandBus` and :class:`~natsbus.QueryBus` whose requester
is the in-memory bus (the ``Requester`` seam of :mod:`natsbus.cqrs`), so
everything the client does on NATS it does here: ``submit``,
``execute_many`` / ``ask_many``, retries, the query cache, client
middleware, and the caller's deadline (``current_request().remaining()``
in the handler). They satisfy :class:`~natsbus.ports.CommandBusPort` /
:class:`~natsbus.ports.QueryBusPort`, so code written against the ports
takes them unchanged. ``tests/test_client_parity.py`` runs one client test
module against NATS and against both modes below.

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
import itertools
import threading
import time
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from ._transport import Headers, PendingReply, Reply
from ._transport.pending import await_reply
from .bus import Completer
from .context import parse_deadline
from .cqrs import CommandBus, QueryBus
from .dispatch import Dispatcher
from .errors import BusClosedError, ConfigError, NoHandlerError, PayloadTooLargeError
from .messages import Kind
from .middleware import ClientCall, HandlerRequest, Middleware
from .policies import QueryCache, RetryPolicy
from .worker import WorkerPool

__all__ = ["InMemoryBus", "InMemoryCommandBus", "InMemoryQueryBus"]

R = TypeVar("R")
T = TypeVar("T")

#: NATS's default max payload (1 MiB); requests and replies over it fail as they would there.
DEFAULT_MAX_PAYLOAD = 1024 * 1024


class _Reply(Reply):
    """A reply that also carries the handler's exception, which becomes the error's ``__cause__``."""

    def __new__(cls, data: bytes, headers: Headers, cause: Optional[BaseException]) -> _Reply:
        reply = super().__new__(cls, data, headers)
        reply.cause = cause
        return reply

    cause: Optional[BaseException]


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
        propagate_exceptions: Raise the handler's own exception in the
            caller instead of the typed natsbus error (like Celery's
            ``task_eager_propagates``). Either way, the natsbus error's
            ``__cause__`` is the handler's exception, so a failing test
            shows the handler's traceback.

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
        propagate_exceptions: bool = False,
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
        self.propagate_exceptions = propagate_exceptions
        self._lock = threading.Lock()
        self._closed = False
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._completer: Optional[Completer] = None
        self._waiters: Dict[bytes, PendingReply] = {}
        self._tokens = itertools.count(1)
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
        pending = self.begin_request(subject, payload, dict(headers) if headers else None)
        return await_reply(pending, timeout, "Request timeout after {ms}ms")

    def begin_request(
        self,
        subject: str,
        payload: bytes,
        headers: Headers = None,
        notify: Optional[Callable[[PendingReply], None]] = None,
    ) -> PendingReply:
        """Hand a request to its handler (the :class:`~natsbus.cqrs.Requester` seam).

        What a transport and a worker thread do on the NATS path: the
        handler runs through :meth:`natsbus.Dispatcher.dispatch`, at once
        on this thread (eager) or on a thread of the pool (threaded), with
        the caller's deadline from the ``Natsbus-Timeout-Ms`` header. No
        handler completes the reply with :class:`~natsbus.NoHandlerError`,
        as the server's "no responders" does.
        """
        if self._closed:
            raise BusClosedError("the Bus is closed")
        if len(payload) > self.max_payload:
            raise PayloadTooLargeError(
                f"request to {subject} is {len(payload)} bytes, over the server's max payload of "
                f"{self.max_payload} bytes",
                subject=subject,
                size=len(payload),
                limit=self.max_payload,
            )
        token = b"%d" % next(self._tokens)
        pending = PendingReply(subject, token, self._waiters, notify)
        self._waiters[token] = pending
        route = self.dispatcher.route_for(subject)
        if route is None:
            self._settle(token, None, NoHandlerError(f"No handler available for {subject}", subject=subject))
            return pending
        received = time.monotonic()

        def serve() -> None:
            raised: List[BaseException] = []
            try:
                deadline = parse_deadline(headers, received)
                body, reply_headers = self.dispatcher.dispatch(
                    route, payload, self.max_payload, headers=headers, deadline=deadline, failed=raised.append
                )
            except BaseException as exc:  # KeyboardInterrupt and the like: the caller sees it too
                self._settle(token, None, exc)
                raise
            if raised and self.propagate_exceptions:
                self._settle(token, None, raised[0])  # the handler's own exception, as Celery's eager mode
            else:
                self._settle(token, _Reply(body, reply_headers, raised[0] if raised else None), None)

        if self.eager:
            serve()
        else:
            try:
                self._pool().submit(serve)
            except RuntimeError:  # shut down by a close() since _pool() returned
                self._waiters.pop(token, None)
                raise BusClosedError("the Bus is closed") from None
            except BaseException:
                self._waiters.pop(token, None)
                raise
        return pending

    def completer(self) -> Completer:
        """The thread that completes ``submit()`` futures (the :class:`~natsbus.cqrs.Requester` seam)."""
        with self._lock:
            if self._closed:
                raise BusClosedError("the Bus is closed")
            if self._completer is None:
                self._completer = Completer()
            return self._completer

    def _settle(self, token: bytes, reply: Optional[Reply], error: Optional[BaseException]) -> None:
        # Whoever takes the token completes the reply; a caller that gave up took it first.
        pending = self._waiters.pop(token, None)
        if pending is not None:
            pending.settle(reply, error)

    def close(self) -> None:
        """Refuse further calls, fail the calls still waiting, let the threads of threaded mode end. Safe twice.

        Handlers still running finish on their threads (as on a worker, Python
        cannot stop them); their replies are dropped. Safe from a handler.
        """
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
            completer, self._completer = self._completer, None
        # As Bus.close(): the calls still waiting fail at once; handlers still
        # running finish on their threads (their late replies are dropped).
        for token in list(self._waiters):
            self._settle(token, None, BusClosedError("the Bus was closed while waiting for a reply"))
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if completer is not None:
            completer.stop(5.0)

    def __enter__(self) -> InMemoryBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "eager" if self.eager else f"threaded({self.max_workers})"
        subjects = [route.subject for route in self.dispatcher.routes]
        return f"<natsbus.testing.InMemoryBus {mode} subjects={subjects}>"

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise BusClosedError("the Bus is closed")
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="natsbus-inmemory"
                )
            return self._executor

    def record(self, message: Any) -> None:
        """Add ``message`` to :attr:`sent` (the in-memory buses call it for each message)."""
        with self._lock:
            self.sent.append(message)


class InMemoryCommandBus(CommandBus):
    """A :class:`~natsbus.CommandBus` on an :class:`InMemoryBus`: the whole client API.

    ``execute``, ``submit``, ``execute_many``, retries, middleware and
    deadlines run the very code they run on NATS; only the transport is
    the in-memory bus. ``send()`` / ``result()`` need JetStream, so a real
    :class:`~natsbus.Bus`.

    Args:
        memory: The in-memory bus whose handlers run the commands.
        timeout: Default seconds per call (enforced in threaded mode).
        service_id: The ``service_id`` put in each request envelope.
        retry: A :class:`~natsbus.RetryPolicy` for every call.
        middleware: Client middleware; default the in-memory bus's ``client_middleware``.
    """

    def __init__(
        self,
        memory: InMemoryBus,
        timeout: Optional[float] = 5.0,
        service_id: str = "natsbus-test",
        *,
        retry: Optional[RetryPolicy] = None,
        middleware: Optional[Sequence[Middleware[ClientCall]]] = None,
    ) -> None:
        chain = memory.client_middleware if middleware is None else middleware
        super().__init__(memory, timeout, service_id, retry=retry, middleware=chain)
        self.memory = memory

    def _build(self, message: Any) -> Any:
        request = super()._build(message)
        self.memory.record(message)
        return request

    def with_timeout(self, seconds: Optional[float]) -> InMemoryCommandBus:
        """A copy of this bus with another default timeout."""
        return InMemoryCommandBus(self.memory, seconds, self.service_id, retry=self.retry, middleware=self.middleware)


class InMemoryQueryBus(QueryBus):
    """A :class:`~natsbus.QueryBus` on an :class:`InMemoryBus`: the whole client API.

    Args:
        memory: The in-memory bus whose handlers answer the queries.
        timeout: Default seconds per call (enforced in threaded mode).
        service_id: The ``service_id`` put in each request envelope.
        retry: A :class:`~natsbus.RetryPolicy` for every call.
        cache: A :class:`~natsbus.QueryCache` for results.
        middleware: Client middleware; default the in-memory bus's ``client_middleware``.
    """

    def __init__(
        self,
        memory: InMemoryBus,
        timeout: Optional[float] = 3.0,
        service_id: str = "natsbus-test",
        *,
        retry: Optional[RetryPolicy] = None,
        cache: Optional[QueryCache] = None,
        middleware: Optional[Sequence[Middleware[ClientCall]]] = None,
    ) -> None:
        chain = memory.client_middleware if middleware is None else middleware
        super().__init__(memory, timeout, service_id, retry=retry, cache=cache, middleware=chain)
        self.memory = memory

    def _build(self, message: Any) -> Any:
        request = super()._build(message)
        self.memory.record(message)
        return request

    def with_timeout(self, seconds: Optional[float]) -> InMemoryQueryBus:
        """A copy of this bus with another default timeout."""
        return InMemoryQueryBus(
            self.memory, seconds, self.service_id, retry=self.retry, cache=self.cache, middleware=self.middleware
        )
