"""Correct use of the public API: mypy --strict must accept all of it (tests/test_typing.py)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Dict, List, Union

import attrs

from natsbus import Bus, Command, CommandBus, InstanceResult, Query, QueryBus, QueryCache, RetryPolicy
from natsbus.ports import CommandBusPort, QueryBusPort
from natsbus.testing import InMemoryBus


@attrs.frozen
class Created:
    user_id: str


@attrs.frozen
class CreateUser(Command[Created]):
    name: str


@attrs.frozen
class GetName(Query[str]):
    user_id: str


@attrs.frozen
class Plain:  # an attrs class that declares no result type
    n: int


def client(bus: Bus) -> None:
    commands = CommandBus(bus, retry=RetryPolicy(attempts=2))
    queries = QueryBus(bus, cache=QueryCache(ttl=5))
    created: Created = commands.execute(CreateUser("a"), timeout=1.0, retry=None)
    name: str = queries.ask(GetName(created.user_id), cache=False, retry=RetryPolicy())
    future: Future[Created] = commands.submit(CreateUser("b"))
    many: List[Created] = commands.execute_many([CreateUser("c"), CreateUser("d")], concurrency=2)
    mixed: List[Union[Created, Exception]] = commands.execute_many([CreateUser("e")], return_exceptions=True)
    names: List[str] = queries.ask_many([GetName("1")])
    as_dict: Dict[str, Any] = commands.execute(Plain(1), returns=dict)
    plain_many: List[int] = queries.ask_many([Plain(2)], returns=int)
    plain_future: Future[str] = queries.submit(Plain(3), returns=str)
    everywhere: List[InstanceResult[str]] = queries.ask_all(GetName("1"), timeout=2.0, max_replies=3, stall=0.5)
    first_name: str = everywhere[0].unwrap()
    plain_all: List[InstanceResult[int]] = queries.ask_all(Plain(4), returns=int)
    print(name, future, many, mixed, names, as_dict, plain_many, plain_future, first_name, plain_all)


def through_ports(commands: CommandBusPort, queries: QueryBusPort) -> str:
    created = commands.execute(CreateUser("a"), retry=None)
    results = commands.execute_many([CreateUser("b")], return_exceptions=True)
    first = queries.submit(GetName(created.user_id)).result()
    return first + str(len(results)) + queries.ask(GetName("x"), cache=False)


def wire(bus: Bus, memory: InMemoryBus) -> None:
    nats_commands: CommandBusPort = CommandBus(bus)
    nats_queries: QueryBusPort = QueryBus(bus, timeout=3.0)
    memory_commands: CommandBusPort = memory.commands
    memory_queries: QueryBusPort = memory.queries.with_timeout(1.0)
    through_ports(nats_commands, nats_queries)
    through_ports(memory_commands, memory_queries)
