"""WorkerPool: subscriptions -> a bounded thread pool -> replies.

Data flow for one request::

    loop thread     subscription callback: admit or refuse (busy), enqueue
    worker thread   decode envelope -> build message -> handler -> encode
    loop thread     the transport writes the reply (batched with others)

The loop thread never runs user code and never waits on it; a handler
never touches the nats client (it hands its reply to the transport's
queue, which never blocks).
"""

from __future__ import annotations

import enum
import functools
import logging
import signal
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from ._micro import MicroResponder
from ._transport import RawHeaders, Transport, as_headers
from ._workqueue import STOP, Jobs, Watchdog, Work
from .bus import Bus
from .context import parse_deadline
from .discovery import ServiceStats
from .dispatch import Dispatcher, HandlerRoute, Late
from .envelope import INSTANCE_HEADER, SERVICE_HEADER, error_reply, peek_id
from .errors import (
    BusClosedError,
    BusyError,
    ConfigError,
    DeadlineExceededError,
    HandlerError,
    LifecycleError,
    PermissionDeniedError,
    RegistrationError,
)
from .messages import Kind, scatter_subject
from .middleware import HandlerRequest, Middleware
from .policies import DEFAULT, DefaultType

if TYPE_CHECKING:
    from ._consumer import DurableConsumer
    from .durable import DurableConfig
    from .idempotency import IdempotencyStore

__all__ = ["Dispatcher", "HandlerRoute", "WorkerPool"]  # Dispatcher, HandlerRoute: from natsbus.dispatch

logger = logging.getLogger("natsbus.worker")


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class WorkerPool:
    """Serves commands and queries from a pool of worker threads.

    Each handler's subject (``commands.{Type}`` / ``queries.{Type}``) is
    subscribed in a queue group, so instances of one service share the
    load; each query's ``scatter.queries.{Type}`` is subscribed without
    one, so ``QueryBus.ask_all()`` reaches every instance. At most
    ``max_workers`` handlers run at once and at most ``max_pending``
    requests wait; past that a request is answered at once with a busy
    error (code 503) so its caller can retry elsewhere.

    Args:
        bus: The connection to serve on; may be ``None`` and given later
            with :meth:`bind` (as ``natsbus worker`` does).
        service_id: The service's name.
        max_workers: Handler threads.
        max_pending: Admitted requests that may wait for a thread.
        queue_group: The queue group; defaults to ``service_id``.
        handlers: Handlers to register at once.
        version: The SemVer version it reports as a NATS micro service.
        description: The description it reports (``""`` when unset).
        metadata: String metadata it reports.
        middleware: Handler middleware run around each handler, on the
            worker thread (see :mod:`natsbus.middleware`).
        idempotency: Where command replies are remembered, so a repeated
            ``command_id`` (a client's retry after a lost reply) gets the
            reply already sent without running the handler again. Default:
            in this process's memory, 5 minutes, 10,000 replies or 64 MiB
            at most (:func:`natsbus.idempotency.default_store`); a
            :class:`~natsbus.idempotency.KeyValueIdempotencyStore` shares
            them between instances; ``None`` turns it off. Busy replies
            are never remembered (see :mod:`natsbus.idempotency`).
        durable: ``True`` or a :class:`~natsbus.DurableConfig`: also run
            the commands sent with ``CommandBus.send()`` (see :mod:`natsbus.durable`).

    A handler that raises an ``Exception`` answers its caller with an error
    reply and the thread serves on. One that raises ``KeyboardInterrupt``,
    ``SystemExit`` (``sys.exit()``) or another non-``Exception`` stops the
    service, as it would a one-threaded server: its caller still gets an
    error reply (500) at once, the pool drains and stops, and :meth:`run`
    then re-raises that exception in its own thread.

    A running pool is a NATS micro service named ``service_id``: it
    answers ``$SRV.PING`` / ``$SRV.INFO`` / ``$SRV.STATS`` (see
    ``natsbus.discovery`` for the client side); ``pool.micro.id`` is this
    instance's id.

    Example::

        pool = WorkerPool(bus, service_id="user-service", max_workers=8)
        pool.register(create_user)          # def create_user(cmd: CreateUserCommand)
        pool.run()                          # until SIGINT / SIGTERM
    """

    def __init__(
        self,
        bus: Optional[Bus] = None,
        service_id: str = "natsbus",
        *,
        max_workers: int = 8,
        max_pending: int = 1000,
        queue_group: Optional[str] = None,
        handlers: Iterable[Any] = (),
        version: str = "0.0.0",
        description: str = "",
        metadata: Optional[Mapping[str, str]] = None,
        middleware: Sequence[Middleware[HandlerRequest]] = (),
        idempotency: Union[IdempotencyStore, DefaultType, None] = DEFAULT,
        durable: Union[bool, DurableConfig, None] = None,
    ) -> None:
        self.bus = bus
        self.service_id = service_id
        self.max_workers = max_workers
        self.max_pending = max_pending
        self.queue_group = queue_group or service_id
        self._validate()
        self.dispatcher = Dispatcher(service_id, middleware)
        self.micro = MicroResponder(service_id, version, description or "", metadata, self.dispatcher, self.queue_group)
        self._state = _State.NEW
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        # Threads reserved for a durable pull that got no command yet: counted
        # in _inflight (the pool's capacity) but not as work in flight.
        self._reserved = 0
        self._completed = 0
        self._queue = Jobs()
        self._threads: List[threading.Thread] = []
        self._subs: List[Any] = []
        self._watchdog: Optional[Watchdog] = None
        self._stop_requested = threading.Event()
        # Cleared once stop() has drained the subscriptions: anything that
        # still arrives (a drain that failed) is refused as busy, not queued
        # behind threads that are ending.
        self._accepting = True
        #: Whether start() succeeded at some point (the worker CLI tells a failed start from a drain).
        self.served = False
        self._stopped = threading.Event()  # set once stop() has finished
        self._stop_result = True
        self._in_run = False  # run() serves: it re-raises a handler's KeyboardInterrupt / SystemExit
        self._interruption: Optional[BaseException] = None  # the first one a handler raised
        #: Requests refused at once because the pool was full.
        self.refused_busy = 0
        #: Messages dropped because they had no reply subject.
        self.dropped_without_reply = 0
        #: Requests whose handler overran its time limit.
        self.overruns = 0
        for handler in handlers:
            self.register(handler)
        # -- exactly once: the store and the durable consumer --------
        self.idempotency: Optional[IdempotencyStore]
        if isinstance(idempotency, DefaultType):  # loaded here: a client-only process never needs it
            from .idempotency import default_store

            self.idempotency = default_store()
        else:
            self.idempotency = idempotency
        self.durable: Optional[DurableConsumer] = None
        if durable is not None and durable is not False:  # loaded only when used
            from ._consumer import DurableConsumer
            from .durable.config import as_config

            config = as_config(durable)
            if config is not None:
                self.durable = DurableConsumer(self, config)

    def _validate(self) -> None:
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.max_pending < 0:
            raise ConfigError(f"max_pending must be >= 0, got {self.max_pending}")

    # -- registration -----------------------------------------------------

    def register(
        self,
        handler: Any = None,
        *,
        message_type: Optional[type] = None,
        kind: Union[Kind, str, None] = None,
        time_limit: Optional[float] = None,
    ) -> Any:
        """Register a handler (also usable as a decorator, with or without arguments).

        Args:
            handler: A function taking the message, or an object with a
                ``handle(self, msg)`` method (dependencies as its fields).
            message_type: The message class; default: the annotation of
                the handler's first parameter.
            kind: ``"command"`` or ``"query"``; needed only for plain attrs
                classes that subclass neither Command nor Query.
            time_limit: A soft limit in seconds. Past it the caller gets a
                504 timeout-class error and the overrun is logged; the
                handler's thread runs on until the handler returns (Python
                cannot kill a thread) and its late result is dropped.

        Returns:
            The handler, unchanged.

        Raises:
            RegistrationError: no usable message type, or a second handler
                for the same type.
            LifecycleError: the pool is already running.
        """
        if handler is None:
            return lambda h: self.register(h, message_type=message_type, kind=kind, time_limit=time_limit)
        if self._state is not _State.NEW:
            raise LifecycleError("register handlers before start()")
        self.dispatcher.register(handler, message_type=message_type, kind=kind, time_limit=time_limit)
        return handler

    def bind(self, bus: Bus) -> WorkerPool:
        """Serve on ``bus`` (before :meth:`start`)."""
        if self._state is not _State.NEW:
            raise LifecycleError("bind() works only before start()")
        self.bus = bus
        return self

    @property
    def subjects(self) -> List[str]:
        """The subjects served, in registration order."""
        return [route.subject for route in self.dispatcher.routes]

    @property
    def running(self) -> bool:
        """Whether the pool is started and not stopping."""
        return self._state is _State.RUNNING

    @property
    def stopped(self) -> bool:
        """Whether the pool has stopped: :meth:`stop` has finished, or :meth:`start` failed."""
        return self._stopped.is_set()

    @property
    def inflight(self) -> int:
        """Requests admitted and durable commands pulled, not yet answered.

        Threads reserved for a durable pull that brought nothing yet are not counted.
        """
        return self._inflight - self._reserved

    @property
    def expired(self) -> int:
        """Requests not started because their caller had already given up."""
        return self.dispatcher.expired

    def _bus(self) -> Bus:
        if self.bus is None:
            raise LifecycleError("this WorkerPool has no Bus; pass one or call bind(bus) first")
        return self.bus

    def stats(self) -> ServiceStats:
        """Per-handler counts and timings: the numbers ``$SRV.STATS`` reports."""
        return ServiceStats.from_dict(self.micro.stats_response())

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> WorkerPool:
        """Start the threads and subscribe; return once the server has the subscriptions.

        Raises:
            RegistrationError: no handler is registered.
            LifecycleError: already started, or no Bus.
            PermissionDeniedError: the server does not let this connection
                subscribe to a handler's subject (the text names it).
        """
        self._validate()
        bus = self._bus()
        with self._lock:
            if self._state is not _State.NEW:
                raise LifecycleError(f"the WorkerPool is {self._state.value}; start() works once")
            if not self.dispatcher.routes:
                raise RegistrationError("no handlers registered; register at least one before start()")
            self._state = _State.RUNNING
        transport = bus.live_transport()
        for i in range(self.max_workers):
            thread = threading.Thread(target=self._work, name=f"natsbus-worker-{self.service_id}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if any(route.time_limit for route in self.dispatcher.routes):
            self._watchdog = Watchdog(self.service_id, self._answer_overrun)

        async def subscribe_all() -> List[Any]:
            subs = []
            for route in self.dispatcher.routes:
                transport.denied_subscriptions.discard(route.subject.lower())  # asked afresh
                subs.append(await transport.subscribe(route.subject, self.queue_group, self._admitter(route)))
                if route.kind is Kind.QUERY:  # scatter-gather (ask_all): every instance, no queue group
                    scatter = scatter_subject(route.name)
                    transport.denied_subscriptions.discard(scatter.lower())
                    subs.append(await transport.subscribe(scatter, "", self._scatter_admitter(route, transport)))
            subs.extend(await self.micro.subscribe(transport))  # $SRV.*: discoverable once serving
            await transport.flush()  # the server has every SUB before we return
            return subs

        try:
            if self.idempotency is not None:  # the store is usable before anything is served
                self.idempotency.open(bus)
            if self.durable is not None:  # streams, bucket and consumer exist with our settings
                self.durable.prepare(bus)
            self.micro.prepare()  # endpoint schemas for INFO: made here, not on the loop thread
            self._subs = bus.run(subscribe_all)
            # The flush's round trip came back after any -ERR the SUBs caused.
            denied = [s for s in self.subjects if s.lower() in transport.denied_subscriptions]
            if denied:
                raise PermissionDeniedError(
                    f"permission denied: this connection may not subscribe to {', '.join(denied)}",
                    subject=denied[0],
                )
            scatter_denied = [
                scatter_subject(r.name)
                for r in self.dispatcher.routes
                if r.kind is Kind.QUERY and scatter_subject(r.name).lower() in transport.denied_subscriptions
            ]
            if scatter_denied:  # ordinary requests are served; ask_all() just gets no answer from here
                logger.warning(
                    "permission denied: %s may not subscribe to %s; ask_all() gets no answer from this instance",
                    self.service_id,
                    ", ".join(scatter_denied),
                )
        except BaseException:
            subs, self._subs = self._subs, []
            if subs:
                try:
                    transport.run(transport.unsubscribe, subs, timeout=5.0)
                except Exception as exc:  # the start failure is what is raised
                    logger.debug("unsubscribing after a failed start failed: %r", exc)
            self._halt_threads(1.0)
            if self._watchdog is not None:
                self._watchdog.stop(1.0)
            self._state = _State.STOPPED
            self._stopped.set()
            raise
        if self.durable is not None:  # pull durable commands onto the worker threads
            self.durable.start()
        bus.attach(self)  # bus.close() stops the pool first
        self.served = True
        logger.info(
            "worker pool %s serving %s with %d threads, %d pending at most (queue group %s)",
            self.service_id,
            ", ".join(self.subjects),
            self.max_workers,
            self.max_pending,
            self.queue_group,
        )
        return self

    def _admitter(self, route: HandlerRoute) -> Callable[[str, str, bytes, RawHeaders], None]:
        capacity = self.max_workers + self.max_pending
        put = self._queue.put
        work = Work
        lock = self._lock
        monotonic = time.monotonic

        def admit(subject: str, reply: str, data: bytes, headers: RawHeaders) -> None:
            # Loop thread: decide and hand off; never parse bodies or run user code here.
            if not reply:
                self.dropped_without_reply += 1
                logger.debug("dropped a message on %s without a reply subject", subject)
                return
            with lock:
                if self._inflight >= capacity or not self._accepting:
                    busy = True
                else:
                    busy = False
                    self._inflight += 1
            if busy:
                self._refuse_busy(route, reply, data)
            else:
                put(work(route, reply, data, headers, monotonic()))

        return admit

    def _scatter_admitter(
        self, route: HandlerRoute, transport: Transport
    ) -> Callable[[str, str, bytes, RawHeaders], None]:
        """Admit requests to ``scatter.queries.X`` (ask_all; no queue group), as :meth:`_admitter` does.

        They share the pool's capacity. Each runs as a job on a worker
        thread, as durable commands do, so that its reply, success or
        error, carries this instance's id and service name (the wire
        contract's "Scatter-gather"). A handler's ``time_limit`` is not
        enforced on them: the asker's own timeout ends its wait.
        """
        capacity = self.max_workers + self.max_pending
        identity = {INSTANCE_HEADER: self.micro.id, SERVICE_HEADER: self.service_id}

        def answer(reply: str, data: bytes, raw_headers: RawHeaders, received: float) -> None:
            # A worker thread: the same dispatch as _work, the reply with the instance's headers.
            headers = as_headers(raw_headers)
            deadline = parse_deadline(headers, received)
            try:
                body, reply_headers = self.dispatcher.dispatch(
                    route, data, transport.max_payload, headers=headers, deadline=deadline
                )
            except BaseException as exc:  # SystemExit and the like: the asker is answered, then the pool stops
                error = HandlerError(
                    f"Handler for {route.name} raised {type(exc).__name__}; {self.service_id} is stopping",
                    subject=route.subject,
                )
                body, reply_headers = error_reply(route.kind, peek_id(data)[0] or "", error)
                try:
                    transport.publish(reply, body, {**(reply_headers or {}), **identity})
                except Exception as publish_error:  # the pool stops whatever happened to the reply
                    logger.warning("the error reply to %s could not be sent: %s", route.subject, publish_error)
                raise
            transport.publish(reply, body, {**(reply_headers or {}), **identity})

        def admit(subject: str, reply: str, data: bytes, headers: RawHeaders) -> None:
            # Loop thread: decide and hand off, as _admitter's admit.
            if not reply:
                self.dropped_without_reply += 1
                return
            with self._lock:
                busy = self._inflight >= capacity or not self._accepting
                if not busy:
                    self._inflight += 1
            if busy:
                self._refuse_busy(route, reply, data, identity)
            else:
                job = functools.partial(answer, reply, data, headers, time.monotonic())
                self._queue.put(Work(route, "", b"", None, 0.0, job))

        return admit

    def _refuse_busy(
        self, route: HandlerRoute, reply: str, data: bytes, extra: Optional[Dict[str, str]] = None
    ) -> None:
        self.refused_busy += 1
        message_id, _ = peek_id(data)
        error = BusyError(
            f"Service busy: {self.service_id} has {self.max_workers} handlers running and "
            f"{self.max_pending} waiting; retry later or on another instance",
            subject=route.subject,
        )
        body, headers = error_reply(route.kind, message_id or "", error)
        self.dispatcher.count_refused(route, error.message)  # an error reply, in the stats too
        logger.debug("refused %s %s: busy", route.subject, message_id)
        self._bus().live_transport().publish(reply, body, {**(headers or {}), **extra} if extra else headers)

    def _answer_overrun(self, route: HandlerRoute, reply: str, data: bytes) -> None:
        """Watchdog thread: the handler overran; the caller gets a 504 now."""
        self.overruns += 1
        message_id, _ = peek_id(data)
        limit_ms = round((route.time_limit or 0) * 1000)
        error = DeadlineExceededError(
            f"Handler for {route.name} exceeded its time limit of {limit_ms}ms", subject=route.subject
        )
        logger.warning(
            "%s %s: handler %s overran its %dms limit; the caller got a timeout error and the "
            "thread keeps running until the handler returns",
            route.subject,
            message_id,
            route.label,
            limit_ms,
        )
        self.dispatcher.count_overrun(route, error.message)
        body, headers = error_reply(route.kind, message_id or "", error)
        try:
            self._bus().live_transport().publish(reply, body, headers)
        except BusClosedError:
            pass

    def _work(self) -> None:
        transport = self._bus().live_transport()
        dispatch = self.dispatcher.dispatch
        # A repeated command_id gets the reply already sent, looked up once the envelope is decoded.
        memory = self.idempotency.guard(self._bus()) if self.idempotency is not None else None
        get = self._queue.get
        pending = self._queue.items
        park = threading.Lock()
        park.acquire()
        while True:
            item = get(park)
            if item is STOP:
                return
            job = item.job
            claim: Optional[threading.Lock] = None
            try:
                if job is not None:  # a durable command: the job runs, stores and acks it
                    job()
                    continue
                route, reply, data = item.route, item.reply, item.data
                assert route is not None  # a request always has its route
                if route.time_limit is not None and self._watchdog is not None:
                    claim = threading.Lock()
                    self._watchdog.watch(time.monotonic() + route.time_limit, claim, route, reply, data)
                headers = as_headers(item.headers)  # parsed here, off the loop
                deadline = parse_deadline(headers, item.received)
                answer = dispatch(
                    route, data, transport.max_payload, headers=headers, deadline=deadline, memory=memory, claim=claim
                )
                if type(answer) is not Late:  # the watchdog did not answer first (dispatch took the claim)
                    # Write it now when idle; under load, let the loop batch the replies.
                    transport.publish(reply, answer[0], answer[1], direct=not pending)
                else:
                    logger.warning("%s: a handler finished after its time limit; its result was dropped", route.subject)
            except BusClosedError:
                logger.warning("the Bus closed before the reply to %s could be sent", item.describe())
            except Exception:  # keep the thread alive whatever happens
                logger.exception("unexpected failure serving %s", item.describe())
            except BaseException as exc:  # a handler raised KeyboardInterrupt, SystemExit, ...
                self._interrupted(exc, item, claim, transport)
            finally:
                with self._lock:
                    self._inflight -= 1
                    self._completed += 1
                    if self._inflight - self._reserved <= 1:  # stop() from a handler waits for 1
                        self._idle.notify_all()

    def _interrupted(self, exc: BaseException, item: Work, claim: Optional[threading.Lock], transport: Any) -> None:
        """A worker thread: a handler raised ``exc``, which is no ``Exception``; the pool stops.

        What a one-threaded server would do with a ``KeyboardInterrupt`` or
        ``SystemExit`` from its handler, short of losing requests: the
        caller gets a 500 error reply now; the pool drains and stops; then
        :meth:`run` re-raises ``exc`` in its own thread (``natsbus worker``
        exits as ``sys.exit()`` asked). A pool served with :meth:`start`
        stops the same way, from a thread of its own (nothing of the
        caller's can receive ``exc``). This thread serves on until the stop
        ends every thread, so the drain keeps its full capacity.
        """
        what = type(exc).__name__
        route = item.route
        if route is not None and item.job is None:  # a request; a job (durable, scatter) answered for itself
            message_id = peek_id(item.data)[0] or ""
            logger.error(
                "handler %s raised %s on %s %s: stopping the pool",
                route.label,
                what,
                route.subject,
                message_id,
                exc_info=exc,
            )
            if claim is None or claim.acquire(blocking=False):  # not answered by the watchdog yet
                error = HandlerError(
                    f"Handler for {route.name} raised {what}; {self.service_id} is stopping", subject=route.subject
                )
                body, headers = error_reply(route.kind, message_id, error)
                try:
                    transport.publish(item.reply, body, headers)
                except Exception as publish_error:  # the pool stops whatever happened to the reply
                    logger.warning("the error reply to %s could not be sent: %s", route.subject, publish_error)
        else:
            logger.error("the handler of %s raised %s: stopping the pool", item.describe(), what)
        with self._lock:
            first = self._interruption is None
            if first:
                self._interruption = exc
        self._stop_requested.set()  # run() drains, then re-raises it
        if first and not self._in_run:
            threading.Thread(target=self.stop, name=f"natsbus-stop-{self.service_id}", daemon=True).start()

    def stop(self, drain_timeout: float = 30.0) -> bool:
        """Stop gracefully: no new requests, finish admitted ones, reply, return.

        In this order, within ``drain_timeout``:

        1. take no new work: the durable consumer stops pulling (see
           :class:`~natsbus.DurableConfig` ``fetch_timeout``) and the
           subscriptions drain (the server stops sending to us, so
           queue-group peers get the new requests; what it already sent is
           still admitted);
        2. wait for every admitted request and every started durable
           command to be answered;
        3. hand back (nak) the durable commands pulled and not started, so
           that another instance runs them at once;
        4. end the threads;
        5. flush the replies to the server. The Bus stays open.

        Safe to call again, from any thread: a second call waits (up to
        its own ``drain_timeout``) for the first one to finish and returns
        the first one's result; False when the first is still draining by
        then. Called by a handler of this pool, it does not wait (the first
        call is waiting for that very handler) and so returns False unless
        the first call has finished.

        Args:
            drain_timeout: Seconds for the whole drain.

        Returns:
            True when everything admitted was answered in time.
        """
        with self._lock:
            if self._state in (_State.STOPPING, _State.STOPPED):
                second = True
            else:
                second = False
                was_running = self._state is _State.RUNNING
                self._state = _State.STOPPING
                completed_before = self._completed
        if second:
            # Another stop() is draining: wait for its result (but not from a
            # handler, whose own request that drain is waiting for).
            if threading.current_thread() not in self._threads:
                self._stopped.wait(drain_timeout)
            return self._stop_result if self._stopped.is_set() else False  # not drained (yet)
        return self._stop(was_running, completed_before, drain_timeout)

    def _stop(self, was_running: bool, completed_before: int, drain_timeout: float) -> bool:
        # The order of stop()'s docstring, as dramatiq's Worker.stop. Why:
        # nothing new may arrive while we wait for what runs, or the drain
        # would have no end (1 before 2); a pulled command is handed back only
        # once no thread got to it within the drain (3 after 2) and before the
        # threads end (3 before 4), so a late thread skips it rather than
        # running a command JetStream is giving to another instance; the
        # replies are flushed once the last one is written (5 last). The Bus
        # stays open throughout: every step but 4 needs it.
        deadline = time.monotonic() + drain_timeout
        bus = self.bus
        serving = was_running and bus is not None and not bus.closed
        if serving:
            assert bus is not None
            subs, self._subs = self._subs, []
            transport = bus.live_transport()
            try:
                transport.run(transport.drain_subscriptions, subs, timeout=max(0.1, drain_timeout))
            except Exception as exc:
                logger.warning("draining the subscriptions of %s failed: %s", self.service_id, exc)
                try:  # at least stop interest, so queue-group peers get the requests
                    transport.run(transport.unsubscribe, subs, timeout=2.0)
                except Exception as again:
                    logger.warning("unsubscribing %s failed: %s", self.service_id, again)
        durable = self.durable if was_running else None
        if durable is not None:  # a pull in progress ends (fetch_timeout) or is cancelled at the deadline
            durable.stop(max(0.0, min(deadline - time.monotonic(), durable.config.fetch_timeout + 0.5)))
        self._accepting = False
        # A handler may call stop() (or Bus.close()): its own request counts
        # as in flight until it returns, so it is not waited for.
        own = 1 if threading.current_thread() in self._threads else 0
        with self._lock:
            while self._inflight - self._reserved > own and time.monotonic() < deadline:
                self._idle.wait(deadline - time.monotonic())
            left = self._inflight - self._reserved - own
            drained = self._completed - completed_before
        if durable is not None:
            # Counted in `left` until now; no thread started them, none will.
            left -= durable.abandon_unstarted()
        self._halt_threads(max(0.0, deadline - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.stop(1.0)
        if serving:
            assert bus is not None
            try:
                bus.run(bus.live_transport().flush, max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                logger.warning("flushing the replies of %s failed: %s", self.service_id, exc)
        self._state = _State.STOPPED
        self._stop_result = not left
        self._stopped.set()
        if left:
            logger.warning(
                "worker pool %s stopped: drained %d request(s); %d still running after %gs were abandoned",
                self.service_id,
                drained,
                left,
                drain_timeout,
            )
        else:
            logger.info("worker pool %s stopped: drained %d request(s), none left", self.service_id, drained)
        return not left

    # -- durable commands borrow idle worker threads (natsbus.durable) ----
    # The pool's side of _consumer.WorkerThreads: for the durable consumer only.

    def reserve_workers(self, wanted: int) -> int:
        """For the durable consumer: reserve up to ``wanted`` idle threads; return how many.

        Reserved threads count in the pool's capacity, not as work in
        flight. None once the pool stops.
        """
        with self._lock:
            if self._state is not _State.RUNNING:
                return 0
            count = max(0, min(wanted, self.max_workers - self._inflight))
            self._inflight += count
            self._reserved += count
            return count

    def release_workers(self, count: int) -> None:
        """For the durable consumer: give back ``count`` reserved threads that got no command."""
        with self._lock:
            self._inflight -= count
            self._reserved -= count

    def run_reserved(self, job: Callable[[], None]) -> None:
        """For the durable consumer: run ``job`` on a reserved thread; it answers for itself (no reply subject)."""
        with self._lock:
            self._reserved -= 1  # work in flight from now on
        self._queue.put(Work(None, "", b"", None, 0.0, job))

    def _halt_threads(self, timeout: float) -> None:
        for _ in self._threads:
            self._queue.put(STOP)
        end = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():  # stop() called by a handler
                thread.join(max(0.0, end - time.monotonic()))

    def bus_closing(self, timeout: float) -> None:
        """Its Bus is closing (the Bus calls this): stop serving, drained within ``timeout``; end the threads."""
        self.stop(drain_timeout=timeout)

    def run(
        self,
        drain_timeout: float = 30.0,
        *,
        on_serving: Optional[Callable[[], None]] = None,
        on_draining: Optional[Callable[[], None]] = None,
    ) -> bool:
        """Start (if needed) and serve until :meth:`request_stop`, SIGINT or SIGTERM.

        The first signal drains gracefully (see :meth:`stop`); a second one
        stops at once by raising ``SystemExit(128 + signal)``. Signal
        handlers are installed only when called on the main thread.

        The handlers are in place before the pool subscribes, so a signal
        that arrives as soon as it serves drains it instead of killing the
        process.

        A handler that raises ``KeyboardInterrupt`` or ``SystemExit`` (e.g.
        calls ``sys.exit(3)``) stops the pool too: its caller gets a 500
        error reply, the pool drains, and then ``run()`` re-raises that
        exception here, as a one-threaded server would have.

        Args:
            drain_timeout: Seconds for the drain (see :meth:`stop`).
            on_serving: Called once the pool serves (e.g. to tell systemd
                ``READY=1``).
            on_draining: Called when the drain starts, before :meth:`stop`
                (e.g. ``STOPPING=1``).

        Returns:
            What :meth:`stop` returned: True when everything was drained.

        Raises:
            NatsBusError: :meth:`start` failed (nothing was served).
            BaseException: the ``KeyboardInterrupt`` / ``SystemExit`` a
                handler raised, once the pool has drained.
        """
        previous: Dict[signal.Signals, Any] = {}
        signals: List[int] = []
        if threading.current_thread() is threading.main_thread():

            def on_signal(signum: int, frame: Any) -> None:
                # No locks and no logging here: the handler runs between two
                # bytecodes of the main thread, which may hold those locks.
                signals.append(signum)
                if len(signals) >= 2:
                    raise SystemExit(128 + signum)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        self._in_run = True
        try:
            if self._state is _State.NEW:
                self.start()
            if on_serving is not None:
                on_serving()
            while not signals and self._state is _State.RUNNING:
                if self._stop_requested.wait(0.2):
                    break
            if signals:
                logger.info("signal %d: draining (send it again to stop at once)", signals[0])
            if on_draining is not None:
                on_draining()
            drained = self.stop(drain_timeout)
            if self._interruption is not None:  # a handler's KeyboardInterrupt / SystemExit, after the drain
                raise self._interruption
            return drained
        except SystemExit:
            if len(signals) >= 2:
                logger.warning("second signal: stopping at once (signal %d)", signals[-1])
                self._abandon()
            raise
        finally:
            self._in_run = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _abandon(self) -> None:
        """Stop at once (a second signal cut the drain short): not drained, and nobody waits for it.

        The drain that was running unwound; without this, ``Bus.close()``
        (which stops the pools on it) would wait its whole timeout for that
        drain to finish. The worker threads are daemons: the process exits
        with whatever handler still runs.
        """
        with self._lock:
            self._state = _State.STOPPED
        self._stop_result = False
        self._stopped.set()

    def request_stop(self) -> None:
        """Ask :meth:`run` to drain and return (any thread)."""
        self._stop_requested.set()

    def __enter__(self) -> WorkerPool:
        if self._state is _State.NEW:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
