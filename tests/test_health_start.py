"""pool_readiness is not ready while start() has not subscribed yet."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest

from natsbus import Bus, Command, MemoryIdempotencyStore, WorkerPool
from natsbus.health import pool_readiness

pytestmark = pytest.mark.timeout(30)


@attrs.frozen
class Nop(Command[str]):
    text: str


class _SlowToOpen(MemoryIdempotencyStore):
    """A store whose open() (the pool's start(), before it subscribes) waits to be let go: a KV bucket being made."""

    def __init__(self) -> None:
        super().__init__()
        self.opening = threading.Event()
        self.let_go = threading.Event()

    def open(self, bus: Any) -> None:
        self.opening.set()
        self.let_go.wait(10)


def test_readiness_is_not_ok_before_the_pool_has_subscribed(bus: Bus) -> None:
    store = _SlowToOpen()
    pool = WorkerPool(bus, service_id="ready-early", max_workers=1, idempotency=store)
    pool.register(lambda cmd: cmd.text, message_type=Nop)
    starter = threading.Thread(target=pool.start)
    starter.start()
    try:
        assert store.opening.wait(10)  # start() is under way; nothing is subscribed yet
        health = pool_readiness(pool)
        assert (health.ok, health.reason) == (False, "not serving yet"), health
    finally:
        store.let_go.set()
        starter.join(10)
        pool.stop(drain_timeout=5)
