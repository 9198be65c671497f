"""The pytest plugin, run on a user's test suite through pytester."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import attrs
import pytest

from natsbus import Bus, Command, CommandBus, ConflictError, NatsServer, Query, WorkerPool
from natsbus.testing import InMemoryBus


@attrs.frozen
class Register(Command[int]):
    name: str


@attrs.frozen
class Count(Query[int]):
    pass


@attrs.define
class Registry:
    names: list = attrs.field(factory=list)

    def register(self, cmd: Register) -> int:
        if cmd.name in self.names:
            raise ConflictError(f"{cmd.name} is taken")
        self.names.append(cmd.name)
        return len(self.names)

    def count(self, query: Count) -> int:
        return len(self.names)


@pytest.fixture
def natsbus_handlers():
    registry = Registry()
    return [registry.register, registry.count]


def test_over_a_real_server(natsbus_pool, natsbus_commands, natsbus_queries):
    assert isinstance(natsbus_pool, WorkerPool) and natsbus_pool.running
    assert natsbus_commands.execute(Register("ada")) == 1
    assert natsbus_commands.execute(Register("bob")) == 2
    with pytest.raises(ConflictError, match="ada is taken"):
        natsbus_commands.execute(Register("ada"))
    assert natsbus_queries.ask(Count()) == 2


def test_each_test_gets_fresh_handlers(natsbus_pool, natsbus_queries):
    assert natsbus_queries.ask(Count()) == 0


def test_in_memory_without_a_server(natsbus_memory):
    assert isinstance(natsbus_memory, InMemoryBus)
    assert natsbus_memory.commands.execute(Register("ada")) == 1
    assert natsbus_memory.queries.ask(Count()) == 1


SERVER_PIDS = []


def test_one_server_per_session(natsbus_server, natsbus_url, natsbus_bus):
    assert isinstance(natsbus_server, NatsServer) and natsbus_server.running
    assert natsbus_url == natsbus_server.url
    assert natsbus_bus.connected_url.endswith(str(natsbus_server.port))
    SERVER_PIDS.append(natsbus_server.pid)


def test_the_server_is_the_same(natsbus_server):
    assert SERVER_PIDS == [natsbus_server.pid]
"""


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("natsbus") == "natsbus.pytest_plugin"


def test_a_user_suite_gets_the_fixtures_without_importing_them(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=5)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(natsbus_bus):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:natsbus")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'natsbus_bus' not found*"])


def test_forgetting_to_override_the_handlers_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_x(natsbus_memory):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*natsbus_handlers fixture; override it (e.g. in conftest.py) to return your handlers*"]
    )


def test_overriding_the_url_uses_that_server_and_starts_none(pytester: pytest.Pytester, nats_url: str) -> None:
    pytester.makeconftest(
        f"import pytest\n\n@pytest.fixture(scope='session')\ndef natsbus_url():\n    return {nats_url!r}\n"
    )
    pytester.makepyfile(
        test_user=(
            "def test_x(natsbus_bus, request):\n"
            f"    assert natsbus_bus.connected_url.endswith({nats_url.rsplit(':', 1)[1]!r})\n"
            "    assert 'natsbus_server' not in request.fixturenames\n"
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
