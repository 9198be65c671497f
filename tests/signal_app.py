"""A pool that gets SIGTERM while it starts: after the signal handlers are in place, before it subscribes.

``WorkerPool.start()`` opens the idempotency store before subscribing; this
store's ``open()`` signals its own process. A daemon that installs its
handlers first drains and exits 0; one that starts the pool first is killed.
"""

from __future__ import annotations

import os
import signal

import attrs

from natsbus import Bus, Command, MemoryIdempotencyStore, WorkerPool
from natsbus._transport.connection import Connection


@attrs.frozen
class SignalAppPing(Command[str]):
    pass


class SignalsWhileOpening(MemoryIdempotencyStore):
    def open(self, bus: Connection) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        super().open(bus)


def ping(cmd: SignalAppPing) -> str:
    return "pong"


def make_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="signal-app", idempotency=SignalsWhileOpening())
    pool.register(ping)
    return pool
