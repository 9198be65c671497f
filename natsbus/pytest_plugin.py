"""pytest fixtures for testing your handlers, loaded automatically with natsbus.

Installing natsbus registers this module as a pytest plugin (the
``pytest11`` entry point ``natsbus``), so these fixtures are there in every
test suite, with no import. Tell them your handlers by overriding
``natsbus_handlers``, e.g. in ``conftest.py``::

    @pytest.fixture
    def natsbus_handlers():
        repository = UserRepository()
        return [CreateUserHandler(repository), GetUserHandler(repository)]

    def test_create_then_get(natsbus_pool, natsbus_commands, natsbus_queries):   # over a real server
        created = natsbus_commands.execute(CreateUserCommand("Alice", "alice@example.com"))
        assert natsbus_queries.ask(GetUserQuery(created.user_id)).name == "Alice"

    def test_duplicate(natsbus_memory):                                          # no server at all
        natsbus_memory.commands.execute(CreateUserCommand("Alice", "a@example.com"))
        with pytest.raises(ConflictError):
            natsbus_memory.commands.execute(CreateUserCommand("Alice", "a@example.com"))

Fixtures:

``natsbus_server`` (session)
    An embedded nats-server on a free loopback port (needs
    ``natsbus[server]``); stopped at the end of the session.
``natsbus_url`` (session)
    Its URL. Override it to test against a server you run yourself.
``natsbus_bus``
    A connected :class:`~natsbus.Bus`, closed after the test.
``natsbus_handlers``
    Your handlers: override it. The default fails the test, saying so.
``natsbus_pool``
    A started :class:`~natsbus.WorkerPool` (service ``natsbus-test``) on
    ``natsbus_bus`` serving ``natsbus_handlers``; stopped after the test.
``natsbus_commands``, ``natsbus_queries``
    A :class:`~natsbus.CommandBus` / :class:`~natsbus.QueryBus` on
    ``natsbus_bus``. Ask for ``natsbus_pool`` too, or nothing answers.
``natsbus_memory``
    An eager :class:`~natsbus.testing.InMemoryBus` serving
    ``natsbus_handlers``: the same encoding and errors, no server.

All names start with ``natsbus_``, so they do not clash with your own
``bus`` or ``nats_server`` fixtures. Disable the plugin with
``-p no:natsbus``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, List

import pytest

from .bus import Bus
from .cqrs import CommandBus, QueryBus
from .server import NatsServer
from .testing import InMemoryBus
from .worker import WorkerPool

__all__ = [
    "natsbus_bus",
    "natsbus_commands",
    "natsbus_handlers",
    "natsbus_memory",
    "natsbus_pool",
    "natsbus_queries",
    "natsbus_server",
    "natsbus_url",
]

#: The service id (and queue group) of the ``natsbus_pool`` fixture.
TEST_SERVICE_ID = "natsbus-test"


@pytest.fixture(scope="session")
def natsbus_server() -> Iterator[NatsServer]:
    """An embedded nats-server for the whole session, on a free loopback port."""
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def natsbus_url(natsbus_server: NatsServer) -> str:
    """The URL the other fixtures connect to; override it to use your own server."""
    return natsbus_server.url


@pytest.fixture()
def natsbus_bus(natsbus_url: str) -> Iterator[Bus]:
    """A connected Bus, closed after the test."""
    with Bus(natsbus_url, connect_timeout=5.0) as bus:
        yield bus


@pytest.fixture()
def natsbus_handlers() -> Iterable[Any]:
    """The handlers ``natsbus_pool`` and ``natsbus_memory`` serve. Override it."""
    pytest.fail(
        "natsbus_pool and natsbus_memory serve the handlers of the natsbus_handlers fixture; "
        "override it (e.g. in conftest.py) to return your handlers",
        pytrace=False,
    )


@pytest.fixture()
def natsbus_pool(natsbus_bus: Bus, natsbus_handlers: Iterable[Any]) -> Iterator[WorkerPool]:
    """A started WorkerPool serving ``natsbus_handlers``; drained after the test."""
    pool = WorkerPool(natsbus_bus, service_id=TEST_SERVICE_ID, handlers=natsbus_handlers)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5.0)


@pytest.fixture()
def natsbus_commands(natsbus_bus: Bus) -> CommandBus:
    """A CommandBus on ``natsbus_bus``."""
    return CommandBus(natsbus_bus, service_id=TEST_SERVICE_ID)


@pytest.fixture()
def natsbus_queries(natsbus_bus: Bus) -> QueryBus:
    """A QueryBus on ``natsbus_bus``."""
    return QueryBus(natsbus_bus, service_id=TEST_SERVICE_ID)


@pytest.fixture()
def natsbus_memory(natsbus_handlers: Iterable[Any]) -> Iterator[InMemoryBus]:
    """An eager InMemoryBus serving ``natsbus_handlers``: no server needed."""
    handlers: List[Any] = list(natsbus_handlers)
    with InMemoryBus(handlers, service_id=TEST_SERVICE_ID) as memory:
        yield memory
