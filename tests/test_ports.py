"""natsbus.ports: the NATS buses and the in-memory buses satisfy the protocols, per mypy."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
from mypy import api as mypy_api

from natsbus.demo import CreateUserCommand, CreateUserHandler, GetUserHandler, GetUserQuery, UserRepository
from natsbus.ports import CommandBusPort, QueryBusPort
from natsbus.testing import InMemoryBus

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\

from natsbus import Bus, CommandBus, QueryBus
from natsbus.demo import CreateUserCommand, GetUserQuery, User, UserCreated
from natsbus.ports import CommandBusPort, QueryBusPort
from natsbus.testing import InMemoryBus


def register_user(commands: CommandBusPort, queries: QueryBusPort) -> User:
    created = commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    reveal_type(created)
    as_dict = commands.execute(CreateUserCommand("Bob", "b@example.com"), returns=dict, timeout=None)
    reveal_type(as_dict)
    return queries.ask(GetUserQuery(created.user_id), timeout=1.0)


def wire(bus: Bus, memory: InMemoryBus) -> None:
    nats_commands: CommandBusPort = CommandBus(bus)
    nats_queries: QueryBusPort = QueryBus(bus, timeout=3.0)
    memory_commands: CommandBusPort = memory.commands
    memory_queries: QueryBusPort = memory.queries.with_timeout(1.0)
    register_user(nats_commands, nats_queries)
    register_user(memory_commands, memory_queries)
"""

BAD = """\
from natsbus import Bus, QueryBus
from natsbus.demo import CreateUserCommand, GetUserQuery
from natsbus.ports import CommandBusPort, QueryBusPort
from natsbus.testing import InMemoryBus


def wrong(bus: Bus, memory: InMemoryBus) -> None:
    commands: CommandBusPort = QueryBus(bus)
    queries: QueryBusPort = memory.commands
    count: int = memory.commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    name: str = memory.queries.ask(GetUserQuery("user-1"))
"""


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[str]]:
    """mypy --strict on both snippets in one run: {file stem: its lines}."""
    work = tmp_path_factory.mktemp("ports")
    (work / "good.py").write_text(GOOD)
    (work / "bad.py").write_text(BAD)
    stdout, stderr, _status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir",
            str(work / "cache"),  # a fresh cache: a shared one reports old paths
            "--no-error-summary",
            "--show-error-codes",
            str(work / "good.py"),
            str(work / "bad.py"),
        ]
    )
    assert stderr == ""
    report: Dict[str, List[str]] = {"good": [], "bad": []}
    for line in stdout.splitlines():
        for stem in report:
            if line.startswith(str(work / f"{stem}.py")):
                report[stem].append(line.split(":", 1)[1])
    return report


def test_both_bus_kinds_satisfy_the_ports(mypy_report: Dict[str, List[str]]) -> None:
    # No errors; the generic result types come through the protocol (mypy
    # versions differ on writing "builtins.dict" or "dict").
    good = [line.replace("builtins.", "") for line in mypy_report["good"]]
    assert good == [
        '10: note: Revealed type is "natsbus.demo.UserCreated"',
        '12: note: Revealed type is "dict[Any, Any]"',
    ]


def test_mypy_rejects_the_wrong_bus_and_the_wrong_result_type(mypy_report: Dict[str, List[str]]) -> None:
    errors = [line for line in mypy_report["bad"] if ": error:" in line]
    assert [line.split(":", 1)[0] for line in errors] == ["8", "9", "10", "11"]
    assert '"QueryBus", variable has type "CommandBusPort"' in errors[0]
    assert '"InMemoryCommandBus", variable has type "QueryBusPort"' in errors[1]
    assert '(expression has type "UserCreated", variable has type "int")' in errors[2]
    assert '(expression has type "User", variable has type "str")' in errors[3]


def test_the_ports_work_at_run_time_with_the_in_memory_buses() -> None:
    def register_user(commands: CommandBusPort, queries: QueryBusPort) -> str:
        created = commands.execute(CreateUserCommand("Alice", "alice@example.com"))
        return queries.ask(GetUserQuery(created.user_id)).email

    repository = UserRepository()
    memory = InMemoryBus([CreateUserHandler(repository), GetUserHandler(repository)])
    assert register_user(memory.commands, memory.queries) == "alice@example.com"
