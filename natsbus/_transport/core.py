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
import itertools
import logging
import threading
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

import nats.errors as nerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from ..config import NatsConfig
from ..errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from .errors import PERMISSION_RE, TELLING_ERRORS, mapped_core
from .nats_client import DRAIN, FAST, FAST_PATH, WITHOUT, NatsClient, missing_by_use, missing_internals
from .pending import GatheredReply, PendingReply, Reply
from .portal import Doorbell, Portal
from .wire import NO_RESPONDERS, Handler, Headers, check_subject, frame, parse_headers
from .writer import FrameWriter

logger = logging.getLogger("natsbus.transport")

#: A caller writes its request to the socket itself only while this few
#: requests are in flight; with more, the loop batches their frames.
DIRECT_MAX_IN_FLIGHT = 2


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
        self._last_error: Optional[BaseException] = None
        self.max_payload = 1024 * 1024
        self._fail_fast = config.fail_fast_when_disconnected
        #: Subjects (lowercased, as nats-py reports them) the server refused to let us subscribe.
        self.denied_subscriptions: Set[str] = set()

    # -- lifecycle (loop thread) -------------------------------------------

    async def connect(self) -> None:
        """Connect within ``config.connect_timeout``, or raise ConnectError."""
        cfg = self.config
        options: Dict[str, Any] = dict(
            servers=list(cfg.servers),
            name=cfg.name,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            allow_reconnect=cfg.allow_reconnect,
            max_reconnect_attempts=cfg.max_reconnect_attempts,
            reconnect_time_wait=cfg.reconnect_time_wait,
            connect_timeout=max(1, min(cfg.connect_timeout, 5.0)),
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
        urls = ", ".join(cfg.servers)
        try:
            await asyncio.wait_for(self._nc.connect(**options), cfg.connect_timeout)
        except BaseException as exc:
            cause = self._last_error if isinstance(exc, asyncio.TimeoutError) else exc
            self._closed = True  # quiet: no "disconnected" warning while aborting
            await self._abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
            reason = f": {cause}" if cause is not None and str(cause) else ""
            if cause is not None and not str(cause):
                reason = f": {type(cause).__name__}"
            raise ConnectError(
                f"could not connect to NATS at {urls} within {cfg.connect_timeout:g}s{reason}",
                servers=cfg.servers,
            ) from cause
        self._loop = asyncio.get_running_loop()
        for use, names in missing_by_use().items():
            logger.warning("this nats-py lacks %s, which %s uses: %s", ", ".join(names), use, WITHOUT[use])
        self.max_payload = self._nc.max_payload or self.max_payload
        self._prefix = f"{cfg.inbox_prefix}.{NUID().next().decode()}."
        self._prefix_bytes = self._prefix.encode()
        sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        if self.fast_path:
            self._direct[sub._id] = self._on_reply_raw
            self._set_target(self._candidate)  # direct writes from now on
        else:
            self._outbox = Doorbell(self._loop)
            self._pump_task = self._loop.create_task(self._pump())
        self._started = True

    async def _abort(self) -> None:
        try:
            await self._nc.close()
        except Exception:  # pragma: no cover - best effort after a failed connect
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
        self._fail_waiters(BusClosedError("the Bus was closed while waiting for a reply"))
        if self._pump_task is not None:
            self._pump_task.cancel()
        await self._abort()

    def mark_closed(self) -> None:
        """From any thread: refuse new requests, fail the waiting ones."""
        self._closed = True
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

        waiter._notify = arrived
        try:
            await self._nc.publish(self._prefix + token.decode(), b"")
            await asyncio.wait_for(done, timeout)
        finally:
            self._waiters.pop(token, None)

    # -- callbacks (loop thread) -------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        # The cause a failed connect reports: an authorization or TLS failure
        # is not overwritten by the connection resets that follow it.
        if isinstance(exc, TELLING_ERRORS) or not isinstance(self._last_error, TELLING_ERRORS):
            self._last_error = exc
        text = str(exc)
        match = PERMISSION_RE.search(text)
        if match:
            self._fail_permission(match.group(1), match.group(2).strip())
            logger.warning("NATS permissions violation: %s", text)
        else:
            logger.debug("nats error: %r", exc)

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
        if not self._closed:
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        # nats-py calls this once subscriptions are replayed and a round trip
        # is done: a direct write can no longer overtake a SUB.
        if self.fast_path:
            self._set_target(self._candidate)
        self.max_payload = self._nc.max_payload or self.max_payload
        logger.warning("reconnected to NATS at %s", self.connected_url)

    def _on_reply_raw(self, subject: bytes, reply: bytes, data: bytes, headers: Optional[bytes]) -> None:
        waiter = self._waiters.pop(subject[len(self._prefix_bytes) :], None)
        if waiter is None:
            return  # its caller gave up; a late reply is dropped
        if headers is None:
            waiter.settle(Reply(data, None), None)
        elif not data and headers.startswith(b"NATS/1.0 503"):
            waiter.settle(None, NoHandlerError(f"No handler available for {waiter.subject}", subject=waiter.subject))
        else:
            waiter.settle(Reply(data, parse_headers(headers)), None)

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
        """The URL of the server this connection is on, or ``""``."""
        url = self._nc.connected_url
        return url.geturl() if url is not None else ""

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now."""
        return bool(self._nc.is_connected)

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
            PayloadTooLargeError: over the server's max payload.
            NotConnectedError: disconnected, with ``fail_fast_when_disconnected``.
            ConfigError: a malformed subject or header.
        """
        self._check_send(subject, payload)
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

    def _check_send(self, subject: str, payload: bytes) -> None:
        if self._closed or not self._started:
            raise BusClosedError("the Bus is closed")
        check_subject(subject)
        if len(payload) > self.max_payload:
            raise PayloadTooLargeError(
                f"request to {subject} is {len(payload)} bytes, over the server's "
                f"max payload of {self.max_payload} bytes",
                subject=subject,
                size=len(payload),
                limit=self.max_payload,
            )
        if self._fail_fast and not self._nc.is_connected:
            raise NotConnectedError(f"not connected to NATS; cannot send to {subject}")

    # -- subscriptions (loop thread, through the portal) ----------------------

    async def subscribe(self, subject: str, queue: str, handler: Handler) -> Subscription:
        """Subscribe; ``handler`` runs on the loop for each message and must not block.

        The handler gets ``(subject, reply, data, headers)``; ``headers`` is
        raw bytes on the fast path or a dict (see :func:`as_headers`).
        """

        async def callback(msg: Msg) -> None:
            handler(msg.subject, msg.reply, msg.data, msg.headers)

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
        """
        if self._closed or not self._started:
            raise BusClosedError("the Bus is closed")
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

    def run(self, fn: Callable[[], Awaitable[Any]], timeout: Optional[float] = None) -> Any:
        """Run ``fn()`` on the loop and wait (see :meth:`Portal.call`)."""
        return self.portal.call(fn, timeout)
