"""Shared fixtures: one real nats-server per session, on a free loopback port."""

from __future__ import annotations

from typing import Iterator

import pytest

from natsbus import Bus, NatsServer, WorkerPool
from natsbus.demo import build_pool


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture()
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture()
def bus(nats_url: str) -> Iterator[Bus]:
    with Bus(nats_url, connect_timeout=5.0) as b:
        yield b


@pytest.fixture()
def user_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = build_pool(bus, max_workers=8).start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5.0)
