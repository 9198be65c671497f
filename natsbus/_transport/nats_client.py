"""Every nats-py internal natsbus touches, and the probe that checks them.

natsbus subclasses nats-py's ``Client`` (to hand chosen subscriptions'
messages straight from the parser to a function) and its TCP transport (to
write under natsbus's write lock), and writes past asyncio's socket
transport. :func:`fast_path_supported` checks, once, that this nats-py and
asyncio still have what those rely on; without it (or with
``NATSBUS_FAST_PATH=0``) the transport uses nats-py's public API only.
"""

from __future__ import annotations

import inspect
import logging
import os
from asyncio import selector_events
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.nuid import NUID

if TYPE_CHECKING:
    from .core import Transport

logger = logging.getLogger("natsbus.transport")

#: asyncio's plain socket transport, the one natsbus writes past (see Transport._set_target).
SOCKET_TRANSPORT: Optional[type] = getattr(selector_events, "_SelectorSocketTransport", None)


def fast_path_supported() -> bool:
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
