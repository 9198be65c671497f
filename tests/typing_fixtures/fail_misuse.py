"""Misuse of the public API: mypy --strict must reject each marked line (tests/test_typing.py).

A trailing comment ``E: text`` says mypy reports an error on that line whose message contains ``text``.
"""

from __future__ import annotations

from typing import List

import attrs

from natsbus import Bus, Command, CommandBus, InstanceResult, Query, QueryBus
from natsbus.ports import CommandBusPort, QueryBusPort
from natsbus.testing import InMemoryBus


@attrs.frozen
class CreateUser(Command[int]):
    name: str


@attrs.frozen
class GetName(Query[str]):
    user_id: str


@attrs.frozen
class Plain:
    n: int


def misuse(bus: Bus, memory: InMemoryBus) -> None:
    commands = CommandBus(bus)
    queries = QueryBus(bus)
    commands.execute(GetName("1"))  # E: No overload variant of "execute"
    queries.ask(CreateUser("a"))  # E: No overload variant of "ask"
    commands.execute("CreateUser")  # E: No overload variant of "execute"
    queries.ask({"user_id": "1"})  # E: No overload variant of "ask"
    commands.execute(Plain(1))  # E: No overload variant of "execute"
    commands.submit(GetName("1"))  # E: No overload variant of "submit"
    commands.execute_many([GetName("1")])  # E: "execute_many" of "CommandBus" has incompatible type
    queries.ask_many([CreateUser("a")])  # E: "ask_many" of "QueryBus" has incompatible type
    commands.execute(CreateUser("a"), retry=3)  # E: No overload variant of "execute"
    count: str = commands.execute(CreateUser("a"))  # E: Incompatible types in assignment
    names: List[int] = queries.ask_many([GetName("1")])  # E: expected "Query[int]"
    wrong_port: CommandBusPort = QueryBus(bus)  # E: Incompatible types in assignment
    wrong_memory: QueryBusPort = memory.commands  # E: Incompatible types in assignment
    queries.ask_all(CreateUser("a"))  # E: No overload variant of "ask_all"
    queries.ask_all(Plain(1))  # E: No overload variant of "ask_all"
    every: List[InstanceResult[int]] = queries.ask_all(GetName("1"))  # E: expected "Query[int]"
    print(count, names, wrong_port, wrong_memory, every)
