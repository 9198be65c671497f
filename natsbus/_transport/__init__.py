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
included (its transport is a :class:`_LockedTcpTransport`), happens under
one lock. A thread holding it sends straight to the non-blocking socket
when nothing else is waiting to be written (asyncio's buffer and nats-py's
are empty); whatever the socket does not take becomes the "tail", which
the loop hands to asyncio before anything else. Otherwise (TLS, websocket,
a backed-up socket, a reconnect) frames go through the loop as above.

The direct hand-offs use a few nats-py internals (``Client._process_msg``,
its write buffer and transport) and the socket of asyncio's socket
transport. :data:`FAST_PATH` says whether this nats-py has them; without
them (or with ``NATSBUS_FAST_PATH=0``) the transport uses only nats-py's
public API, with the same behaviour.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import os
import re
import socket
import ssl
from _thread import allocate_lock
from asyncio import selector_events
from threading import TIMEOUT_MAX
from typing import Any, Awaitable, Callable, Deque, Dict, List, NamedTuple, Optional, Set, Tuple, Type, Union

import nats
import nats.errors as nerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.nuid import NUID

from ..config import NatsConfig
from ..errors import (
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
from .portal import Doorbell, Portal

logger = logging.getLogger("natsbus.transport")

Headers = Optional[Dict[str, str]]
#: Headers as a subscription handler gets them: raw header bytes on the
#: fast path, a dict on the public-API path, or None. See :func:`as_headers`.
RawHeaders = Union[bytes, Dict[str, str], None]
#: ``(subject, reply, data, headers)`` handed to a subscription handler.
Handler = Callable[[str, str, bytes, RawHeaders], None]

_NO_RESPONDERS = "503"
#: Connect failures that say more than the connection errors that follow them.
_TELLING_ERRORS = (nerr.AuthorizationError, ssl.SSLError)
_PERMISSION_RE = re.compile(r"Permissions Violation for (Publish|Subscription) to \"?([^\"']+)\"?", re.I)
#: A caller writes its request to the socket itself only while this few
#: requests are in flight; with more, the loop batches their frames.
_DIRECT_MAX_IN_FLIGHT = 2
#: asyncio's plain socket transport, the one natsbus writes past (see Transport._set_target).
_SOCKET_TRANSPORT: Optional[type] = getattr(selector_events, "_SelectorSocketTransport", None)


def _fast_path_supported() -> bool:
    try:
        params = list(inspect.signature(Client._process_msg).parameters)
        connect = list(inspect.signature(TcpTransport.connect).parameters)
        fresh = TcpTransport()  # type: ignore[no-untyped-call]
    except (AttributeError, TypeError, ValueError):  # pragma: no cover - another nats-py
        return False
    return (
        params == ["self", "sid", "subject", "reply", "data", "headers"]
        and connect == ["self", "uri", "buffer_size", "connect_timeout"]
        and hasattr(fresh, "_io_writer")
    )


#: Whether the direct hand-offs are used (see the module docstring).
FAST_PATH = _fast_path_supported() and os.environ.get("NATSBUS_FAST_PATH", "1") != "0"


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


_PARSED_HEADERS: Dict[bytes, Tuple[Tuple[str, str], ...]] = {}


def parse_headers(raw: bytes) -> Dict[str, str]:
    """Parse a NATS header block (``NATS/1.0[ status[ text]]``, then ``Name: value`` lines).

    An inline status becomes ``Status`` (and ``Description``), as nats-py does.
    Short blocks seen before (the same deadline header on every request)
    come from a small cache; the caller always gets a dict of its own.
    """
    items = _PARSED_HEADERS.get(raw)
    if items is not None:
        return dict(items)
    lines = raw.split(b"\r\n")
    headers: Dict[str, str] = {}
    first = lines[0].decode("utf-8", "replace")
    if first.startswith("NATS/1.0 "):
        status, _, description = first[9:].strip().partition(" ")
        if status.isdigit():
            headers["Status"] = status
        if description:
            headers["Description"] = description
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().decode("ascii", "replace")
        if key and len(key.split()) == 1:
            headers[key] = value.strip().decode("utf-8", "replace")
    if len(raw) <= 256 and len(_PARSED_HEADERS) < 256:
        _PARSED_HEADERS[raw] = tuple(headers.items())
    return headers


def as_headers(headers: RawHeaders) -> Headers:
    """Headers from a subscription handler as a dict (``None`` when there are none)."""
    if headers is None or isinstance(headers, dict):
        return headers or None
    return parse_headers(headers) or None


_HEADER_CACHE: Dict[Tuple[Tuple[str, str], ...], bytes] = {}


def encode_headers(headers: Dict[str, str]) -> bytes:
    """The NATS header block for ``headers``.

    Raises:
        ConfigError: a name or value that would break the protocol.
    """
    key = tuple(headers.items())
    block = _HEADER_CACHE.get(key)
    if block is None:
        parts = [b"NATS/1.0\r\n"]
        for name, value in key:
            if not name or any(ch in name for ch in ": \t\r\n") or "\r" in value or "\n" in value:
                raise ConfigError(f"invalid NATS header {name!r}: {value!r}")
            parts.append(f"{name}: {value}\r\n".encode())
        parts.append(b"\r\n")
        block = b"".join(parts)
        if len(_HEADER_CACHE) < 256:
            _HEADER_CACHE[key] = block
    return block


def header_value(text: str, limit: int = 1024) -> str:
    """``text`` made fit for a NATS header value: one line, at most ``limit`` characters."""
    return " ".join(text.split())[:limit]


def check_subject(subject: str) -> None:
    """Raise :class:`ConfigError` for a subject that is empty or has white space."""
    if not subject or " " in subject or "\t" in subject or "\r" in subject or "\n" in subject:
        raise ConfigError(f"invalid NATS subject {subject!r}")


def _frame(subject: bytes, reply: bytes, payload: bytes, headers: Headers) -> bytes:
    if headers:
        block = encode_headers(headers)
        size = len(block)
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, size, size + len(payload), block, payload)
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)


class WaitTimeout(Exception):
    """:meth:`PendingReply.result` gave up waiting (the request is abandoned)."""


class PendingReply:
    """One request's reply, waited for by a thread.

    Completed once, by whoever takes its token out of the transport's map:
    the loop with the reply, or a closing Bus with an error. Waiting is one
    lock acquire; completing is one release.

    Attributes:
        subject: Where the request was sent.
        token: Its key in the reply map.
    """

    __slots__ = ("_done", "_error", "_lock", "_notify", "_reply", "_waiters", "subject", "token")

    def __init__(
        self,
        subject: str,
        token: bytes,
        waiters: Dict[bytes, PendingReply],
        notify: Optional[Callable[[PendingReply], None]] = None,
    ) -> None:
        self.subject = subject
        self.token = token
        self._waiters = waiters
        self._notify = notify
        self._lock = allocate_lock()
        self._lock.acquire()
        self._done = False
        self._reply: Optional[Reply] = None
        self._error: Optional[BaseException] = None

    def _settle(self, reply: Optional[Reply], error: Optional[BaseException]) -> None:
        self._reply = reply
        self._error = error
        self._done = True
        self._lock.release()
        if self._notify is not None:
            self._notify(self)

    def done(self) -> bool:
        """Whether the reply (or an error) is in."""
        return self._done

    def result(self, timeout: Optional[float] = None) -> Reply:
        """Wait for the reply; ``None`` waits forever.

        Raises:
            WaitTimeout: nothing came in time; the request is abandoned.
            NatsBusError: the request failed (no handler, Bus closed, ...).
        """
        if not self._done:
            if not self._lock.acquire(True, -1 if timeout is None else min(max(0.0, timeout), TIMEOUT_MAX)):
                if self._waiters.pop(self.token, None) is not None:
                    raise WaitTimeout()
                # The loop took the token a moment ago: the reply is being handed over.
                self._lock.acquire()
            self._lock.release()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply

    def abandon(self) -> bool:
        """Stop waiting: forget the token, so a late reply is dropped.

        Returns:
            False when the reply was already being handed over (it will
            complete), True when the request is now abandoned.
        """
        return self._waiters.pop(self.token, None) is not None


class _Client(Client):
    """nats-py's client, handing chosen subscriptions' messages straight to a function.

    ``direct[sid]`` is called on the loop thread as ``fn(subject, reply,
    data, raw_headers)`` from the parser itself: no ``Msg``, no queue, no
    task per message. Everything else goes the usual way.

    Its plain-TCP transport is a :class:`_LockedTcpTransport`, so that every
    write nats-py makes goes through the owning :class:`Transport`'s write
    lock, as the direct writes from other threads do.
    """

    def __init__(self, owner: Optional[Transport] = None) -> None:
        self._owner = owner
        super().__init__()
        self.direct: Dict[int, Callable[[bytes, bytes, bytes, Optional[bytes]], None]] = {}

    # nats-py assigns ``self._transport = TcpTransport()`` when it (re)connects
    # without one; this swaps in the locked kind (a fresh one holds no state).
    @property
    def _transport(self) -> Any:
        return self._natsbus_transport

    @_transport.setter
    def _transport(self, value: Any) -> None:
        if type(value) is TcpTransport and self._owner is not None:
            value = _LockedTcpTransport(self._owner)
        self._natsbus_transport = value

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Optional[bytes]) -> None:
        handler = self.direct.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            handler(subject, reply, data, headers)
        except Exception:  # an exception here would stop nats-py's read loop
            logger.exception("handling a message on %r failed", subject)


class _LockedTcpTransport(TcpTransport):
    """nats-py's TCP transport, writing under the owner's write lock.

    nats-py's own writes (loop thread) and natsbus's direct writes (any
    thread, straight to the socket) are thus never interleaved, and a
    direct write's unsent tail always goes out before anything else.
    """

    def __init__(self, owner: Transport) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._owner = owner

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        # No direct writes until the connection is fully set up (the owner
        # turns them on once connected, or reconnected with subscriptions
        # replayed): until then only the loop writes, in nats-py's order.
        self._owner._set_target(None)
        await super().connect(uri, buffer_size, connect_timeout)
        self._owner._candidate = self._io_writer

    async def connect_tls(self, *args: Any, **kwargs: Any) -> None:
        self._owner._candidate = None  # TLS: only the loop may write, through asyncio
        self._owner._set_target(None)
        await super().connect_tls(*args, **kwargs)

    def write(self, payload: bytes) -> None:
        self._under_lock(self._io_writer.write, payload)  # type: ignore[union-attr]

    def writelines(self, payload: List[bytes]) -> None:
        self._under_lock(self._io_writer.writelines, payload)  # type: ignore[union-attr]

    def _under_lock(self, write: Callable[[Any], None], payload: Any) -> None:
        owner = self._owner
        with owner._wlock:
            owner._flush_tail_locked()
            write(payload)
        if owner._out:  # appended while we held the lock: ours to send
            owner._drain_out()


# Every nats error class, mapped to the natsbus class raised in its place.
# tests/test_public_api.py fails when nats grows a class missing here.
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

    Args:
        config: Connection settings.
        portal: The loop thread.
        fast_path: Use the direct hand-offs (default :data:`FAST_PATH`).
    """

    def __init__(self, config: NatsConfig, portal: Portal, *, fast_path: Optional[bool] = None) -> None:
        self.config = config
        self.portal = portal
        self.fast_path = FAST_PATH if fast_path is None else (fast_path and _fast_path_supported())
        self._nc = _Client(self) if self.fast_path else Client()
        # The direct hand-off table (empty and unused on the public-API path).
        self._direct: Dict[int, Callable[[bytes, bytes, bytes, Optional[bytes]], None]] = (
            self._nc.direct if isinstance(self._nc, _Client) else {}
        )
        self._waiters: Dict[bytes, PendingReply] = {}
        self._counter = itertools.count(1)
        self._prefix = ""
        self._prefix_bytes = b""
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Fast path: (frame, waiter or None) items, or asyncio futures
        # marking a flush. Public-API path: (subject, payload, reply,
        # headers, waiter) items through the pump.
        self._out: Deque[Any] = collections.deque()
        self._out_rung = False
        # Every write to the connection happens under this lock: nats-py's
        # (see _LockedTcpTransport) and the direct ones from any thread.
        self._wlock = allocate_lock()
        # Plain TCP: the asyncio transport and its socket, written directly
        # when nothing else is waiting to be written; None otherwise (TLS,
        # websocket, another event loop, or not connected).
        self._target: Any = None
        self._sock: Optional[socket.socket] = None
        # What a direct write could not send, and where: it goes out before
        # anything else, on that connection only.
        self._tail: Optional[bytes] = None
        self._tail_target: Any = None
        # The plain-TCP writer of the connection being set up, made the
        # target once it is ready (see _LockedTcpTransport.connect).
        self._candidate: Optional[asyncio.StreamWriter] = None
        #: Direct writes the socket took only part of (the loop sent the rest).
        self.partial_writes = 0
        self._outbox: Optional[Doorbell[Tuple[str, bytes, str, Headers, Any]]] = None
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
                waiter._settle(None, exc)

    async def flush(self) -> None:
        """Wait until everything queued so far has reached the server."""
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
        """
        token = f"barrier-{next(self._counter)}".encode()
        waiter = PendingReply(self._prefix, token, self._waiters)
        self._waiters[token] = waiter
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def arrived(_: PendingReply) -> None:
            if not done.done():
                done.set_result(None)

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
        for token, waiter in list(self._waiters.items()):
            if waiter.subject.lower() == denied and self._waiters.pop(token, None) is not None:
                waiter._settle(
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
            waiter._settle(Reply(data, None), None)
        elif not data and headers.startswith(b"NATS/1.0 503"):
            waiter._settle(None, NoHandlerError(f"No handler available for {waiter.subject}", subject=waiter.subject))
        else:
            waiter._settle(Reply(data, parse_headers(headers)), None)

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._waiters.pop(msg.subject[len(self._prefix) :].encode(), None)
        if waiter is None:
            return
        headers = msg.headers
        if headers and headers.get("Status") == _NO_RESPONDERS and not msg.data:
            waiter._settle(None, NoHandlerError(f"No handler available for {waiter.subject}", subject=waiter.subject))
        else:
            waiter._settle(Reply(msg.data, headers), None)

    # -- the outbox ----------------------------------------------------------

    def _enqueue(self, item: Any, direct: bool = True) -> None:
        """Append to the outbox and send it, or make sure the loop will (any thread).

        ``direct=False`` leaves the writing to the loop even when the
        calling thread could write: callers with many requests in flight
        do better letting the loop batch their frames.
        """
        self._out.append(item)
        if direct:
            self._drain_out()
        else:
            self._ring()

    def _drain_out(self) -> None:
        """Send what the outbox holds straight to the socket when that is safe (any thread).

        Whoever holds the write lock looks at the outbox again after
        releasing it; a thread that finds the lock taken leaves its frame
        there and rings the loop, so the frame goes out before any write
        the same thread has the loop make later.
        """
        out = self._out
        lock = self._wlock
        while out:
            locked = sent_all = False
            try:  # acquired inside the try: an interrupt cannot leave the lock held
                locked = lock.acquire(False)
                if locked:
                    sent_all = self._send_direct_locked()
            finally:
                if locked:
                    lock.release()
            if not sent_all:
                # Not ours to send now: the loop will, before anything this
                # thread asks of it next (its later loop-side writes, like a
                # JetStream publish, must not overtake this frame).
                self._ring()
                return

    def _send_direct_locked(self) -> bool:
        """Write queued frames to the socket now; False when the loop must take over."""
        target = self._target
        nc = self._nc
        if (
            target is None
            or self._tail is not None
            or nc._pending
            or not nc.is_connected
            or target.get_write_buffer_size()
            or target.is_closing()
        ):
            return False  # the loop writes, in order, through nats-py or asyncio
        out = self._out
        frames: List[bytes] = []
        while out:
            item = out.popleft()
            if type(item) is not tuple:  # a flush marker: the loop resolves it, after these
                out.appendleft(item)
                break
            frames.append(item[0])
        if frames:
            data = self._counted(frames)
            assert self._sock is not None
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the loop's side of the connection sees it too
                logger.debug("a direct write failed: %r", exc)
                sent = 0
            if sent < len(data):
                self.partial_writes += 1
                self._tail = data[sent:]
                self._tail_target = target
                return False
        return not out

    def _counted(self, frames: List[bytes]) -> bytes:
        """Write lock held: ``frames`` as one buffer, counted in nats-py's stats."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        stats = self._nc.stats
        stats["out_msgs"] += len(frames)
        stats["out_bytes"] += len(data)
        return data

    def _ring(self) -> None:
        """Make sure the loop runs :meth:`_write_out` soon (any thread)."""
        if not self._out_rung:
            self._out_rung = True
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._write_out)
            except RuntimeError:  # the loop is closed: the Bus was closed meanwhile
                self._out_rung = False
                raise BusClosedError("the Bus is closed") from None

    def _set_target(self, writer: Optional[asyncio.StreamWriter]) -> None:
        """Loop thread: the connection's plain-TCP stream writer is ``writer`` (None: no direct writes)."""
        transport: Any = writer.transport if writer is not None else None
        with self._wlock:
            self._tail = None  # a previous connection's: never sent on this one
            self._tail_target = None
            sock = getattr(transport, "_sock", None)
            if (
                _SOCKET_TRANSPORT is not None
                and type(transport) is _SOCKET_TRANSPORT
                and isinstance(sock, socket.socket)
            ):
                self._target = transport
                self._sock = sock
            else:
                self._target = None
                self._sock = None
        if self._out:
            self._drain_out()

    def _flush_tail_locked(self) -> None:
        """Loop thread, write lock held: hand a direct write's unsent tail to asyncio."""
        tail, target = self._tail, self._tail_target
        if tail is not None:
            self._tail = self._tail_target = None
            if not target.is_closing():
                target.write(tail)  # the connection is going; so is the tail

    def _write_out(self) -> None:
        """Loop thread: hand every queued frame to the connection, in order."""
        self._out_rung = False  # before draining: a later append rings again
        out = self._out
        with self._wlock:
            self._flush_tail_locked()
            frames: List[bytes] = []
            while out:
                item = out.popleft()
                if isinstance(item, tuple):
                    frame, waiter = item
                    if self._nc.is_connected or self._buffer_while_reconnecting(frame, waiter):
                        frames.append(frame)
                else:  # a flush marker: what came before it goes out first
                    self._write_locked(frames)
                    frames = []
                    if not item.done():
                        item.set_result(None)
            self._write_locked(frames)
        if out:
            self._drain_out()

    def _buffer_while_reconnecting(self, frame: bytes, waiter: Optional[PendingReply]) -> bool:
        nc = self._nc
        if not nc.is_closed and nc._pending_data_size + len(frame) <= nc._max_pending_size:
            return True  # nats-py sends its buffer once reconnected
        error = NotConnectedError(
            "not connected to NATS and the reconnect buffer is full"
            if not nc.is_closed
            else "the connection to NATS is closed"
        )
        if waiter is not None:
            if self._waiters.pop(waiter.token, None) is not None:
                waiter._settle(None, error)
        else:
            logger.error("dropped a message: %s", error)
        return False

    def _write_locked(self, frames: List[bytes]) -> None:
        """Loop thread, write lock held: give ``frames`` to asyncio or nats-py's buffer."""
        if not frames:
            return
        nc = self._nc
        data = self._counted(frames)
        transport = nc._transport
        if nc.is_connected and not nc._pending and type(transport) is _LockedTcpTransport:
            # Nothing of nats-py's own is waiting to be written, so writing
            # now keeps the order; asyncio sends at once or buffers.
            transport._io_writer.write(data)  # type: ignore[union-attr]
            return
        nc._pending.append(data)
        nc._pending_data_size += len(data)
        if nc.is_connected and nc._flush_queue is not None and nc._flush_queue.empty():
            nc._flush_queue.put_nowait(asyncio.get_running_loop().create_future())  # kick nats-py's flusher

    async def _pump(self) -> None:
        """The public-API path: publish each queued item with ``Client.publish``."""
        assert self._outbox is not None
        publish = self._nc.publish
        while True:
            items = await self._outbox.wait()
            while items:
                subject, payload, reply, headers, waiter = items.popleft()
                if not subject:  # a flush marker
                    if not waiter.done():
                        waiter.set_result(None)
                    continue
                try:
                    await publish(subject, payload, reply=reply, headers=headers)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    error = map_error(exc, subject)
                    if waiter is not None:
                        if self._waiters.pop(waiter.token, None) is not None:
                            waiter._settle(None, error)
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
        frame = _frame(subject.encode(), self._prefix_bytes + token, payload, headers) if self.fast_path else b""
        self._waiters[token] = waiter
        if self._closed and self._waiters.pop(token, None) is not None:
            # Closed between the check above and the registration: the closer
            # set _closed before failing the waiters, so it may have missed us.
            raise BusClosedError("the Bus is closed")
        if self.fast_path:
            self._enqueue((frame, waiter), len(self._waiters) <= _DIRECT_MAX_IN_FLIGHT)
        else:
            assert self._outbox is not None
            self._outbox.put((subject, payload, self._prefix + token.decode(), headers, waiter))
        return waiter

    def publish(self, subject: str, payload: bytes, headers: Headers = None, *, direct: bool = True) -> None:
        """Queue a publish, e.g. a reply (any thread; never blocks).

        ``direct=False`` leaves the writing to the loop (see :meth:`_enqueue`).
        """
        if self._closed or not self._started:
            raise BusClosedError("the Bus is closed")
        if self.fast_path:
            check_subject(subject)
            self._enqueue((_frame(subject.encode(), b"", payload, headers), None), direct)
        else:
            assert self._outbox is not None
            self._outbox.put((subject, payload, "", headers, None))

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

        try:
            sub = await self._nc.subscribe(subject, queue=queue, cb=callback)
        except nerr.Error as exc:
            raise map_error(exc, subject) from exc
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
        """
        for sub in subs:
            await self._nc._send_unsubscribe(sub._id)
        if self._nc.is_connected:
            await self._barrier()
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
            self._direct.pop(sub._id, None)
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
        if self._closed or not self._started:
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


__all__ = [
    "ERROR_MAP",
    "FAST_PATH",
    "GatheredReply",
    "Handler",
    "Headers",
    "PendingReply",
    "RawHeaders",
    "Reply",
    "Transport",
    "WaitTimeout",
    "as_headers",
    "map_error",
    "nats",
    "new_nuid",
    "parse_headers",
]
