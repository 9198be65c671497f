"""systemd's notification protocol (``sd_notify``), with the standard library only.

Under a ``Type=notify`` unit systemd sets ``NOTIFY_SOCKET`` (a path, or
``@name`` in the abstract namespace) and waits for ``READY=1``; with
``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` and restarts the service
when no ``WATCHDOG=1`` comes within that time. :class:`Notifier` tells it
when a :class:`~natsbus.WorkerPool` serves (``READY=1``), when it starts
draining (``STOPPING=1``), and that it is alive (``WATCHDOG=1`` every half
``WATCHDOG_USEC``) as long as the Bus's event loop answers: a stuck loop
stops the petting, so systemd restarts the worker. Without
``NOTIFY_SOCKET`` it does nothing.

Under ``--processes`` only the supervisor talks to systemd
(:class:`SupervisorNotifier`): ``READY=1`` once every child serves,
``STOPPING=1`` when the drain starts, ``WATCHDOG=1`` while its own loop
runs; the children's loops are watched by the supervisor itself, which
restarts a child whose loop stops answering (:mod:`natsbus.cli.supervisor`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:
    from ..bus import Bus
    from ..worker import WorkerPool

__all__ = ["Notifier", "SupervisorNotifier", "check_loop", "notify", "watchdog_interval"]

logger = logging.getLogger("natsbus.cli")


def notify(state: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Send ``state`` (``"READY=1"``, newline-separated assignments) to ``$NOTIFY_SOCKET``.

    Returns:
        Whether it was sent: False without ``NOTIFY_SOCKET``, with an
        address that is not a Unix socket, or when sending failed (logged).
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        if address:
            logger.debug("NOTIFY_SOCKET %r is not a Unix socket: not notifying systemd", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logger.warning("cannot notify systemd (%s): %s", state.split("\n", 1)[0], exc)
        return False
    return True


def watchdog_interval(environ: Optional[Mapping[str, str]] = None) -> Optional[float]:
    """Seconds between two ``WATCHDOG=1``: half ``WATCHDOG_USEC``; None when no watchdog is asked of this process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2e6


async def _tick() -> None:
    """Nothing, on the Bus's loop: it answers."""


def check_loop(bus: Bus, timeout: float) -> None:
    """Return once the Bus's event loop has run a no-op: a round trip through its loop thread.

    The watchdog's test (and ``/livez``'s, :func:`natsbus.health.pool_liveness`).

    Raises:
        TimeoutError: the loop did not answer within ``timeout`` seconds.
        BusClosedError: the Bus is closed, or its loop stopped.
    """
    bus.run(_tick, timeout)


class Notifier:
    """What a worker daemon tells systemd about one pool's :meth:`~natsbus.WorkerPool.run`."""

    def __init__(self, pool: WorkerPool, environ: Optional[Mapping[str, str]] = None) -> None:
        self.pool = pool
        self.environ = dict(os.environ if environ is None else environ)
        self.enabled = bool(self.environ.get("NOTIFY_SOCKET"))
        self.interval = watchdog_interval(self.environ) if self.enabled else None
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def serving(self) -> None:
        """``READY=1``; start the watchdog thread when ``WATCHDOG_USEC`` is set."""
        if not self.enabled:
            return
        notify(f"READY=1\nSTATUS=serving {', '.join(self.pool.subjects)}", self.environ)
        bus = self.pool.bus
        if self.interval is not None and bus is not None and self._thread is None:
            self._thread = threading.Thread(
                target=self._pet, args=(bus, self.interval), name="natsbus-sd-watchdog", daemon=True
            )
            self._thread.start()

    def draining(self) -> None:
        """``STOPPING=1``: the drain starts."""
        if self.enabled:
            notify("STOPPING=1\nSTATUS=draining", self.environ)

    def close(self) -> None:
        """Stop the watchdog thread (the pool has stopped)."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _pet(self, bus: Bus, interval: float) -> None:
        while not self._done.is_set():
            try:
                check_loop(bus, interval / 2)
            except Exception as exc:
                if self._done.is_set():
                    return
                logger.warning(
                    "the event loop did not answer within %.1fs (%r): no WATCHDOG=1 this time", interval / 2, exc
                )
            else:
                notify("WATCHDOG=1", self.environ)
            self._done.wait(interval)


class SupervisorNotifier:
    """What the ``--processes`` supervisor tells systemd: READY=1, STOPPING=1, WATCHDOG=1."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        self.environ = dict(os.environ if environ is None else environ)
        self.enabled = bool(self.environ.get("NOTIFY_SOCKET"))
        self.interval = watchdog_interval(self.environ) if self.enabled else None
        self._last_pet = 0.0

    def ready(self, processes: int) -> None:
        """``READY=1``: every child serves."""
        if self.enabled:
            notify(f"READY=1\nSTATUS={processes} worker processes serving", self.environ)

    def draining(self) -> None:
        """``STOPPING=1``: the children's drain starts."""
        if self.enabled:
            notify("STOPPING=1\nSTATUS=draining", self.environ)

    def tick(self) -> None:
        """``WATCHDOG=1`` when half ``WATCHDOG_USEC`` has passed since the last one (the supervisor's loop runs)."""
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last_pet >= self.interval:
            self._last_pet = now
            notify("WATCHDOG=1", self.environ)
