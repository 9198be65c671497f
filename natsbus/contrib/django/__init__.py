"""Django integration: a per-process bus, a system check, a worker command, on-commit sends.

Add the app and a ``NATSBUS`` setting (every key is optional)::

    INSTALLED_APPS = [..., "natsbus.contrib.django"]

    NATSBUS = {
        "SERVERS": None,            # a URL or a list; None: the NATS_URL environment variable
        "TIMEOUT": 5.0,             # default seconds for commands (None: no limit)
        "QUERY_TIMEOUT": 3.0,       # default seconds for queries
        "SERVICE_ID": "web",        # service_id in request envelopes (default "django")
        "OPTIONS": {},              # other NatsConfig fields, e.g. {"connect_timeout": 2.0}
        "RETRY": None,              # a natsbus.RetryPolicy for commands and queries
        "MIDDLEWARE": [],           # client middleware, e.g. [TraceContextMiddleware()]
        "QUERY_CACHE": None,        # a natsbus.QueryCache (each process has its own copy)
        "POOL": "shop.handlers:build_pool",   # for manage.py natsbus_worker
        "IN_MEMORY": None,          # a natsbus.testing.InMemoryBus: no server (tests)
    }

    MIDDLEWARE = [..., "natsbus.contrib.django.ErrorResponseMiddleware"]   # errors as JSON problems

Views send through the process's bus::

    from natsbus.contrib.django import execute_on_commit, get_command_bus, get_query_bus

    def create_user(request):
        created = get_command_bus().execute(CreateUserCommand(name, email))
        ...

    with transaction.atomic():
        order = Order.objects.create(...)
        execute_on_commit(ShipOrderCommand(order.pk))      # sent only if this commits

* The Bus is opened on first use in each process (a gunicorn ``--preload``
  master never connects), shared by the process's threads, closed at exit,
  and reopened with new settings when ``override_settings(NATSBUS=...)``
  changes them.
* ``manage.py check`` reports every bad setting at once
  (``natsbus.E001``-``E004``): unknown keys (with a "did you mean"), wrong
  types, URLs without a scheme, a ``POOL`` that does not import.
* :class:`ErrorResponseMiddleware` answers a natsbus error raised by a view
  with an RFC 9457 problem (``application/problem+json``): 404, 409 and 400
  with the service's text; 503 with ``Retry-After`` when busy, no handler
  serves or NATS is unreachable; 504 on a timeout; 500, without the error's
  text (it is logged), for the rest. Without it Django answers 500.
* ``manage.py natsbus_worker [--pool module:factory]`` serves a
  :class:`~natsbus.WorkerPool` with Django set up; see its ``--help``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, TypeVar, overload

from django.conf import settings
from django.db import transaction

from ...bus import Bus
from ...cqrs import DEFAULT, TimeoutArg
from ...errors import ConfigError
from ...messages import Command, Kind, ensure_message_class, message_kind
from ...ports import CommandBusPort, QueryBusPort
from .._common import BusSettings, LazyBus, parse_settings
from .middleware import ErrorResponseMiddleware

__all__ = [
    "ErrorResponseMiddleware",
    "close_bus",
    "execute_on_commit",
    "get_bus",
    "get_command_bus",
    "get_query_bus",
    "load_settings",
]

logger = logging.getLogger("natsbus.contrib.django")

R = TypeVar("R")

#: The keys only the Django integration reads.
DJANGO_KEYS = ("POOL",)
#: What to say about keys the Django integration does not take.
HINTS = {
    "ERROR_RESPONSES": "in Django, add 'natsbus.contrib.django.ErrorResponseMiddleware' to MIDDLEWARE instead",
}
DEFAULT_SERVICE_ID = "django"


def label(key: str) -> str:
    """How a key is written in ``settings.py``: ``NATSBUS['TIMEOUT']``."""
    return f"NATSBUS[{key!r}]" if key else "NATSBUS"


def natsbus_settings() -> Any:
    """``settings.NATSBUS``, or ``{}`` when it is not set."""
    return getattr(settings, "NATSBUS", {})


def load_settings() -> BusSettings:
    """The validated ``NATSBUS`` setting.

    Raises:
        ConfigError: naming every bad key (``manage.py check`` lists them too).
    """
    return parse_settings(
        natsbus_settings(), label, default_service_id=DEFAULT_SERVICE_ID, extra_keys=DJANGO_KEYS, hints=HINTS
    )


# The process's bus (the health views use it too): one per process by design (like django.db.connections),
# opened lazily, so importing this module connects nothing.
process_bus = LazyBus(load_settings, owner="Django")


def get_bus() -> Bus:
    """This process's :class:`~natsbus.Bus`, opened on first use.

    Raises:
        ConfigError: the settings are invalid, or use ``IN_MEMORY``.
        ConnectError: no server answered.
    """
    return process_bus.bus()


def get_command_bus() -> CommandBusPort:
    """This process's command bus (``execute()``), opening the Bus if needed."""
    return process_bus.ports()[0]


def get_query_bus() -> QueryBusPort:
    """This process's query bus (``ask()``), opening the Bus if needed."""
    return process_bus.ports()[1]


def close_bus() -> None:
    """Close this process's Bus now; the next use opens a new one. Safe twice."""
    process_bus.close()


@overload
def execute_on_commit(
    command: Command[R],
    *,
    timeout: TimeoutArg = DEFAULT,
    on_result: Optional[Callable[[R], object]] = None,
    using: Optional[str] = None,
    robust: bool = True,
) -> None: ...


@overload
def execute_on_commit(
    command: Any,
    *,
    timeout: TimeoutArg = DEFAULT,
    on_result: Optional[Callable[[Any], object]] = None,
    using: Optional[str] = None,
    robust: bool = True,
) -> None: ...


def execute_on_commit(
    command: Any,
    *,
    timeout: TimeoutArg = DEFAULT,
    on_result: Optional[Callable[[Any], object]] = None,
    using: Optional[str] = None,
    robust: bool = True,
) -> None:
    """Execute ``command`` once the current database transaction commits.

    If the transaction rolls back, the command is never sent. Outside a
    transaction (autocommit) it is sent at once, as Django runs
    ``on_commit`` callbacks then. The send happens in the committing
    thread, right after the commit, through :func:`get_command_bus`.

    Args:
        command: The command (checked now: an attrs class, not a query).
        timeout: Seconds for the send; default the bus's.
        on_result: Called with the result after a successful send.
        using: The database alias whose transaction to wait for.
        robust: ``True``: a failure after the commit (no handler, a
            timeout, a handler error, or ``on_result`` raising) is logged
            by Django and does not reach the code that committed, as the
            commit cannot be undone. ``False``: it is raised from the
            commit point (the end of the ``atomic`` block).

    Raises:
        MessageTypeError: ``command`` is not an attrs instance.
        ConfigError: ``command`` is a query.
    """
    ensure_message_class(type(command))
    if message_kind(type(command)) is Kind.QUERY:
        raise ConfigError(f"{type(command).__name__} is a query; execute_on_commit sends commands")

    def send() -> None:
        result = get_command_bus().execute(command, timeout=timeout)
        if on_result is not None:
            on_result(result)

    send.__qualname__ = f"execute_on_commit({type(command).__name__})"  # Django logs it on failure
    transaction.on_commit(send, using=using, robust=robust)


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "NATSBUS":
        close_bus()  # the next use opens a Bus with the new settings
