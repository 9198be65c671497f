"""Every nats-py internal natsbus touches, and the one probe that checks them.

natsbus subclasses nats-py's ``Client`` (to hand chosen subscriptions'
messages straight from the parser to a function) and its TCP transport (to
write under natsbus's write lock), writes into nats-py's write buffer, and
writes past asyncio's socket transport. Each private attribute of a
nats-py or asyncio object that natsbus uses is listed in
:data:`INTERNALS`, with what needs it; :func:`missing_internals` checks
them all against this nats-py and this Python.

* The fast path (:data:`FAST`) needs most of them. Without any one of them
  (or with ``NATSBUS_FAST_PATH=0``) the transport takes the public-API
  path; asking for the fast path explicitly
  (``Transport(..., fast_path=True)``) then fails, naming what is missing.
* Two uses have no public equivalent, so both paths make them, when their
  internals are there, and do without them (with a warning at connect,
  naming what is missing) when not:

  - the ordered drain (:data:`DRAIN`): an UNSUB sent while nats-py keeps
    the subscription until the server confirmed it. nats-py's own
    ``Subscription.drain()`` forgets the subscription once its PING is
    answered, and that PING overtakes its UNSUB: a message the server
    routes in between is dropped (a rolling restart then loses calls);
  - releasing a forked child's copy of the socket (:data:`FORK`).

  Everything else on the public-API path is nats-py's public API.

``tests/test_nats_internals.py`` takes each internal away in turn and
expects the probe to name it, and fails when the transport uses a private
name that is neither natsbus's own nor listed here.
"""

from __future__ import annotations

import asyncio
import dis
import inspect
import logging
import os
from asyncio import selector_events
from asyncio.trsock import TransportSocket
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Protocol, Tuple

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.aio.transport import TcpTransport
from nats.nuid import NUID

logger = logging.getLogger("natsbus.transport")


class WriteOwner(Protocol):
    """What the locked TCP transport needs of the transport that owns it (its FrameWriter)."""

    write_lock: Any
    frames: Any
    candidate: Optional[asyncio.StreamWriter]
    tls_handshake_done: bool

    def flush_tail_locked(self) -> None:
        """Write lock held: hand a direct write's unsent tail to asyncio first."""

    def drain_frames(self) -> None:
        """Send what the outbox holds, or make sure the loop will."""

    def set_target(self, writer: Optional[asyncio.StreamWriter]) -> None:
        """The connection's plain-TCP stream writer (None: no direct writes)."""


#: asyncio's plain socket transport, the one natsbus writes past (see Transport.set_target).
SOCKET_TRANSPORT: Optional[type] = getattr(selector_events, "_SelectorSocketTransport", None)

#: What needs an internal: the fast path (without it: the public-API path) ...
FAST = "the fast path"
#: ... the ordered drain of subscriptions, on both paths (without it: nats-py's own drain) ...
DRAIN = "the ordered drain"
#: ... or releasing a forked child's copy of the socket, on both paths (without it: skipped).
FORK = "releasing a forked child's copy of the socket"

#: What natsbus does without the internals each use needs.
WITHOUT = {
    FAST: "the transport uses the public-API path",
    DRAIN: (
        "subscriptions are drained with nats-py's own Subscription.drain(), which can drop "
        "a message the server routes while it runs"
    ),
    FORK: "a forked child keeps its copy of the parent's socket open until it exits",
}


class Internal(NamedTuple):
    """One private attribute of a nats-py or asyncio object that natsbus uses.

    Attributes:
        name: How errors and logs name it, e.g. ``Client._pending``.
        needed_for: The uses (:data:`FAST`, :data:`DRAIN`, :data:`FORK`) that need it.
        present: Whether this nats-py / Python has it as natsbus expects.
    """

    name: str
    needed_for: Tuple[str, ...]
    present: Callable[[], bool]


def _parameters(function: Any) -> List[str]:
    return list(inspect.signature(function).parameters)


def _accepts(function: Any, *args: Any) -> bool:
    try:
        inspect.signature(function).bind(*args)
    except TypeError:
        return False
    return True


def _fresh_has(cls: Callable[[], Any], attr: str, kind: type = object) -> bool:
    """Whether a freshly built ``cls()`` has ``attr``, of type ``kind`` (for classes cheap to build)."""
    return isinstance(getattr(cls(), attr), kind)


def _init_sets(cls: Optional[type], attr: str) -> bool:
    """Whether an ``__init__`` in ``cls``'s MRO assigns ``self.<attr>`` (for classes costly to build)."""
    if cls is None:
        return False
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is not None and any(
            ins.opname == "STORE_ATTR" and ins.argval == attr for ins in dis.get_instructions(init)
        ):
            return True
    return False


# The names below are read when the probe runs, so a test can take one away.
INTERNALS: Tuple[Internal, ...] = (
    # NatsClient overrides it: nats-py's parser calls it with these arguments.
    Internal(
        "Client._process_msg",
        (FAST,),
        lambda: _parameters(Client._process_msg) == ["self", "sid", "subject", "reply", "data", "headers"],
    ),
    # drain_subscriptions sends each UNSUB through nats-py's buffer, then a barrier.
    Internal("Client._send_unsubscribe", (FAST, DRAIN), lambda: _accepts(Client._send_unsubscribe, None, 1)),
    # nats-py assigns its transport here; NatsClient swaps in LockedTcpTransport.
    Internal("Client._transport", (FAST, FORK), lambda: _fresh_has(Client, "_transport")),
    # FrameWriter writes into nats-py's buffer, in order with nats-py's own commands.
    Internal("Client._pending", (FAST,), lambda: _fresh_has(Client, "_pending", list)),
    Internal("Client._pending_data_size", (FAST,), lambda: _fresh_has(Client, "_pending_data_size", int)),
    Internal("Client._max_pending_size", (FAST,), lambda: _fresh_has(Client, "_max_pending_size", int)),
    Internal("Client._flush_queue", (FAST,), lambda: _fresh_has(Client, "_flush_queue")),
    # The sid: the key of the direct hand-off table, and of the UNSUB.
    Internal("Subscription._id", (FAST, DRAIN), lambda: _init_sets(Subscription, "_id")),
    # LockedTcpTransport overrides connect and writes with its stream writer.
    Internal(
        "TcpTransport.connect",
        (FAST,),
        lambda: _parameters(TcpTransport.connect) == ["self", "uri", "buffer_size", "connect_timeout"],
    ),
    Internal("TcpTransport._io_writer", (FAST,), lambda: _fresh_has(TcpTransport, "_io_writer")),
    # The plain-TCP stream writer, under TLS too: the way to the socket after a fork.
    Internal("TcpTransport._bare_io_writer", (FORK,), lambda: _fresh_has(TcpTransport, "_bare_io_writer")),
    # Direct writes go to the socket of asyncio's plain socket transport.
    Internal("asyncio _SelectorSocketTransport._sock", (FAST,), lambda: _init_sets(SOCKET_TRANSPORT, "_sock")),
    # get_extra_info("socket") gives a TransportSocket; after a fork its socket is closed.
    Internal("asyncio TransportSocket._sock", (FORK,), lambda: _init_sets(TransportSocket, "_sock")),
)


def missing_internals(needed_for: Optional[str] = None) -> List[str]:
    """The names of the internals (those ``needed_for`` one use, or all) this nats-py or Python lacks."""
    missing = []
    for internal in INTERNALS:
        if needed_for is not None and needed_for not in internal.needed_for:
            continue
        try:
            present = internal.present()
        except Exception:  # another nats-py: whatever went wrong, it is not what we expect
            present = False
        if not present:
            missing.append(internal.name)
    return missing


def missing_by_use() -> Dict[str, List[str]]:
    """For each use (:data:`FAST`, :data:`DRAIN`, :data:`FORK`) whose internals are not all there: the missing ones."""
    report = {use: missing_internals(use) for use in WITHOUT}
    return {use: names for use, names in report.items() if names}


def fast_path_supported() -> bool:
    """Whether this nats-py and Python have every internal the fast path uses."""
    return not missing_internals(FAST)


#: Whether the direct hand-offs are used (see the module docstring).
FAST_PATH = fast_path_supported() and os.environ.get("NATSBUS_FAST_PATH", "1") != "0"


def new_nuid() -> str:
    """A fresh NUID (22 random base-62 characters), e.g. for a service instance id."""
    return NUID().next().decode()


class NatsClient(Client):
    """nats-py's client, handing chosen subscriptions' messages straight to a function.

    ``direct[sid]`` is called on the loop thread as ``fn(subject, reply,
    data, raw_headers)`` from the parser itself: no ``Msg``, no queue, no
    task per message. Everything else goes the usual way.

    Its plain-TCP transport is a :class:`LockedTcpTransport`, so that every
    write nats-py makes goes through the owning :class:`Transport`'s write
    lock, as the direct writes from other threads do.
    """

    def __init__(self, owner: Optional[WriteOwner] = None) -> None:
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
            value = LockedTcpTransport(self._owner)
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


class LockedTcpTransport(TcpTransport):
    """nats-py's TCP transport, writing under the owner's write lock.

    nats-py's own writes (loop thread) and natsbus's direct writes (any
    thread, straight to the socket) are thus never interleaved, and a
    direct write's unsent tail always goes out before anything else.
    """

    def __init__(self, owner: WriteOwner) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._owner = owner

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        # No direct writes until the connection is fully set up (the owner
        # turns them on once connected, or reconnected with subscriptions
        # replayed): until then only the loop writes, in nats-py's order.
        self._owner.set_target(None)
        await super().connect(uri, buffer_size, connect_timeout)
        self._owner.candidate = self._io_writer

    async def connect_tls(self, *args: Any, **kwargs: Any) -> None:
        self._owner.candidate = None  # TLS: only the loop may write, through asyncio
        self._owner.set_target(None)
        await super().connect_tls(*args, **kwargs)
        self._owner.tls_handshake_done = True  # a reset now: likely a refused client certificate

    def write(self, payload: bytes) -> None:
        self._under_lock(self._io_writer.write, payload)  # type: ignore[union-attr]

    def writelines(self, payload: List[bytes]) -> None:
        self._under_lock(self._io_writer.writelines, payload)  # type: ignore[union-attr]

    def _under_lock(self, write: Callable[[Any], None], payload: Any) -> None:
        owner = self._owner
        with owner.write_lock:
            owner.flush_tail_locked()
            write(payload)
        if owner.frames:  # appended while we held the lock: ours to send
            owner.drain_frames()
