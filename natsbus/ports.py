"""The CQRS ports: what application code depends on, not how it is sent.

These are the spec's hexagonal "CQRS ports" layer as :class:`typing.Protocol`
classes, as wide as the buses: ``execute``/``ask`` (with ``retry``, and
``cache`` for queries), ``submit`` and the pipelined ``*_many`` calls. Write
use cases against them; wire in an adapter at the edge::

    from natsbus.ports import CommandBusPort

    def register_user(commands: CommandBusPort, name: str, email: str) -> str:
        return commands.execute(CreateUserCommand(name, email)).user_id

    register_user(CommandBus(bus), ...)                        # NATS
    register_user(InMemoryBus(handlers).commands, ...)         # in-process tests

:class:`~natsbus.CommandBus`, :class:`~natsbus.QueryBus` and the buses of
:mod:`natsbus.testing` satisfy them structurally (no subclassing), and mypy
checks that: ``tests/test_ports.py`` runs mypy on such assignments, and on
misuse it must reject.

Types: a ``Command[R]`` gives an ``R``; a plain attrs class (no result type
declared) needs ``returns=SomeType``. A query given to ``execute`` or a
command given to ``ask``, and anything that is not an attrs instance, are
type errors.

A hand-written fake is usually simplest as a subclass of the in-memory bus,
or an object with the methods your code calls, typed against the concrete
class it replaces.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Iterable, List, Literal, Optional, Protocol, Type, TypeVar, Union, overload

from .cqrs import Message, Progress, RetryArg, TimeoutArg
from .messages import Command, Query

__all__ = ["CommandBusPort", "QueryBusPort"]

R = TypeVar("R")
T = TypeVar("T")


class CommandBusPort(Protocol):
    """Sends commands (writes) and returns their results.

    :class:`~natsbus.CommandBus` is the NATS adapter; see it for the
    arguments, results and errors.
    """

    @overload
    def execute(
        self,
        command: Command[R],
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        retry: RetryArg = ...,
        command_id: Optional[str] = ...,
    ) -> R: ...

    @overload
    def execute(
        self,
        command: Message,
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        returns: Type[T],
        retry: RetryArg = ...,
        command_id: Optional[str] = ...,
    ) -> T: ...

    @overload
    def submit(
        self,
        command: Command[R],
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        command_id: Optional[str] = ...,
    ) -> Future[R]: ...

    @overload
    def submit(
        self,
        command: Message,
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        returns: Type[T],
        command_id: Optional[str] = ...,
    ) -> Future[T]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Command[R]],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[False] = ...,
        progress: Optional[Progress] = ...,
    ) -> List[R]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Command[R]],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = ...,
    ) -> List[Union[R, Exception]]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[False] = ...,
        progress: Optional[Progress] = ...,
        returns: Type[T],
    ) -> List[T]: ...

    @overload
    def execute_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = ...,
        returns: Type[T],
    ) -> List[Union[T, Exception]]: ...


class QueryBusPort(Protocol):
    """Asks queries (reads) and returns their results.

    :class:`~natsbus.QueryBus` is the NATS adapter; see it for the
    arguments, results and errors.
    """

    @overload
    def ask(
        self,
        query: Query[R],
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        retry: RetryArg = ...,
        cache: bool = ...,
    ) -> R: ...

    @overload
    def ask(
        self,
        query: Message,
        *,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        returns: Type[T],
        retry: RetryArg = ...,
        cache: bool = ...,
    ) -> T: ...

    @overload
    def submit(self, query: Query[R], *, timeout: TimeoutArg = ..., reconnect_grace: TimeoutArg = ...) -> Future[R]: ...

    @overload
    def submit(
        self, query: Message, *, timeout: TimeoutArg = ..., reconnect_grace: TimeoutArg = ..., returns: Type[T]
    ) -> Future[T]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Query[R]],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[False] = ...,
        progress: Optional[Progress] = ...,
    ) -> List[R]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Query[R]],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = ...,
    ) -> List[Union[R, Exception]]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[False] = ...,
        progress: Optional[Progress] = ...,
        returns: Type[T],
    ) -> List[T]: ...

    @overload
    def ask_many(
        self,
        messages: Iterable[Message],
        *,
        concurrency: int = ...,
        timeout: TimeoutArg = ...,
        reconnect_grace: TimeoutArg = ...,
        return_exceptions: Literal[True],
        progress: Optional[Progress] = ...,
        returns: Type[T],
    ) -> List[Union[T, Exception]]: ...
