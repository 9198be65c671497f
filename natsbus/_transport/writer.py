"""Getting frames onto the connection: the outbox, direct writes and the write lock.

See :mod:`natsbus._transport.core` for the design. :class:`FrameWriter` is
the half of :class:`~natsbus._transport.core.Transport` that writes; the
state it uses is set up by the transport's constructor.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from _thread import allocate_lock
from typing import Any, Deque, Dict, List, Optional, Tuple

from nats.aio.client import Client

from ..errors import BusClosedError, NotConnectedError
from .errors import map_error
from .nats_client import SOCKET_TRANSPORT, LockedTcpTransport
from .pending import PendingReply
from .portal import Doorbell
from .wire import Headers

logger = logging.getLogger("natsbus.transport")


class FrameWriter:
    """The writing half of the transport (a base class of ``Transport``)."""

    def __init__(self, nc: Client, waiters: Dict[bytes, PendingReply]) -> None:
        self._nc = nc
        self._waiters = waiters
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False
        # Fast path: (frame, waiter or None) items, or asyncio futures
        # marking a flush. Public-API path: (subject, payload, reply,
        # headers, waiter) items through the pump.
        self.frames: Deque[Any] = collections.deque()
        self._out_rung = False
        # Every write to the connection happens under this lock: nats-py's
        # (see LockedTcpTransport) and the direct ones from any thread.
        self.write_lock = allocate_lock()
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
        # target once it is ready (see LockedTcpTransport.connect).
        self.candidate: Optional[asyncio.StreamWriter] = None
        #: Direct writes the socket took only part of (the loop sent the rest).
        self.partial_writes = 0
        # The public-API path: items published by the pump, in order.
        self._outbox: Optional[Doorbell[Tuple[str, bytes, str, Headers, Any]]] = None

    def _enqueue(self, item: Any, direct: bool = True) -> None:
        """Append to the outbox and send it, or make sure the loop will (any thread).

        ``direct=False`` leaves the writing to the loop even when the
        calling thread could write: callers with many requests in flight
        do better letting the loop batch their frames.
        """
        self.frames.append(item)
        if direct:
            self.drain_frames()
        else:
            self._ring()

    def _discard(self, item: Any) -> None:
        """Take back an item whose hand-over failed, from whichever outbox holds it (any thread).

        Items are matched by value: an equal item queued earlier (the same
        frame, published twice) may go instead, which sends the same bytes.
        """
        try:
            self.frames.remove(item)
        except ValueError:  # sent already, or never queued
            pass
        if self._outbox is not None:
            self._outbox.discard(item)

    def drain_frames(self) -> None:
        """Send what the outbox holds straight to the socket when that is safe (any thread).

        Whoever holds the write lock looks at the outbox again after
        releasing it; a thread that finds the lock taken leaves its frame
        there and rings the loop, so the frame goes out before any write
        the same thread has the loop make later.
        """
        out = self.frames
        lock = self.write_lock
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
        out = self.frames
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

    def set_target(self, writer: Optional[asyncio.StreamWriter]) -> None:
        """Loop thread: the connection's plain-TCP stream writer is ``writer`` (None: no direct writes)."""
        transport: Any = writer.transport if writer is not None else None
        with self.write_lock:
            self._tail = None  # a previous connection's: never sent on this one
            self._tail_target = None
            sock = getattr(transport, "_sock", None)
            if SOCKET_TRANSPORT is not None and type(transport) is SOCKET_TRANSPORT and isinstance(sock, socket.socket):
                self._target = transport
                self._sock = sock
            else:
                self._target = None
                self._sock = None
        if self.frames:
            self.drain_frames()

    def flush_tail_locked(self) -> None:
        """Loop thread, write lock held: hand a direct write's unsent tail to asyncio."""
        tail, target = self._tail, self._tail_target
        if tail is not None:
            self._tail = self._tail_target = None
            if not target.is_closing():
                target.write(tail)  # the connection is going; so is the tail

    def _write_out(self) -> None:
        """Loop thread: hand every queued frame to the connection, in order."""
        self._out_rung = False  # before draining: a later append rings again
        out = self.frames
        with self.write_lock:
            self.flush_tail_locked()
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
            self.drain_frames()

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
                waiter.settle(None, error)
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
        if nc.is_connected and not nc._pending and type(transport) is LockedTcpTransport:
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
                            waiter.settle(None, error)
                    else:
                        logger.error("could not publish to %s: %s", subject, error)
