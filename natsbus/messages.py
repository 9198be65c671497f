"""Message classes, their wire type names and subjects.

A command or query is an attrs class. Subclassing :class:`Command` or
:class:`Query` declares its kind and, through the type argument, its result
type, so ``CommandBus.execute()`` returns that type and mypy knows it::

    @attrs.frozen
    class CreateUserCommand(Command[UserCreated]):
        name: str
        email: str

The wire type name is the class name unless given explicitly::

    class CreateUser(Command[UserCreated], type_name="CreateUserCommand"): ...

Plain attrs classes work as well; their kind comes from the bus that sends
them (or the ``kind=`` given when registering a handler).
"""

from __future__ import annotations

import enum
import typing
from typing import Any, Dict, Generic, Optional, Tuple, TypeVar

import attrs

from .errors import MessageTypeError

__all__ = [
    "Command",
    "Kind",
    "Query",
    "command_subject",
    "message_kind",
    "query_subject",
    "result_type",
    "scatter_subject",
    "subject_for",
    "type_name",
]

R = TypeVar("R")

_TYPE_NAME_ATTR = "__natsbus_type__"


class Kind(str, enum.Enum):
    """Whether a message is a command (a write) or a query (a read)."""

    COMMAND = "command"
    QUERY = "query"

    @property
    def subject_prefix(self) -> str:
        """``commands`` or ``queries``."""
        return "commands" if self is Kind.COMMAND else "queries"

    @property
    def id_prefix(self) -> str:
        """``cmd`` or ``qry``: the spec's id prefix."""
        return "cmd" if self is Kind.COMMAND else "qry"

    @property
    def label(self) -> str:
        """``Command`` or ``Query``, as the spec's error texts say it."""
        return "Command" if self is Kind.COMMAND else "Query"


class _Message:
    def __init_subclass__(cls, type_name: Optional[str] = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type_name is not None:
            _check_token(type_name)
            setattr(cls, _TYPE_NAME_ATTR, type_name)


class Command(_Message, Generic[R]):
    """Base for commands (writes) whose handler returns an ``R``.

    Subclass it with an attrs class; ``type_name=`` overrides the wire name.
    """


class Query(_Message, Generic[R]):
    """Base for queries (reads) whose handler returns an ``R``.

    Subclass it with an attrs class; ``type_name=`` overrides the wire name.
    """


def _check_token(name: str) -> None:
    if not name or any(ch in name for ch in " \t\r\n.*>"):
        raise MessageTypeError(
            f"message type name {name!r} is not a valid NATS subject token "
            "(it may not be empty or contain spaces, '.', '*' or '>')"
        )


def type_name(cls: type) -> str:
    """The wire type name of a message class: its class name unless overridden.

    The override is not inherited: a subclass has its own name.
    """
    explicit = cls.__dict__.get(_TYPE_NAME_ATTR)
    return explicit if isinstance(explicit, str) else cls.__name__


def message_kind(cls: type) -> Optional[Kind]:
    """``Kind.COMMAND`` or ``Kind.QUERY`` from the base class, or ``None``."""
    if issubclass(cls, Command):
        return Kind.COMMAND
    if issubclass(cls, Query):
        return Kind.QUERY
    return None


_RESULT_CACHE: Dict[type, Optional[Any]] = {}


def result_type(cls: type) -> Optional[Any]:
    """The ``R`` of ``Command[R]`` / ``Query[R]`` in ``cls``'s bases, or ``None``.

    ``None`` also when the base is unparameterised; the result is then
    returned as plain JSON data.
    """
    try:
        return _RESULT_CACHE[cls]
    except KeyError:
        pass
    found: Optional[Any] = None
    for klass in cls.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) in (Command, Query):
                args = typing.get_args(base)
                if args and not isinstance(args[0], TypeVar):
                    found = args[0]
                break
        else:
            continue
        break
    _RESULT_CACHE[cls] = found
    return found


def ensure_message_class(cls: type) -> None:
    """Raise :class:`MessageTypeError` unless ``cls`` is an attrs class."""
    if not (isinstance(cls, type) and attrs.has(cls)):
        raise MessageTypeError(
            f"{cls!r} is not an attrs class; commands and queries must be defined with @attrs.define / @attrs.frozen"
        )


def command_subject(name: str) -> str:
    """``commands.{name}``, as the spec's ``CqrsRequestHandler.command_subject``."""
    _check_token(name)
    return f"commands.{name}"


def query_subject(name: str) -> str:
    """``queries.{name}``, as the spec's ``CqrsRequestHandler.query_subject``."""
    _check_token(name)
    return f"queries.{name}"


def scatter_subject(name: str) -> str:
    """``scatter.queries.{name}``: the query sent to every instance that serves it.

    Each :class:`~natsbus.WorkerPool` subscribes it for each query it
    serves, without a queue group, beside ``queries.{name}`` (which stays
    load-balanced). It cannot collide with ``queries.{name}``, whatever
    the name, and it lies outside ``commands.>`` and ``queries.>``.
    See ``QueryBus.ask_all`` and the wire contract's "Scatter-gather".
    """
    _check_token(name)
    return f"scatter.queries.{name}"


def subject_for(kind: Kind, name: str) -> str:
    """The subject of a message type name of the given kind."""
    return command_subject(name) if kind is Kind.COMMAND else query_subject(name)


def parse_subject(subject: str) -> Optional[Tuple[Kind, str]]:
    """``(kind, type name)`` for ``commands.X`` / ``queries.X``, else ``None``."""
    prefix, dot, name = subject.partition(".")
    if not dot or not name or "." in name:
        return None
    if prefix == "commands":
        return Kind.COMMAND, name
    if prefix == "queries":
        return Kind.QUERY, name
    return None
