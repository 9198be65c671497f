"""The connection: :class:`Bus`, its loop thread, and its safety across fork and exit."""

from __future__ import annotations

import atexit
import enum
import heapq
import itertools
import logging
import os
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

import attrs

from ._micro import DISCOVERY_QUIET, DISCOVERY_TIMEOUT
from ._transport import ConnectionState, Headers, PendingReply, Reply, Transport
from ._transport.pending import await_reply
from ._transport.portal import Portal
from .config import NatsConfig, redact_url
from .context import DEADLINE_HEADER
from .errors import BusClosedError, NotConnectedError
from .messages import (
    Kind,
)
from .policies import DEFAULT, TimeoutArg

if TYPE_CHECKING:  # natsbus.discovery loads on the first discovery call
    from . import discovery


__all__ = ["Bus", "ConnectionState"]

logger = logging.getLogger("natsbus.bus")

R = TypeVar("R")
T = TypeVar("T")


class _State(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


# Buses alive in this process, so a fork can reset their locks in the child
# (a lock held by another thread at fork time would never be released there)
# and interpreter exit can close them.
_LIVE_BUSES: weakref.WeakSet[Bus] = weakref.WeakSet()

# What forked children inherited from their parent's buses (loop, connection,
# completer), referenced for good: no destructor may ever run on them in the
# child, as closing the inherited event loop there would unregister the
# parent's descriptors from the epoll instance both processes share.
_INHERITED: List[Any] = []

#: Seconds :meth:`Bus.close` may take per step when the interpreter exits.
EXIT_CLOSE_TIMEOUT = 2.0


# Bumped in every forked child, so a Bus can tell it crossed a fork by
# comparing one integer on the hot path instead of calling os.getpid().
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    for bus in list(_LIVE_BUSES):
        bus._lock = threading.Lock()
        bus._users = weakref.WeakSet()  # the parent's pools have no threads here
        if bus._state is _State.OPEN:
            _INHERITED.append((bus._portal, bus._transport, bus._completer_thread))
            # The child's copy of the parent's socket is closed (the parent
            # keeps its connection); the child's first call opens its own.
            bus._transport.release_after_fork()
        bus._completer_thread = None


def _close_live_buses() -> None:
    """At interpreter exit: close every Bus this process opened and did not close.

    Without it, what :meth:`Bus.publish` queued would be lost with the loop
    thread (a daemon), and the server would see the connection drop.
    """
    for bus in list(_LIVE_BUSES):
        if bus._pid == os.getpid() and not bus.closed:
            try:
                bus.close(EXIT_CLOSE_TIMEOUT)
            except Exception as exc:  # exit goes on whatever happens
                logger.debug("closing %r at exit failed: %r", bus, exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_live_buses)


def _less_waited(headers: Headers, waited: float) -> Headers:
    """``headers`` with the deadline header shortened by ``waited`` seconds (a new dict)."""
    if not headers or DEADLINE_HEADER not in headers or waited <= 0:
        return headers
    try:
        ms = int(headers[DEADLINE_HEADER])
    except ValueError:
        return headers
    return {**headers, DEADLINE_HEADER: str(max(1, ms - round(waited * 1000)))}


def bounded_grace(grace: TimeoutArg, default: Optional[float], limit: Optional[float]) -> Optional[float]:
    """A call's reconnect grace: its own or ``default``, never longer than its timeout ``limit``."""
    seconds = default if grace is DEFAULT else grace
    if limit is not None and (seconds is None or seconds > limit):
        return limit
    return seconds


class Bus:
    """A connection to NATS, usable from any number of threads at once.

    It owns one background thread running an asyncio loop with a nats-py
    client; every method blocks the calling thread, never the loop. It
    connects when built, trying each server once: a server that refuses
    fails at once, so a Bus nobody lets in fails in milliseconds, not
    after ``connect_timeout``.

    While it is disconnected, a call waits up to its reconnect grace
    (``config.reconnect_grace``, 1 s by default; or the call's
    ``reconnect_grace=``) for the connection, then raises
    :class:`NotConnectedError` without sending anything. nats-py goes on
    reconnecting meanwhile; :attr:`state` says where it stands.

    After ``os.fork()`` the child's first call opens its own connection
    (and loop thread); the parent keeps its own.

    Args:
        config: A :class:`NatsConfig`, a server URL, or ``None`` for
            :meth:`NatsConfig.from_env`.
        **overrides: :class:`NatsConfig` fields that win over ``config``.

    Raises:
        ConnectError: no server let the Bus in; the text names each URL
            and its reason (refused, a refused login, TLS, no answer
            within ``config.connect_timeout``). Not with
            ``config.connect_in_background``: that Bus keeps trying.
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
        self._generation = _fork_generation
        self._portal, self._transport = self._open()
        self._completer_thread: Optional[Completer] = None
        # Objects close() stops first (running WorkerPools; see attach).
        self._users: weakref.WeakSet[Any] = weakref.WeakSet()
        _LIVE_BUSES.add(self)

    def _open(self, *, in_background: bool = False) -> Tuple[Portal, Transport]:
        """A loop thread and a transport on it, connected (or, ``in_background``, connecting)."""
        portal = Portal()
        portal.start()
        try:
            if in_background:
                # A forked child's: its calls wait for it within their own timeouts
                # (see call_grace), and it keeps trying, whatever the config says.
                transport = Transport(attrs.evolve(self.config, connect_in_background=True), portal)
                portal.start_soon(transport.connect)
            else:
                transport = Transport(self.config, portal)
                portal.call(transport.connect)
        except BaseException:
            portal.stop()
            raise
        return portal, transport

    def live_transport(self) -> Transport:
        """The transport to use now; reopens once in a forked child (the :class:`Connection` seam).

        In a forked child, the first use opens the child's own connection
        and waits for its first round of tries (within ``connect_timeout``,
        as ``Bus()`` does); calls do not wait here but within their own
        timeouts (see :meth:`call_grace`).
        """
        transport = self._current()
        if not transport.opened.is_set() and not self._portal.in_loop_thread():
            transport.opened.wait(self.config.connect_timeout)
        return transport

    def _current(self) -> Transport:
        """The transport to use now, reopened (connecting in the background) in a forked child."""
        if self._generation != _fork_generation:
            with self._lock:
                if self._generation != _fork_generation and self._state is _State.OPEN:
                    # The parent's loop thread does not exist here; its
                    # objects stay unclosed (see _INHERITED): the parent owns them.
                    self._portal, self._transport = self._open(in_background=True)
                    self._completer_thread = None
                    self._pid = os.getpid()
                    self._generation = _fork_generation
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
        """Whether calls are sent at once now: connected (after a reconnect, re-subscribed).

        False while reconnecting, before ``connect_in_background`` got in,
        once closed, and in a forked child until its first call opens its own.
        """
        return self._state is _State.OPEN and self._pid == os.getpid() and self._transport.is_connected

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands (:class:`ConnectionState`), e.g. for a health check."""
        if self._state is _State.CLOSED:
            return ConnectionState.CLOSED
        if self._pid != os.getpid():
            return ConnectionState.CONNECTING  # a forked child connects on its first call
        return self._transport.state

    @property
    def reconnect_grace(self) -> Optional[float]:
        """Seconds a call waits for the connection while disconnected, unless it says otherwise.

        ``config.reconnect_grace`` (0 with ``config.fail_fast_when_disconnected``).
        """
        return 0.0 if self.config.fail_fast_when_disconnected else self.config.reconnect_grace

    def call_grace(self, grace: TimeoutArg, limit: Optional[float]) -> Optional[float]:
        """Seconds a call with this ``reconnect_grace`` and timeout ``limit`` waits for the connection now.

        Its grace (:attr:`reconnect_grace` by default), never past ``limit``.
        While a forked child's own connection is being opened (its first
        call), a call without a grace of its own waits for it up to
        ``limit``: an opening connection is no outage, and a fail-fast
        Bus must not fail the child's first call for it.
        """
        if grace is DEFAULT and not self._transport.opened.is_set():
            return limit
        return bounded_grace(grace, self.reconnect_grace, limit)

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Wait until the Bus is connected (or closed); whether it is.

        For start-up scripts and health checks; calls wait by themselves
        (up to their reconnect grace).

        Args:
            timeout: Seconds; ``None`` waits as long as it takes.

        Raises:
            LoopThreadError: called on the Bus's loop thread.
        """
        transport = self.live_transport()
        self._portal.check_caller("Bus.wait_connected()")
        return transport.wait_connected(timeout)

    @property
    def connected_url(self) -> str:
        """The URL of the server this process is connected to now, or ``""``."""
        return self._transport.connected_url if self._pid == os.getpid() else ""

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
        reconnect_grace: TimeoutArg = DEFAULT,
    ) -> Reply:
        """Send raw bytes and wait for the raw reply (no envelopes).

        Args:
            subject: Where to send.
            payload: The body.
            timeout: Seconds; ``None`` waits forever.
            headers: NATS headers to send.
            reconnect_grace: Seconds to wait for the connection when
                disconnected (within ``timeout``); default
                :attr:`reconnect_grace`; ``None``: up to ``timeout``.

        Returns:
            ``Reply(data, headers)``.

        Raises:
            RequestTimeoutError: no reply in time.
            NotConnectedError: disconnected for the whole grace; nothing sent.
            NoHandlerError: nobody subscribes ``subject``.
            PayloadTooLargeError: ``payload`` is over the server's limit.
            BusClosedError: the Bus is (or got) closed.
            LoopThreadError: called on the Bus's loop thread.
        """
        hdrs = dict(headers) if headers else None
        left = timeout
        try:
            pending = self.begin_request(subject, payload, hdrs)
        except NotConnectedError:
            started = time.monotonic()
            grace = self.call_grace(reconnect_grace, timeout)
            pending = self.begin_request(subject, payload, hdrs, reconnect_grace=grace)
            if timeout is not None:
                left = max(0.0, timeout - (time.monotonic() - started))
        return await_reply(pending, left, "Request timeout after {ms}ms", timeout)

    def publish(self, subject: str, payload: bytes, *, headers: Optional[Mapping[str, str]] = None) -> None:
        """Publish raw bytes without waiting for anything (fire and forget).

        Queued for the loop at once; never blocks on the network. Use
        :meth:`flush` to wait until the server has it.

        Raises:
            PayloadTooLargeError: ``payload`` is over the server's limit.
            NotConnectedError: not connected yet (``connect_in_background``),
                or disconnected with ``fail_fast_when_disconnected``; while
                reconnecting it is otherwise buffered (``reconnect_buffer_size``).
            BusClosedError: the Bus is closed.
        """
        transport = self.live_transport()
        transport.check_send(subject, payload)
        transport.publish(subject, payload, dict(headers) if headers else None)

    def flush(self, timeout: Optional[float] = 5.0) -> None:
        """Wait until everything published so far has reached the server.

        Raises:
            TimeoutError: not confirmed within ``timeout`` seconds.
        """
        transport = self.live_transport()
        self._portal.call(transport.flush, timeout=timeout)

    def begin_request(
        self,
        subject: str,
        payload: bytes,
        headers: Headers = None,
        notify: Optional[Callable[[PendingReply], None]] = None,
        *,
        reconnect_grace: Optional[float] = 0.0,
    ) -> PendingReply:
        """Send a request; return its :class:`PendingReply` (the ``Requester`` seam).

        ``notify`` is called with the PendingReply once it completes, on the
        loop thread (or a closing thread): it must only hand off.

        Args:
            reconnect_grace: Seconds to wait for the connection when it is
                down (``None``: as long as it takes); by default none: the
                seam raises at once and its caller decides.

        Raises:
            NotConnectedError: not connected (for ``reconnect_grace``);
                nothing was sent.
        """
        transport = self._current()  # a call waits for an opening connection within its own timeout
        self._portal.check_caller("a blocking natsbus request")
        try:
            return transport.request(subject, payload, headers, notify)
        except NotConnectedError:
            if reconnect_grace is not None and reconnect_grace <= 0:
                raise
        return self._request_when_connected(subject, payload, headers, notify, reconnect_grace)

    def _request_when_connected(
        self,
        subject: str,
        payload: bytes,
        headers: Headers,
        notify: Optional[Callable[[PendingReply], None]],
        grace: Optional[float],
    ) -> PendingReply:
        """The request, sent as soon as the connection is back within ``grace`` seconds."""
        started = time.monotonic()
        deadline = None if grace is None else started + grace
        while True:
            transport = self._current()
            if transport.state is ConnectionState.DISCONNECTED:  # no reconnect is coming
                raise transport.not_connected_error(subject)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise transport.not_connected_error(subject, waited=grace or 0.0)
            if not transport.opened.is_set():  # a forked child's connection, being opened
                if not transport.opened.wait(left):
                    continue  # not open within the wait: the next turn says so
                if not transport.is_connected:  # the first tries failed: at once, like Bus()
                    raise transport.not_connected_error(subject)
            transport.wait_connected(left)
            try:
                # The caller's deadline, as the worker reads it, counts the time waited here.
                sent = _less_waited(headers, time.monotonic() - started)
                return transport.request(subject, payload, sent, notify)
            except NotConnectedError:
                continue  # down again already (a closed Bus raises BusClosedError instead)

    def completer(self) -> Completer:
        """The thread that completes this Bus's futures (started on first use; the ``Requester`` seam)."""
        self._current()  # in a forked child, the parent's completer is forgotten first
        completer = self._completer_thread
        if completer is None:
            with self._lock:
                if self._state is _State.CLOSED:
                    raise BusClosedError("the Bus is closed")
                if self._completer_thread is None:
                    self._completer_thread = Completer()
                completer = self._completer_thread
        return completer

    def run(self, coro_fn: Any, timeout: Optional[float] = None) -> Any:
        """Run ``coro_fn()`` on the Bus's loop and wait (for extensions)."""
        self.live_transport()
        return self._portal.call(coro_fn, timeout=timeout)

    # -- service discovery (NATS micro protocol; see natsbus.discovery) --------

    def ping(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = DISCOVERY_TIMEOUT,
        quiet: float = DISCOVERY_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServicePing]:
        """PING every NATS micro service instance; see :func:`natsbus.discovery.ping`."""
        from . import discovery

        return discovery.ping(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def discover(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = DISCOVERY_TIMEOUT,
        quiet: float = DISCOVERY_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServiceInfo]:
        """INFO from every service instance: what each serves; see :func:`natsbus.discovery.discover`."""
        from . import discovery

        return discovery.discover(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def stats(
        self,
        name: Optional[str] = None,
        id: Optional[str] = None,
        *,
        timeout: float = DISCOVERY_TIMEOUT,
        quiet: float = DISCOVERY_QUIET,
        count: Optional[int] = None,
    ) -> List[discovery.ServiceStats]:
        """STATS from every service instance: per-endpoint counters; see :func:`natsbus.discovery.stats`."""
        from . import discovery

        return discovery.stats(self, name, id, timeout=timeout, quiet=quiet, count=count)

    def has_handler(
        self,
        message_type: Union[str, type],
        *,
        kind: Union[Kind, str, None] = None,
        timeout: float = DISCOVERY_TIMEOUT,
        quiet: float = DISCOVERY_QUIET,
    ) -> bool:
        """Whether a running service lists ``message_type``; see :func:`natsbus.discovery.has_handler`."""
        from . import discovery

        return discovery.has_handler(self, message_type, kind=kind, timeout=timeout, quiet=quiet)

    def schema(
        self,
        message_type: Union[str, type],
        *,
        service: Optional[str] = None,
        kind: Union[Kind, str, None] = None,
        timeout: float = DISCOVERY_TIMEOUT,
        quiet: float = DISCOVERY_QUIET,
    ) -> discovery.EndpointContract:
        """The contract a running service publishes for ``message_type``; see :func:`natsbus.discovery.contract`.

        Its ``request_schema`` and ``response_schema`` are JSON Schemas
        (draft 2020-12) of the request and success-reply payloads.
        """
        from . import discovery

        return discovery.contract(self, message_type, service=service, kind=kind, timeout=timeout, quiet=quiet)

    def attach(self, user: Any) -> None:
        """Have :meth:`close` call ``user.bus_closing(timeout)`` first (a running WorkerPool)."""
        self._users.add(user)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued, close the connection and join the loop thread.

        WorkerPools still serving on this Bus are stopped first (drained
        within ``timeout``), so no natsbus thread outlives it. Calls waiting
        for a reply fail at once with :class:`BusClosedError`. Safe to call
        twice. Buses not closed are closed when the interpreter exits.
        """
        if self._state is _State.OPEN and self._pid == os.getpid():
            for user in list(self._users):
                try:
                    user.bus_closing(timeout)
                except Exception as exc:  # the Bus closes whatever happens
                    logger.warning("stopping %r before closing the Bus failed: %r", user, exc)
        with self._lock:
            if self._state is _State.CLOSED:
                return
            self._state = _State.CLOSED
        _LIVE_BUSES.discard(self)
        if self._pid != os.getpid():
            return  # a forked child that never used the Bus owns nothing
        # Order: flush and close the connection (failing calls still waiting),
        # then stop the loop, then the completer, which settles the futures
        # the close just failed before it exits.
        if self._portal.in_loop_thread():
            self._transport.mark_closed()
            self._portal.stop()
        else:
            try:
                self._portal.call(self._transport.close, timeout, timeout=timeout + 1.0)
            except Exception as exc:  # the loop is stopped below whatever happened
                logger.debug("closing the connection failed: %r", exc)
                self._transport.mark_closed()
            self._portal.stop(timeout)
        if self._completer_thread is not None:
            self._completer_thread.stop(timeout)

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<natsbus.Bus {self.state.value} servers={[redact_url(url) for url in self.config.servers]}>"


class Completer:
    """Completes :meth:`submit` futures on its own thread, never on the loop.

    A future's done-callbacks run on the thread that completes it; users
    attach their own, so the loop thread must not be that thread. This one
    also expires futures whose timeout passes, as no caller waits on them.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Tuple[str, Any]] = queue.SimpleQueue()
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="natsbus-completer", daemon=True)
        self._thread.start()

    def notify(self, pending: PendingReply) -> None:
        """The PendingReply's notify hook (loop thread): just hand it over."""
        self._queue.put(("done", pending))

    def watch(
        self,
        pending: PendingReply,
        deadline: Optional[float],
        finish: Callable[[Reply], Any],
        future: Future[Any],
        timeout_error: Callable[[], BaseException],
    ) -> None:
        """Complete ``future`` with ``finish(reply)`` (sent with ``notify=self.notify``)."""
        with self._stop_lock:
            if not self._stopped:
                self._queue.put(("new", (pending, deadline, finish, future, timeout_error)))
                return
        # The Bus closed between sending and watching: nobody completes it now.
        future.set_exception(BusClosedError("the Bus was closed while waiting for a reply"))

    def stop(self, timeout: float) -> None:
        with self._stop_lock:
            self._stopped = True
            self._queue.put(("stop", None))  # after every "new" that got in
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        heap: List[Tuple[float, int, PendingReply]] = []
        entries: Dict[PendingReply, Tuple[Any, ...]] = {}
        seq = itertools.count()
        while True:
            wait = None if not heap else max(0.0, heap[0][0] - time.monotonic())
            try:
                kind, item = self._queue.get(timeout=wait)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "stop":
                for pending, entry in entries.items():
                    if pending.done():  # its reply (or error) came in before the close
                        self._finish(pending, entry)
                    elif not entry[2].done():
                        entry[2].set_exception(BusClosedError("the Bus was closed while waiting for a reply"))
                return
            if kind == "new":
                pending = item[0]
                entries[pending] = item[1:]
                if pending.done():  # the reply beat its registration here
                    self._finish(pending, entries.pop(pending))
                elif item[1] is not None:
                    heapq.heappush(heap, (item[1], next(seq), pending))
            elif kind == "done" and item in entries:
                self._finish(item, entries.pop(item))
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                pending = heapq.heappop(heap)[2]
                if pending in entries and pending.abandon():  # else its "done" notice is on the way
                    entry = entries.pop(pending)
                    entry[2].set_exception(entry[3]())

    @staticmethod
    def _finish(pending: PendingReply, entry: Tuple[Any, ...]) -> None:
        _, finish, future, _ = entry
        try:
            future.set_result(finish(pending.result()))
        except BaseException as exc:
            future.set_exception(exc)
