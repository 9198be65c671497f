"""Shared fixtures: one real nats-server per session, on a free loopback port.

They are natsbus's own pytest plugin's fixtures (installed with the
package, as users get them) under the short names these tests use.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from natsbus import Bus, NatsServer, WorkerPool
from natsbus.demo import build_pool


@pytest.fixture(scope="session")
def nats_server(natsbus_server: NatsServer) -> NatsServer:
    return natsbus_server


@pytest.fixture()
def nats_url(natsbus_url: str) -> str:
    return natsbus_url


@pytest.fixture()
def bus(natsbus_bus: Bus) -> Bus:
    return natsbus_bus


@pytest.fixture()
def user_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = build_pool(bus, max_workers=8).start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5.0)
