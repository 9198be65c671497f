"""The CQRS ports: what application code depends on, not how it is sent.

These are the spec's hexagonal "CQRS ports" layer as :class:`typing.Protocol`
classes. Write use cases against them; wire in an adapter at the edge::

    from natsbus.ports import CommandBusPort

    def register_user(commands: CommandBusPort, name: str, email: str) -> str:
        return commands.execute(CreateUserCommand(name, email)).user_id

    register_user(CommandBus(bus), ...)                        # NATS
    register_user(InMemoryBus(handlers).commands, ...)         # in-process tests

:class:`~natsbus.CommandBus`, :class:`~natsbus.QueryBus` and the buses of
:mod:`natsbus.testing` satisfy them structurally (no subclassing), and mypy
checks that: ``tests/test_ports.py`` runs mypy on exactly such assignments.

A hand-written fake satisfies a port too; one non-overloaded method is
enough::

    class RecordingCommands:
        def execute(self, command: Any, *, timeout: Any = DEFAULT, returns: Any = None) -> Any: ...
"""

from __future__ import annotations

from typing import Any, Protocol, Type, TypeVar, overload

from .cqrs import TimeoutArg
from .messages import Command, Query

__all__ = ["CommandBusPort", "QueryBusPort"]

R = TypeVar("R")
T = TypeVar("T")


class CommandBusPort(Protocol):
    """Sends a command (a write) and returns its result.

    ``execute(cmd)`` on a ``Command[R]`` returns an ``R``; ``returns=`` builds
    the result as another type; ``timeout`` is seconds for this call
    (``None``: no limit; default: the bus's own).
    """

    @overload
    def execute(self, command: Command[R], *, timeout: TimeoutArg = ...) -> R: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = ..., returns: Type[T]) -> T: ...

    @overload
    def execute(self, command: Any, *, timeout: TimeoutArg = ...) -> Any: ...


class QueryBusPort(Protocol):
    """Sends a query (a read) and returns its result.

    ``ask(query)`` on a ``Query[R]`` returns an ``R``; ``returns=`` and
    ``timeout`` as for :class:`CommandBusPort`.
    """

    @overload
    def ask(self, query: Query[R], *, timeout: TimeoutArg = ...) -> R: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = ..., returns: Type[T]) -> T: ...

    @overload
    def ask(self, query: Any, *, timeout: TimeoutArg = ...) -> Any: ...
