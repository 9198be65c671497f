"""The only module that imports nats; it maps every nats error to ours.

Hot path, client side: a caller thread registers a reply future under a
fresh token, queues ``(subject, payload, reply inbox, headers)`` on the
:class:`~natsbus._portal.Doorbell` and waits on the future. One pump
coroutine publishes whole batches; one wildcard inbox subscription
completes the futures directly. No task, coroutine or asyncio future is
made per call, and timeouts are measured by the waiting thread, so there
is no timer per call on the loop either.

Worker side: subscription callbacks run on the loop and only hand the
message on (they must never block); replies come back through the same
doorbell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import re
import ssl
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Set, Tuple, Type

import nats
import nats.errors as nerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.nuid import NUID

from ._portal import Doorbell, Portal
from .config import NatsConfig
from .errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RequestError,
    TransportError,
)

logger = logging.getLogger("natsbus.transport")

Headers = Optional[Dict[str, str]]
#: ``(subject, reply, data, headers)`` handed to a subscription callback.
Handler = Callable[[str, str, bytes, Headers], None]

_NO_RESPONDERS = "503"
#: Connect failures that say more than the connection errors that follow them.
_TELLING_ERRORS = (nerr.AuthorizationError, ssl.SSLError)
_PERMISSION_RE = re.compile(r"Permissions Violation for (Publish|Subscription) to \"?([^\"']+)\"?", re.I)


class Reply(NamedTuple):
    """A reply message: its body and headers."""

    data: bytes
    headers: Headers


class GatheredReply(NamedTuple):
    """One of several replies to a request sent to many (see :meth:`Transport.gather`).

    Attributes:
        data: The body.
        headers: The headers, or ``None``.
        rtt: Seconds from sending the request to receiving this reply.
    """

    data: bytes
    headers: Headers
    rtt: float


def new_nuid() -> str:
    """A fresh NUID (22 random base-62 characters), e.g. for a service instance id."""
    return NUID().next().decode()


class PendingReply(concurrent.futures.Future):  # type: ignore[type-arg]
    """The future of one request's reply (a ``concurrent.futures.Future``).

    Attributes:
        subject: Where the request was sent.
        token: Its key in the reply map.
    """

    def __init__(self, subject: str, token: str, transport: Transport) -> None:
        super().__init__()
        self.subject = subject
        self.token = token
        self._transport = transport

    def abandon(self) -> None:
        """Stop waiting: forget the token, so a late reply is dropped."""
        self._transport._waiters.pop(self.token, None)


# Every nats error class, mapped to the natsbus class raised in its place.
# tests/test_transport.py fails when nats grows a class missing here.
ERROR_MAP: Dict[Type[BaseException], Type[NatsBusError]] = {
    nerr.TimeoutError: TransportError,
    nerr.NoRespondersError: NoHandlerError,
    nerr.StaleConnectionError: TransportError,
    nerr.OutboundBufferLimitError: NotConnectedError,
    nerr.UnexpectedEOF: TransportError,
    nerr.FlushTimeoutError: TransportError,
    nerr.ConnectionClosedError: BusClosedError,
    nerr.SecureConnRequiredError: ConnectError,
    nerr.SecureConnWantedError: ConnectError,
    nerr.SecureConnFailedError: ConnectError,
    nerr.BadSubscriptionError: TransportError,
    nerr.BadSubjectError: ConfigError,
    nerr.BadHeaderError: ConfigError,
    nerr.SlowConsumerError: TransportError,
    nerr.BadTimeoutError: ConfigError,
    nerr.AuthorizationError: ConnectError,
    nerr.NoServersError: ConnectError,
    nerr.JsonParseError: TransportError,
    nerr.MaxPayloadError: PayloadTooLargeError,
    nerr.DrainTimeoutError: TransportError,
    nerr.ConnectionDrainingError: BusClosedError,
    nerr.ConnectionReconnectingError: NotConnectedError,
    nerr.InvalidUserCredentialsError: ConnectError,
    nerr.InvalidCallbackTypeError: ConfigError,
    nerr.ProtocolError: TransportError,
    nerr.ServerNotInPoolError: ConfigError,
    nerr.NotJSMessageError: TransportError,
    nerr.MsgAlreadyAckdError: TransportError,
    nerr.Error: TransportError,
}


def map_error(exc: BaseException, subject: str = "") -> NatsBusError:
    """The natsbus error for a nats (or OS) error, chained to it by the caller."""
    if isinstance(exc, NatsBusError):
        return exc
    for klass in type(exc).__mro__:
        target = ERROR_MAP.get(klass)
        if target is not None:
            break
    else:
        target = TransportError
    text = str(exc) or type(exc).__name__
    if issubclass(target, RequestError):
        return target(f"{text} (subject {subject})" if subject else text, subject=subject)
    return target(text)


class Transport:
    """One nats-py connection, driven on the portal's loop.

    Construct it anywhere; call :meth:`connect` through the portal.
    """

    def __init__(self, config: NatsConfig, portal: Portal) -> None:
        self.config = config
        self.portal = portal
        self._nc = Client()
        self._waiters: Dict[str, PendingReply] = {}
        self._counter = itertools.count(1)
        self._prefix = ""
        # (subject, payload, reply, headers, future): the future is the
        # request's PendingReply, None for a plain publish, or an asyncio
        # future marking a flush (with an empty subject).
        self._outbox: Optional[Doorbell[Tuple[str, bytes, str, Headers, Any]]] = None
        self._pump_task: Optional[asyncio.Task[None]] = None
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
        self.max_payload = self._nc.max_payload or self.max_payload
        self._prefix = f"{cfg.inbox_prefix}.{NUID().next().decode()}."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self._outbox = Doorbell(asyncio.get_running_loop())
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

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
        waiters = list(self._waiters.values())
        self._waiters.clear()
        for fut in waiters:
            _set_exception(fut, exc)

    async def flush(self) -> None:
        """Wait until everything queued so far has been written to the server."""
        if self._outbox is not None and not self._closed:
            # A marker through the FIFO: once the pump reaches it, everything
            # queued before it has been handed to nats-py.
            marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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
        """
        token = f"barrier-{next(self._counter)}"
        fut = PendingReply(self._prefix + token, token, self)
        self._waiters[token] = fut
        try:
            await self._nc.publish(self._prefix + token, b"")
            await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        finally:
            self._waiters.pop(token, None)

    # -- callbacks (loop thread) -------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        # The cause a failed connect reports: an authorization or TLS failure
        # is not overwritten by the connection resets that follow it.
        if isinstance(exc, _TELLING_ERRORS) or not isinstance(self._last_error, _TELLING_ERRORS):
            self._last_error = exc
        text = str(exc)
        match = _PERMISSION_RE.search(text)
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
        for token, fut in list(self._waiters.items()):
            if fut.subject.lower() == denied:
                self._waiters.pop(token, None)
                _set_exception(
                    fut,
                    PermissionDeniedError(
                        f"permission denied: this connection may not {action.lower()} to {fut.subject}",
                        subject=fut.subject,
                    ),
                )

    async def _on_disconnected(self) -> None:
        if not self._closed:
            logger.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        self.max_payload = self._nc.max_payload or self.max_payload
        logger.warning("reconnected to NATS at %s", self.connected_url)

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiters.pop(msg.subject[len(self._prefix) :], None)
        if fut is None:
            return  # its caller gave up; a late reply is dropped
        headers = msg.headers
        if headers and headers.get("Status") == _NO_RESPONDERS and not msg.data:
            _set_exception(fut, NoHandlerError(f"No handler available for {fut.subject}", subject=fut.subject))
        else:
            _set_result(fut, Reply(msg.data, headers))

    async def _pump(self) -> None:
        assert self._outbox is not None
        publish = self._nc.publish
        while True:
            items = await self._outbox.wait()
            while items:
                subject, payload, reply, headers, fut = items.popleft()
                if not subject:  # a flush marker
                    if not fut.done():
                        fut.set_result(None)
                    continue
                try:
                    await publish(subject, payload, reply=reply, headers=headers)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = map_error(exc, subject)
                    if fut is not None:
                        fut.abandon()
                        _set_exception(fut, error)
                    else:
                        logger.error("could not publish to %s: %s", subject, error)

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

    def request(self, subject: str, payload: bytes, headers: Headers = None) -> PendingReply:
        """Queue a request; return the future of its reply (any thread).

        Raises:
            BusClosedError: the transport is closed.
            PayloadTooLargeError: over the server's max payload.
            NotConnectedError: disconnected, with ``fail_fast_when_disconnected``.
        """
        self._check_send(subject, payload)
        token = str(next(self._counter))
        fut = PendingReply(subject, token, self)
        self._waiters[token] = fut
        assert self._outbox is not None
        self._outbox.put((subject, payload, self._prefix + token, headers, fut))
        return fut

    def publish(self, subject: str, payload: bytes, headers: Headers = None) -> None:
        """Queue a publish, e.g. a reply (any thread; never blocks)."""
        if self._closed or self._outbox is None:
            raise BusClosedError("the Bus is closed")
        self._outbox.put((subject, payload, "", headers, None))

    def _check_send(self, subject: str, payload: bytes) -> None:
        if self._closed or self._outbox is None:
            raise BusClosedError("the Bus is closed")
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
        """Subscribe; ``handler`` runs on the loop for each message and must not block."""

        async def callback(msg: Msg) -> None:
            handler(msg.subject, msg.reply, msg.data, msg.headers)

        try:
            return await self._nc.subscribe(subject, queue=queue, cb=callback)
        except nerr.Error as exc:
            raise map_error(exc, subject) from exc

    async def drain_subscriptions(self, subs: List[Subscription]) -> None:
        """Stop interest in ``subs`` after delivering what the server already sent.

        Each UNSUB goes out through the write buffer and a :meth:`_barrier`
        confirms the server processed them before nats-py's own drain runs
        (its drain's PING can overtake its UNSUB; messages the server routes
        in between would be dropped once the subscription is removed).
        """
        for sub in subs:
            await self._nc._send_unsubscribe(sub._id)
        if self._nc.is_connected:
            await self._barrier()
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
            try:
                await sub.unsubscribe()
            except nerr.Error as exc:
                logger.debug("unsubscribe failed: %r", exc)

    async def request_async(self, subject: str, payload: bytes, timeout: float) -> Reply:
        """A plain request for rare, loop-side work (discovery and the like)."""
        try:
            msg = await self._nc.request(subject, payload, timeout=timeout)
        except nerr.Error as exc:
            raise map_error(exc, subject) from exc
        return Reply(msg.data, msg.headers)

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
        if self._closed or self._outbox is None:
            raise BusClosedError("the Bus is closed")
        loop = asyncio.get_running_loop()
        inbox = self._nc.new_inbox()
        arrived: asyncio.Queue[Tuple[float, Msg]] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            arrived.put_nowait((loop.time(), msg))

        replies: List[GatheredReply] = []
        try:
            sub = await self._nc.subscribe(inbox, cb=on_reply)
        except nerr.Error as exc:
            raise map_error(exc, subject) from exc
        try:
            sent = loop.time()
            deadline = sent + timeout
            try:
                # SUB and PUB travel in order on one connection, so the
                # server knows the inbox before any reply can come back.
                await self._nc.publish(subject, payload, reply=inbox, headers=headers)
            except nerr.Error as exc:
                raise map_error(exc, subject) from exc
            while max_count is None or len(replies) < max_count:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    at, msg = await asyncio.wait_for(arrived.get(), min(left, quiet) if replies else left)
                except asyncio.TimeoutError:
                    break
                status = msg.headers.get("Status") if msg.headers else None
                if status == _NO_RESPONDERS and not msg.data:
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


def _set_result(fut: concurrent.futures.Future[Any], value: Any) -> None:
    try:
        fut.set_result(value)
    except concurrent.futures.InvalidStateError:  # already failed or cancelled
        pass


def _set_exception(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


__all__ = [
    "ERROR_MAP",
    "GatheredReply",
    "Handler",
    "Headers",
    "PendingReply",
    "Reply",
    "Transport",
    "map_error",
    "nats",
    "new_nuid",
]
