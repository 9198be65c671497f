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
def server() -> Iterator[NatsServer]:
    """A nats-server of this test's own (no JetStream), for tests that stop, restart or replace it.

    A module that needs another kind (monitoring, module scope) defines its own ``server``.
    """
    with NatsServer(jetstream=False) as srv:
        yield srv


@pytest.fixture(scope="module")
def django_setup() -> None:
    """Django configured in this process: an in-memory sqlite and the natsbus app (once per process)."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="tests-only-not-a-secret",
            INSTALLED_APPS=["natsbus.contrib.django"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            NATSBUS={"SERVICE_ID": "tests"},
            USE_TZ=True,
        )
        django.setup()


@pytest.fixture()
def user_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = build_pool(bus, max_workers=8).start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5.0)
