"""The transport: the only package that imports nats; it maps every nats error to ours.

(Core NATS here; JetStream in :mod:`natsbus._transport.jetstream`.)

Hot path, client side: a caller thread encodes its request as a complete
NATS protocol frame and registers a waiter under a fresh token. With few
requests in flight it writes the frame to the socket itself (see "direct
writes" below): no wake-up of the loop at all. With many in flight it
appends the frame to the outbox; the first caller to find the outbox idle
wakes the loop once, and the loop writes every queued frame in one go.
Replies to the one wildcard inbox are handed straight from nats-py's
parser to the waiting thread (a lock released per reply). No task,
coroutine, asyncio future or timer is made per call; timeouts are measured
by the waiting thread.

Worker side: messages of worker subscriptions are likewise handed from the
parser straight to the admission function (which must never block). A
worker thread that finds no more work queued writes its reply to the
socket directly; under load replies go through the outbox, batched.

Direct writes: on a plain TCP connection every write, nats-py's own
included (its transport is a :class:`~natsbus._transport.nats_client.LockedTcpTransport`), happens under
one lock. A thread holding it sends straight to the non-blocking socket
when nothing else is waiting to be written (asyncio's buffer and nats-py's
are empty); whatever the socket does not take becomes the "tail", which
the loop hands to asyncio before anything else. Otherwise (TLS, websocket,
a backed-up socket, a reconnect) frames go through the loop as above.

The direct hand-offs use nats-py internals (``Client._process_msg``, its
write buffer and transport, ``Subscription._id``, ...) and the socket of
asyncio's socket transport; :mod:`~natsbus._transport.nats_client` lists
and probes them all. :data:`FAST_PATH` says whether this nats-py has them;
without them (or with ``NATSBUS_FAST_PATH=0``) the transport takes the
public-API path: one ``Client.publish`` per frame, the same behaviour.
That path uses nats-py's public API only, but for the two things no public
API can do, which both paths do when this nats-py allows it:
:meth:`Transport.drain_subscriptions` and :meth:`Transport.release_after_fork`.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import random
import threading
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Set, Tuple, TypeVar, TypeVarTuple

import nats.errors as nerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from ..config import NatsConfig, redact_text, redact_url
from ..errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from .errors import PERMISSION_RE, connect_reason, is_telling, mapped_core
from .nats_client import DRAIN, FAST, FAST_PATH, WITHOUT, NatsClient, missing_by_use, missing_internals
from .pending import GatheredReply, PendingReply, Reply
from .portal import Doorbell, Portal
from .wire import NO_RESPONDERS, Handler, Headers, check_subject, frame, parse_headers
from .writer import FrameWriter

logger = logging.getLogger("natsbus.transport")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: A caller writes its request to the socket itself only while this few
#: requests are in flight; with more, the loop batches their frames.
DIRECT_MAX_IN_FLIGHT = 2


#: Seconds closing a failed connect try may take. Its socket is closed at
#: once; what is left is asyncio's wait for the close, which never ends
#: after a failed TLS handshake (the stream never hears of the close).
ABORT_TIMEOUT = 0.25


#: A connect try cut off by the server mid-handshake is tried again after
#: each of these pauses, to learn why: a refused client certificate shows
#: as a reset now and then (the server closes as the client writes its
#: CONNECT, and asyncio drops the TLS alert that was on its way).
RESET_RETRY_PAUSES = (0.01, 0.04, 0.16)
RESET_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, nerr.UnexpectedEOF)


# The loop builds each reply as a plain tuple of the Reply type: NamedTuple's own
# __new__ is a Python function, twice the cost, on the one thread every reply crosses.
_new_tuple = tuple.__new__


class ConnectionState(enum.Enum):
    """Where a :class:`~natsbus.Bus`'s connection stands (``bus.state``), for health checks."""

    #: Not connected yet: ``connect_in_background`` is still trying (or a
    #: forked child has not made its first call).
    CONNECTING = "connecting"
    #: Connected: calls are sent at once.
    CONNECTED = "connected"
    #: The connection was lost; nats-py is reconnecting. Calls wait up to
    #: their reconnect grace, then raise NotConnectedError.
    RECONNECTING = "reconnecting"
    #: Not connected, and no longer trying (``max_reconnect_attempts`` spent,
    #: or ``allow_reconnect=False``); calls raise NotConnectedError.
    DISCONNECTED = "disconnected"
    #: The Bus is closed.
    CLOSED = "closed"


class Failure(NamedTuple):
    """One server's failed try to connect: its URL, the error, and the reason as shown."""

    url: str
    error: Optional[BaseException]
    reason: str


class _TryOver(Exception):
    """Raised from nats-py's error callback to end a connect try at its first failure."""


class Transport(FrameWriter):
    """One nats-py connection, driven on the portal's loop.

    Construct it anywhere; call :meth:`connect` through the portal.

    Args:
        config: Connection settings.
        portal: The loop thread.
        fast_path: Use the direct hand-offs (default :data:`FAST_PATH`).

    Raises:
        ConfigError: ``fast_path=True`` and this nats-py lacks an internal
            the fast path needs (the text names it).
    """

    def __init__(self, config: NatsConfig, portal: Portal, *, fast_path: Optional[bool] = None) -> None:
        self.config = config
        self.portal = portal
        if fast_path:
            missing = missing_internals(FAST)
            if missing:
                raise ConfigError(
                    f"the fast path needs nats-py internals this nats-py lacks: {', '.join(missing)}; "
                    "use fast_path=None (or False) for the public-API path"
                )
        self.fast_path = FAST_PATH if fast_path is None else fast_path
        # Whether drain_subscriptions can send its UNSUBs before nats-py's drain.
        self._ordered_drain = self.fast_path or not missing_internals(DRAIN)
        self._nc = NatsClient(self) if self.fast_path else Client()
        # The direct hand-off table (empty and unused on the public-API path).
        self._direct: Dict[int, Callable[[bytes, bytes, bytes, Optional[bytes]], None]] = (
            self._nc.direct if isinstance(self._nc, NatsClient) else {}
        )
        self._waiters: Dict[bytes, PendingReply] = {}
        self._counter = itertools.count(1)
        self._prefix = ""
        self._prefix_bytes = b""
        super().__init__(self._nc, self._waiters)
        self._pump_task: Optional[asyncio.Task[None]] = None
        self._started = False
        self._closed = False
        # Connected and usable: set on the loop once connected (after a
        # reconnect: once the subscriptions are replayed), cleared when the
        # connection goes. Callers read it on the hot path; waiters for a
        # reconnect wait on the event.
        self._up = False
        self._connected = threading.Event()
        #: Set once the first round of connect tries is over (connected or
        #: not), or once closed: until then the connection is being opened.
        self.opened = threading.Event()
        self._opening: Optional[asyncio.Task[Any]] = None  # connect()'s task while it runs
        self._connector: Optional[asyncio.Task[None]] = None  # connect_in_background's retries
        self._failures: List[Failure] = []  # the latest round of tries, until connected
        self._down_reason = ""  # why the connection is down now (redacted)
        self._down_telling = False  # whether that reason names a cause (a refused login, TLS)
        self._gave_up = False
        self._secrets: Optional[List[str]] = None
        #: Whether the current connect try got through its TLS handshake (known on the fast path).
        self.tls_handshake_done = False
        self.max_payload = 1024 * 1024
        self._fail_fast = config.fail_fast_when_disconnected
        #: Subjects (lowercased, as nats-py reports them) the server refused to let us subscribe.
        self.denied_subscriptions: Set[str] = set()

    # -- lifecycle (loop thread) -------------------------------------------

    async def connect(self) -> None:
        """Connect, trying each server once; or raise ConnectError naming each server and why it failed.

        A server that refuses (nothing listens, the login or TLS is
        refused) fails at once, so this takes as long as the slowest
        answer, not ``config.connect_timeout`` (which bounds it). With
        ``config.connect_in_background`` a failed round is no error: the
        transport keeps trying in the background (see :meth:`_keep_connecting`).
        """
        self._opening = asyncio.current_task()
        try:
            failures = await self._connect_round()
            if failures is None:
                return
            self._failures = failures
            text = self._failure_text(failures)
            if self.config.connect_in_background:
                logger.warning("%s; trying again every %gs", text, self.config.reconnect_time_wait)
                self._connector = asyncio.get_running_loop().create_task(self._keep_connecting())
                return
            self._closed = True
            cause = next((f.error for f in failures if f.error is not None and is_telling(f.error)), None)
            raise ConnectError(text, servers=self._shown_servers()) from cause
        finally:
            self._opening = None
            self.opened.set()

    async def _connect_round(self) -> Optional[List[Failure]]:
        """One try of each server, in random order, within ``connect_timeout``; None once one let us in."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.connect_timeout
        order = list(cfg.servers)
        random.shuffle(order)  # as nats-py does: clients spread over a cluster's nodes
        failures: List[Failure] = []
        for index, url in enumerate(order):
            # An equal share of what is left, so one silent server cannot use it all.
            budget = (deadline - loop.time()) / (len(order) - index)
            if budget <= 0.001:
                failures.append(Failure(url, None, f"not tried: connect_timeout={cfg.connect_timeout:g}s ran out"))
                continue
            tried_until = loop.time() + budget
            error = await self._try(order[index:] + order[:index], budget)
            for pause in RESET_RETRY_PAUSES:
                # Cut off mid-handshake: the server's reason (a TLS alert) may
                # have been lost with the connection; a new try often reads it.
                if not isinstance(error, RESET_ERRORS) or tried_until - loop.time() <= pause + 0.001:
                    break
                await asyncio.sleep(pause)
                error = await self._try(order[index:] + order[:index], tried_until - loop.time())
            if error is None:
                await self._on_connected()
                return None
            if isinstance(error, asyncio.TimeoutError):
                reason = f"no answer within {budget:.2g}s"
            else:
                reason = self._scrub(connect_reason(error))
                if isinstance(error, RESET_ERRORS) and self.tls_handshake_done:
                    reason += " right after the TLS handshake: does the server refuse this client's certificate?"
            failures.append(Failure(url, error, reason))
        return failures

    async def _try(self, servers: List[str], budget: float) -> Optional[BaseException]:
        """Try ``servers[0]`` once (the others are the pool to fail over to later); its error, or None.

        nats-py's own connect loop goes on to the next server, or tries the
        same one again, after a failure, and the reason of the first would
        be lost (a refused login is followed by a connection reset). So the
        error callback ends the try at its first error, and the error that
        names a cause (a refused login, TLS) is the one kept.
        """
        nc = self._new_client()
        self.tls_handshake_done = False  # set by the fast path's TCP transport
        first: List[BaseException] = []
        phase = "trying"

        async def on_error(exc: Exception) -> None:
            if phase == "done":
                await self._on_error(exc)
                return
            if not first or (is_telling(exc) and not is_telling(first[0])):
                first[:] = [exc]  # a TLS alert may come only as the failed try is closed
            if phase == "trying":
                raise _TryOver()

        try:
            await asyncio.wait_for(nc.connect(**self._options(servers, on_error)), budget)
        except (Exception, asyncio.CancelledError) as exc:
            phase = "closing"
            await self._abort(ABORT_TIMEOUT)
            phase = "done"
            if isinstance(exc, asyncio.CancelledError):
                raise
            return first[0] if first else exc
        phase = "done"
        return None

    def _new_client(self) -> Client:
        """A fresh nats-py client for a connect try (a failed one is not reused)."""
        nc = NatsClient(self) if self.fast_path else Client()
        self._nc = nc
        self._direct = nc.direct if isinstance(nc, NatsClient) else {}
        return nc

    def _options(self, servers: List[str], error_cb: Callable[[Exception], Awaitable[None]]) -> Dict[str, Any]:
        cfg = self.config
        options: Dict[str, Any] = dict(
            servers=servers,
            dont_randomize=True,  # servers[0] first: the one this try is for
            name=cfg.name,
            error_cb=error_cb,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            closed_cb=self._on_closed,
            allow_reconnect=cfg.allow_reconnect,
            max_reconnect_attempts=cfg.max_reconnect_attempts,
            reconnect_time_wait=cfg.reconnect_time_wait,
            connect_timeout=max(1, min(cfg.connect_timeout, 5.0)),  # per step, for reconnects too
            ping_interval=cfg.ping_interval,
            max_outstanding_pings=cfg.max_outstanding_pings,
            pending_size=cfg.reconnect_buffer_size,
            user=cfg.user,
            password=cfg.password,
            token=cfg.token,
            inbox_prefix=cfg.inbox_prefix,
        )
        if cfg.nkeys_seed:
            options["nkeys_seed"] = cfg.nkeys_seed
        if cfg.user_credentials:
            options["user_credentials"] = cfg.user_credentials
        if cfg.tls is not None:
            options["tls"] = cfg.tls
        if cfg.tls_hostname:
            options["tls_hostname"] = cfg.tls_hostname
        return options

    async def _on_connected(self) -> None:
        """A try got in: set up the reply inbox and the writers; calls may go."""
        nc = self._nc
        # Reconnects pick the next server at random again, as nats-py does by default.
        nc.options["dont_randomize"] = False
        self._loop = asyncio.get_running_loop()
        for use, names in missing_by_use().items():
            logger.warning("this nats-py lacks %s, which %s uses: %s", ", ".join(names), use, WITHOUT[use])
        self.max_payload = nc.max_payload or self.max_payload
        self._prefix = f"{self.config.inbox_prefix}.{NUID().next().decode()}."
        self._prefix_bytes = self._prefix.encode()
        sub = await nc.subscribe(self._prefix + "*", cb=self._on_reply)
        if self.fast_path:
            self._direct[sub._id] = self._on_reply_raw
            self.set_target(self.candidate)  # direct writes from now on
        else:
            self._outbox = Doorbell(self._loop)
            self._pump_task = self._loop.create_task(self._pump())
        self._started = True
        self._failures = []
        self._set_up(True)

    async def _keep_connecting(self) -> None:
        """``connect_in_background``: a round of tries every ``reconnect_time_wait`` until one gets in."""
        cfg = self.config
        rounds = 0
        while not self._closed:
            await asyncio.sleep(cfg.reconnect_time_wait)
            if self._closed:
                return
            failures = await self._connect_round()
            if failures is None:
                logger.warning("connected to NATS at %s", self.connected_url)
                return
            self._failures = failures
            rounds += 1
            if 0 < cfg.max_reconnect_attempts <= rounds:
                self._gave_up = True
                self._set_up(False)  # wakes the calls waiting for it
                logger.error("%s; gave up after %d tries", self._failure_text(failures), rounds)
                return
            logger.debug("%s; trying again in %gs", self._failure_text(failures), cfg.reconnect_time_wait)

    def _failure_text(self, failures: List[Failure]) -> str:
        order = {url: index for index, url in enumerate(self.config.servers)}
        shown = sorted(failures, key=lambda f: order.get(f.url, 0))
        return "could not connect to NATS at " + ", ".join(f"{redact_url(f.url)} ({f.reason})" for f in shown)

    def _shown_servers(self) -> Tuple[str, ...]:
        return tuple(redact_url(url) for url in self.config.servers)

    def _scrub(self, text: str) -> str:
        """``text`` with every credential of the config (and in URLs) as ``***``."""
        if self._secrets is None:
            self._secrets = self.config.secrets()
        return redact_text(text, self._secrets)

    def _set_up(self, up: bool) -> None:
        self._up = up and not self._closed
        if self._up or self._closed or self._gave_up:
            self._connected.set()  # waiters wake (and find it closed, or given up: no use waiting)
        else:
            self._connected.clear()

    async def _abort(self, timeout: Optional[float] = None) -> None:
        try:
            await asyncio.wait_for(self._nc.close(), timeout)
        except Exception:  # best effort after a failed connect
            pass

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Send what is queued, then close; pending waiters fail with BusClosedError."""
        if self._closed:
            return
        try:
            await asyncio.wait_for(self.flush(), flush_timeout)
        except Exception as exc:  # closing anyway; a lost flush is only logged
            logger.debug("flush before close failed: %r", exc)
        self._closed = True
        self._set_up(False)
        self.opened.set()
        self._fail_waiters(BusClosedError("the Bus was closed while waiting for a reply"))
        if self._pump_task is not None:
            self._pump_task.cancel()
        opening = self._opening  # a forked child's first round, started without waiting
        if opening is not None and opening is not asyncio.current_task():
            opening.cancel()
            try:
                await opening
            except BaseException as exc:  # cancelled, as asked
                logger.debug("the first connect ended with %r", exc)
        connector, self._connector = self._connector, None
        if connector is not None:
            connector.cancel()
            try:
                await connector
            except BaseException as exc:  # cancelled, as asked
                logger.debug("the background connect ended with %r", exc)
        await self._abort()

    def mark_closed(self) -> None:
        """From any thread: refuse new requests, fail the waiting ones."""
        self._closed = True
        self._set_up(False)
        self.opened.set()  # nothing is being opened any more
        self._fail_waiters(BusClosedError("the Bus was closed while waiting for a reply"))

    def release_after_fork(self) -> None:
        """In a forked child: close this process's copy of the parent's socket.

        Only the child's file descriptor is closed (no protocol, no TLS
        shutdown), so the parent's connection goes on untouched, and the
        server sees it end when the parent closes it, not when the last
        child exits. Nothing runs on the inherited loop, which has no
        thread here. Idempotent; best effort.

        No public API reaches the socket: this uses ``Client._transport``,
        ``TcpTransport._bare_io_writer`` and ``TransportSocket._sock``, on
        both paths (see :data:`~natsbus._transport.nats_client.FORK`);
        without them the child's copy stays open until it exits.
        """
        self._closed = True
        self._up = False
        self._waiters = {}  # the parent's callers; they do not exist here
        writer = getattr(getattr(self._nc, "_transport", None), "_bare_io_writer", None)
        try:
            wrapped = writer.get_extra_info("socket") if writer is not None else None
            sock = getattr(wrapped, "_sock", None)  # asyncio's TransportSocket wraps the socket
            if sock is not None:
                sock.close()  # closes the descriptor once; the object then knows it is closed
        except Exception as exc:  # pragma: no cover - a transport without a plain socket
            logger.debug("could not release the inherited socket: %r", exc)

    def _fail_waiters(self, exc: BaseException) -> None:
        for token in list(self._waiters):
            waiter = self._waiters.pop(token, None)
            if waiter is not None:
                waiter.settle(None, exc)

    async def flush(self) -> None:
        """Wait until everything queued so far has reached the server.

        Raises:
            BusClosedError: the transport was closed before the server confirmed it.
        """
        if self._started and not self._closed:
            # A marker through the outbox: once the loop reaches it, everything
            # queued before it has been handed to nats-py.
            marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self.fast_path:
                self._enqueue(marker)
            else:
                assert self._outbox is not None
                self._outbox.put(("", b"", "", None, marker))
            await marker
        if self._nc.is_connected:
            await self._barrier()

    async def _barrier(self, timeout: float = 10.0) -> None:
        """A round trip to the server through nats-py's write buffer.

        ``Client.flush()`` is not enough: nats-py writes its PING straight
        to the socket while earlier commands (PUB, SUB, UNSUB) still sit in
        its write buffer, so the PONG can come back before the server has
        seen them. A message to our own inbox goes through the same buffer
        in order, so when it comes back the server has processed, and sent
        us, everything that was queued before it.

        Raises:
            BusClosedError: the transport was closed first (its waiters
                failed): nothing is confirmed.
            asyncio.TimeoutError: no answer within ``timeout`` seconds.
        """
        token = f"barrier-{next(self._counter)}".encode()
        waiter = PendingReply(self._prefix, token, self._waiters)
        self._waiters[token] = waiter
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: Optional[BaseException]) -> None:
            if not done.done():
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

        def arrived(settled: PendingReply) -> None:
            # The message came back, or a closer failed the waiter (then on
            # its own thread, maybe): only the message confirms the barrier.
            try:
                settled.result(0)
                error: Optional[BaseException] = None
            except Exception as exc:
                error = exc
            if threading.get_ident() == loop_thread:
                settle(error)
                return
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:  # the loop is closed: nobody waits for the barrier any more
                pass

        waiter.notify = arrived
        try:
            await self._nc.publish(self._prefix + token.decode(), b"")
            await asyncio.wait_for(done, timeout)
        finally:
            self._waiters.pop(token, None)

    # -- callbacks (loop thread) -------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nerr.UnexpectedEOF) and self._up:
            # The server closed the connection: nats-py says so here, just
            # before it starts reconnecting, and calls the disconnected
            # callback only once the old socket is closed. Calls made in
            # between must not go into its reconnect buffer as if connected.
            self._lost()
        text = str(exc)
        match = PERMISSION_RE.search(text)
        if match:
            self._fail_permission(match.group(1), match.group(2).strip())
            logger.warning("NATS permissions violation: %s", self._scrub(text))
            return
        if self._started and not self._up and not self._closed:
            # A reconnect try failed: what callers are told meanwhile. A reason
            # that names a cause (a refused login, TLS) is not overwritten by
            # the connection reset that follows it.
            reason = self._scrub(connect_reason(exc))
            if is_telling(exc) or not self._down_telling:
                self._down_reason = reason
                self._down_telling = is_telling(exc)
        logger.debug("nats error: %s", self._scrub(repr(exc)))

    def _fail_permission(self, action: str, subject: str) -> None:
        # nats-py lowercases the server's error text, subject included, so
        # the match ignores case and the error names the waiter's own subject.
        denied = subject.lower()
        if action.lower() == "subscription":
            self.denied_subscriptions.add(denied)
            return
        for token, waiter in list(self._waiters.items()):
            if waiter.subject.lower() == denied and self._waiters.pop(token, None) is not None:
                waiter.settle(
                    None,
                    PermissionDeniedError(
                        f"permission denied: this connection may not {action.lower()} to {waiter.subject}",
                        subject=waiter.subject,
                    ),
                )

    async def _on_disconnected(self) -> None:
        if self._up and not self._closed:
            self._lost()
        self._set_up(False)

    def _lost(self) -> None:
        self._set_up(False)
        self._down_reason = "the connection was lost"
        self._down_telling = False
        logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        # nats-py calls this once subscriptions are replayed and a round trip
        # is done: a direct write can no longer overtake a SUB, and a request
        # sent now finds its reply inbox subscribed.
        if self.fast_path:
            self.set_target(self.candidate)
        self.max_payload = self._nc.max_payload or self.max_payload
        self._down_reason = ""
        self._set_up(True)
        logger.warning("reconnected to NATS at %s", self.connected_url)

    async def _on_closed(self) -> None:
        # nats-py stopped for good: we closed it (a Bus closing, a failed
        # try), or it gave up reconnecting (max_reconnect_attempts spent,
        # or allow_reconnect=False).
        if self._started and not self._closed and not self._gave_up:
            self._gave_up = True
            logger.error("the connection to NATS is closed; no more reconnects (%s)", self._down_reason or "closed")
        self._set_up(False)

    def _on_reply_raw(self, subject: bytes, reply: bytes, data: bytes, headers: Optional[bytes]) -> None:
        waiter = self._waiters.pop(subject[len(self._prefix_bytes) :], None)
        if waiter is None:
            return  # its caller gave up; a late reply is dropped
        if headers is None:
            waiter.settle(_new_tuple(Reply, (data, None)), None)  # Reply(...) without its __new__
        elif not data and headers.startswith(b"NATS/1.0 503"):
            waiter.settle(None, NoHandlerError(f"No handler available for {waiter.subject}", subject=waiter.subject))
        else:
            waiter.settle(_new_tuple(Reply, (data, parse_headers(headers))), None)

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._waiters.pop(msg.subject[len(self._prefix) :].encode(), None)
        if waiter is None:
            return
        headers = msg.headers
        if headers and headers.get("Status") == NO_RESPONDERS and not msg.data:
            waiter.settle(None, NoHandlerError(f"No handler available for {waiter.subject}", subject=waiter.subject))
        else:
            waiter.settle(Reply(msg.data, headers), None)

    # -- any thread ----------------------------------------------------------

    @property
    def connected_url(self) -> str:
        """The URL of the server this connection is on (a password in it as ``***``), or ``""``."""
        url = self._nc.connected_url
        return redact_url(url.geturl()) if url is not None else ""

    @property
    def is_connected(self) -> bool:
        """Whether calls are sent at once now (connected, subscriptions replayed)."""
        # nats-py knows of a lost connection a moment before it tells us.
        return self._up and bool(self._nc.is_connected)

    @property
    def started(self) -> bool:
        """Whether the first connection was made (with ``connect_in_background`` it may come late)."""
        return self._started

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands."""
        if self._closed:
            return ConnectionState.CLOSED
        if self.is_connected:
            return ConnectionState.CONNECTED
        if self._gave_up:
            return ConnectionState.DISCONNECTED
        return ConnectionState.RECONNECTING if self._started else ConnectionState.CONNECTING

    def wait_connected(self, timeout: Optional[float]) -> bool:
        """Block until connected, closed or ``timeout`` seconds passed; whether connected.

        Not on the loop thread (the loop is what connects).
        """
        if not self._up and not self._closed and not self._gave_up:
            self._connected.wait(timeout)
        return self._up

    def not_connected_error(self, subject: str, waited: float = 0.0, action: str = "send to") -> NatsBusError:
        """The error for a call that found the connection down: why, and for how long it waited."""
        if self._closed:
            return BusClosedError("the Bus is closed")
        if not self._started:
            failures = self._failures
            tried = self._failure_text(failures).removeprefix("could not connect to NATS at ") if failures else ""
            more = "gave up" if self._gave_up else "trying again in the background"
            why = f"could not connect yet: {tried}; {more}" if tried else "connecting"
        elif self._gave_up:
            why = f"closed, no more reconnects: {self._down_reason or 'the connection was lost'}"
        else:
            why = f"reconnecting: {self._down_reason or 'the connection was lost'}"
        after = f" after waiting {waited:g}s for a reconnect" if waited else ""
        return NotConnectedError(
            f"not connected to NATS ({why}); cannot {action} {subject}{after}", servers=self._shown_servers()
        )

    def request(
        self,
        subject: str,
        payload: bytes,
        headers: Headers = None,
        notify: Optional[Callable[[PendingReply], None]] = None,
    ) -> PendingReply:
        """Queue a request; return its :class:`PendingReply` (any thread).

        Args:
            notify: Called with the PendingReply once it completes, on the
                loop thread (or a closing thread): it must only hand off.

        Raises:
            BusClosedError: the transport is closed.
            NotConnectedError: not connected now (nothing was sent; the
                caller may wait for the connection and try again).
            PayloadTooLargeError: over the server's max payload.
            ConfigError: a malformed subject or header.
        """
        if not self._up:  # the one check while connected: closed or down is not up
            raise self.not_connected_error(subject)
        self._check_payload(subject, payload)
        token = b"%d" % next(self._counter)
        waiter = PendingReply(subject, token, self._waiters, notify)
        data = frame(subject.encode(), self._prefix_bytes + token, payload, headers) if self.fast_path else b""
        self._waiters[token] = waiter
        if self._closed and self._waiters.pop(token, None) is not None:
            # Closed between the check above and the registration: the closer
            # set _closed before failing the waiters, so it may have missed us.
            raise BusClosedError("the Bus is closed")
        item: Tuple[Any, ...] = (
            (data, waiter) if self.fast_path else (subject, payload, self._prefix + token.decode(), headers, waiter)
        )
        try:
            if self.fast_path:
                self._enqueue(item, len(self._waiters) <= DIRECT_MAX_IN_FLIGHT)
            else:
                assert self._outbox is not None
                self._outbox.put(item)
        except BaseException:
            # Not handed over (the loop closed before _closed was set, say):
            # no reply can come, so nothing of this request may stay behind.
            self._waiters.pop(token, None)
            self._discard(item)
            raise
        return waiter

    def publish(self, subject: str, payload: bytes, headers: Headers = None, *, direct: bool = True) -> None:
        """Queue a publish, e.g. a reply (any thread; never blocks).

        ``direct=False`` leaves the writing to the loop (see :meth:`_enqueue`).
        """
        if self._closed or not self._started:
            raise BusClosedError("the Bus is closed")
        if self.fast_path:
            check_subject(subject)
            item: Tuple[Any, ...] = (frame(subject.encode(), b"", payload, headers), None)
        else:
            item = (subject, payload, "", headers, None)
        try:
            if self.fast_path:
                self._enqueue(item, direct)
            else:
                assert self._outbox is not None
                self._outbox.put(item)
        except BaseException:
            self._discard(item)  # not handed over: not to be sent later either
            raise

    def check_send(self, subject: str, payload: bytes) -> None:
        """Before a publish: what is sent while reconnecting is buffered, unless told to fail fast."""
        if self._closed or not self._started or (self._fail_fast and not self._up):
            raise self.not_connected_error(subject)
        self._check_payload(subject, payload)

    def _check_payload(self, subject: str, payload: bytes) -> None:
        check_subject(subject)
        if len(payload) > self.max_payload:
            raise PayloadTooLargeError(
                f"request to {subject} is {len(payload)} bytes, over the server's "
                f"max payload of {self.max_payload} bytes",
                subject=subject,
                size=len(payload),
                limit=self.max_payload,
            )

    # -- subscriptions (loop thread, through the portal) ----------------------

    async def subscribe(self, subject: str, queue: str, handler: Handler) -> Subscription:
        """Subscribe; ``handler`` runs on the loop for each message and must not block.

        The handler gets ``(subject, reply, data, headers)``; ``headers`` is
        raw bytes on the fast path or a dict (see :func:`as_headers`).
        """

        async def callback(msg: Msg) -> None:
            handler(msg.subject, msg.reply, msg.data, msg.headers)

        if not self._started:  # no connection yet to subscribe on (connect_in_background)
            raise self.not_connected_error(subject, action="subscribe to")
        with mapped_core(subject):
            sub = await self._nc.subscribe(subject, queue=queue, cb=callback)
        if self.fast_path:

            def direct(subj: bytes, reply: bytes, data: bytes, headers: Optional[bytes]) -> None:
                handler(subj.decode(), reply.decode(), data, headers)

            self._direct[sub._id] = direct
        return sub

    async def drain_subscriptions(self, subs: List[Subscription]) -> None:
        """Stop interest in ``subs`` after delivering what the server already sent.

        Each UNSUB goes out through the write buffer and a :meth:`_barrier`
        confirms the server processed them: by then every message it routed
        to us has been handed over (direct hand-offs happen in order as they
        are read) or queued on its subscription, which nats-py's own drain
        then empties. Its drain alone is not enough: its PING can overtake
        its UNSUB, and messages routed in between would be dropped.

        No public API sends an UNSUB and keeps the subscription, so this
        uses ``Client._send_unsubscribe`` and ``Subscription._id`` on both
        paths; with a nats-py lacking them (see
        :data:`~natsbus._transport.nats_client.DRAIN`) it is nats-py's
        drain alone.

        Raises:
            BusClosedError: the transport was closed before the server
                confirmed the UNSUBs: the drain is not confirmed.
        """
        if self._ordered_drain:
            for sub in subs:
                await self._nc._send_unsubscribe(sub._id)
            if self._nc.is_connected:
                await self._barrier()
        if self.fast_path:
            for sub in subs:
                self._direct.pop(sub._id, None)
        results = await asyncio.gather(
            *(sub.drain() for sub in subs),  # type: ignore[no-untyped-call]
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Exception):
                logger.debug("draining a subscription failed: %r", result)

    async def unsubscribe(self, subs: List[Subscription]) -> None:
        """Drop ``subs`` at once; undelivered messages are discarded."""
        for sub in subs:
            if self.fast_path:
                self._direct.pop(sub._id, None)
            try:
                await sub.unsubscribe()
            except nerr.Error as exc:
                logger.debug("unsubscribe failed: %r", exc)

    async def gather(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        timeout: float,
        quiet: float,
        max_count: Optional[int] = None,
        headers: Headers = None,
    ) -> List[GatheredReply]:
        """Send one request and collect every reply (e.g. ``$SRV.PING`` to all services).

        Replies arrive on a fresh inbox of their own. Collecting stops
        ``quiet`` seconds after the latest reply, after ``timeout`` seconds
        in all, once ``max_count`` replies are in, or at once when the
        server says nobody subscribes ``subject`` (no replies then).

        Raises:
            BusClosedError: the transport is closed.
            NotConnectedError: it never connected (``connect_in_background``).
        """
        if self._closed or not self._started:
            raise self.not_connected_error(subject)
        loop = asyncio.get_running_loop()
        inbox = self._nc.new_inbox()
        arrived: asyncio.Queue[Tuple[float, Msg]] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            arrived.put_nowait((loop.time(), msg))

        replies: List[GatheredReply] = []
        with mapped_core(subject):
            sub = await self._nc.subscribe(inbox, cb=on_reply)
        try:
            sent = loop.time()
            deadline = sent + timeout
            with mapped_core(subject):
                # SUB and PUB travel in order on one connection, so the
                # server knows the inbox before any reply can come back.
                await self._nc.publish(subject, payload, reply=inbox, headers=headers)
            while max_count is None or len(replies) < max_count:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    at, msg = await asyncio.wait_for(arrived.get(), min(left, quiet) if replies else left)
                except TimeoutError:
                    break
                status = msg.headers.get("Status") if msg.headers else None
                if status == NO_RESPONDERS and not msg.data:
                    break  # nobody subscribes the subject
                replies.append(GatheredReply(msg.data, msg.headers, at - sent))
        finally:
            try:
                await sub.unsubscribe()
            except nerr.Error as exc:  # pragma: no cover - the connection went away
                logger.debug("unsubscribing the gather inbox failed: %r", exc)
        return replies

    def run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, timeout: Optional[float] = None) -> T:
        """Run ``fn(*args)`` on the loop and wait (see :meth:`Portal.call`)."""
        return self.portal.call(fn, *args, timeout=timeout)
