"""What the Flask and Django integrations share: settings, and one Bus per process.

The settings are the same keys in both (``NATSBUS_TIMEOUT`` in Flask's
config, ``NATSBUS["TIMEOUT"]`` in Django's settings):

==================  ===========================================================
``SERVERS``         a URL, a comma-separated string or a list; ``None``: ``NATS_URL``
``TIMEOUT``         default seconds for commands (5.0); ``None``: no limit
``QUERY_TIMEOUT``   default seconds for queries (3.0); ``None``: no limit
``SERVICE_ID``      the ``service_id`` in request envelopes
``OPTIONS``         other :class:`~natsbus.NatsConfig` fields, e.g. ``connect_timeout``
``IN_MEMORY``       a :class:`~natsbus.testing.InMemoryBus` to use instead of NATS (tests)
==================  ===========================================================
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import attrs

from ..bus import Bus
from ..config import NatsConfig
from ..cqrs import CommandBus, QueryBus
from ..errors import ConfigError
from ..ports import CommandBusPort, QueryBusPort

if TYPE_CHECKING:
    from ..testing import InMemoryBus

__all__ = ["BusSettings", "LazyBus", "Problem", "find_problems", "parse_settings"]

logger = logging.getLogger("natsbus.contrib")

#: The keys both integrations read, with their defaults (``SERVICE_ID``'s is per framework).
DEFAULTS: Dict[str, Any] = {
    "SERVERS": None,
    "TIMEOUT": 5.0,
    "QUERY_TIMEOUT": 3.0,
    "SERVICE_ID": None,
    "OPTIONS": {},
    "IN_MEMORY": None,
}

_CONFIG_FIELDS = frozenset(a.name for a in attrs.fields(NatsConfig)) - {"servers"}

#: ``(check id, message)``; the ids are the Django system check ids.
Problem = Tuple[str, str]

NOT_A_MAPPING = "natsbus.E001"
UNKNOWN_KEY = "natsbus.E002"
BAD_VALUE = "natsbus.E003"


@attrs.frozen
class BusSettings:
    """Validated settings.

    Attributes:
        config: How to connect.
        command_timeout: The CommandBus's default timeout.
        query_timeout: The QueryBus's default timeout.
        service_id: The ``service_id`` put in request envelopes.
        in_memory: Use this instead of connecting (tests).
    """

    config: Optional[NatsConfig]
    command_timeout: Optional[float]
    query_timeout: Optional[float]
    service_id: str
    in_memory: Optional[InMemoryBus] = None


def _timeout_problem(value: Any, label: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return f"{label} must be a number of seconds > 0, or None for no limit; got {value!r}"
    return None


def _check(
    values: Any, label: Callable[[str], str], extra_keys: Tuple[str, ...], default_service_id: str
) -> Tuple[List[Problem], Optional[BusSettings]]:
    """The problems in ``values`` and, when there are none, the BusSettings."""
    if not isinstance(values, Mapping):
        return [(NOT_A_MAPPING, f"{label('')} must be a dict, got {type(values).__name__}")], None
    problems: List[Problem] = []
    known = set(DEFAULTS) | set(extra_keys)
    for key in sorted(set(values) - known, key=str):
        problems.append((UNKNOWN_KEY, f"{label(str(key))} is not a natsbus setting; known: {', '.join(sorted(known))}"))
    merged = {**DEFAULTS, **{k: v for k, v in values.items() if k in DEFAULTS}}
    for key in ("TIMEOUT", "QUERY_TIMEOUT"):
        text = _timeout_problem(merged[key], label(key))
        if text:
            problems.append((BAD_VALUE, text))
    service_id = merged["SERVICE_ID"]
    if service_id is not None and (not isinstance(service_id, str) or not service_id):
        problems.append((BAD_VALUE, f"{label('SERVICE_ID')} must be a non-empty string, got {service_id!r}"))
    memory = merged["IN_MEMORY"]
    # The test kit is not imported here: an InMemoryBus exists only once someone imported it.
    testing = sys.modules.get("natsbus.testing")
    if memory is not None and (testing is None or not isinstance(memory, testing.InMemoryBus)):
        problems.append((BAD_VALUE, f"{label('IN_MEMORY')} must be a natsbus.testing.InMemoryBus or None"))
    config = _config(merged, label, problems) if memory is None else None
    if problems:
        return problems, None
    settings = BusSettings(
        config=config,
        command_timeout=merged["TIMEOUT"],
        query_timeout=merged["QUERY_TIMEOUT"],
        service_id=service_id or default_service_id,
        in_memory=memory,
    )
    return [], settings


def _config(merged: Mapping[str, Any], label: Callable[[str], str], problems: List[Problem]) -> Optional[NatsConfig]:
    options = merged["OPTIONS"]
    if not isinstance(options, Mapping):
        problems.append((BAD_VALUE, f"{label('OPTIONS')} must be a dict of NatsConfig fields"))
        return None
    unknown = sorted(set(options) - _CONFIG_FIELDS, key=str)
    if unknown:
        problems.append(
            (
                BAD_VALUE,
                f"{label('OPTIONS')} has {', '.join(map(repr, unknown))}, which NatsConfig does not take "
                f"(it takes {', '.join(sorted(_CONFIG_FIELDS))}; put server URLs in {label('SERVERS')})",
            )
        )
        return None
    servers = merged["SERVERS"]
    if servers is not None and not (
        isinstance(servers, str) or (isinstance(servers, (list, tuple)) and all(isinstance(s, str) for s in servers))
    ):
        problems.append((BAD_VALUE, f"{label('SERVERS')} must be a URL, a list of URLs or None, got {servers!r}"))
        return None
    try:
        if servers is None:
            NatsConfig.from_env()
        else:
            NatsConfig(servers=servers)
    except ConfigError as exc:
        where = label("SERVERS") if servers is not None else f"NATS_URL (read as {label('SERVERS')} is None)"
        problems.append((BAD_VALUE, f"{where}: {exc}"))
        return None
    try:
        if servers is None:
            return NatsConfig.from_env(**options)  # NATS_URL, read in the process that connects
        return NatsConfig(servers=servers, **options)
    except (ConfigError, TypeError, ValueError) as exc:
        problems.append((BAD_VALUE, f"{label('OPTIONS')}: {exc}"))
        return None


def find_problems(values: Any, label: Callable[[str], str], extra_keys: Tuple[str, ...] = ()) -> List[Problem]:
    """Every problem in a settings mapping, as ``(check id, message)``.

    Args:
        values: The mapping (``NATSBUS_*`` keys without the prefix, or Django's ``NATSBUS``).
        label: Writes a key as the user wrote it, e.g. ``NATSBUS['TIMEOUT']``.
        extra_keys: Keys the framework adds (e.g. Django's ``POOL``).
    """
    return _check(values, label, extra_keys, "natsbus")[0]


def parse_settings(
    values: Any,
    label: Callable[[str], str],
    *,
    default_service_id: str,
    extra_keys: Tuple[str, ...] = (),
) -> BusSettings:
    """Validated :class:`BusSettings` from a settings mapping.

    Raises:
        ConfigError: naming every bad key.
    """
    problems, settings = _check(values, label, extra_keys, default_service_id)
    if settings is None:
        raise ConfigError("; ".join(text for _, text in problems))
    return settings


# LazyBus objects alive in this process, so a fork can reset their locks in
# the child (a lock held by another thread at fork time is never released there).
_LIVE: weakref.WeakSet[LazyBus] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for holder in list(_LIVE):
        holder._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LazyBus:
    """One Bus per process, opened on first use and closed at exit.

    Nothing connects when this is built, so a pre-fork server's master can
    import the app; each worker opens its own connection on its first call.
    (A Bus opened before a fork reopens itself in the child anyway.)

    Args:
        load: Returns the settings; called on first use, in the process
            that will use the Bus.
        owner: Who it serves, for logs (``Flask app 'shop'``).
    """

    def __init__(self, load: Callable[[], BusSettings], owner: str) -> None:
        self._load = load
        self.owner = owner
        self._lock = threading.Lock()
        self._bus: Optional[Bus] = None
        self._ports: Optional[Tuple[CommandBusPort, QueryBusPort]] = None
        self._atexit_pid = 0
        _LIVE.add(self)

    @property
    def opened(self) -> bool:
        """Whether a Bus (or the in-memory bus) is in use."""
        return self._ports is not None

    def bus(self) -> Bus:
        """The process's Bus, opened now if needed.

        Raises:
            ConfigError: the settings are invalid, or name an in-memory bus.
            ConnectError: no server answered.
        """
        self.ports()
        if self._bus is None:
            raise ConfigError(f"{self.owner} uses an in-memory bus (IN_MEMORY); it has no natsbus.Bus")
        return self._bus

    def ports(self) -> Tuple[CommandBusPort, QueryBusPort]:
        """The command and query buses, opening the Bus now if needed."""
        ports = self._ports
        if ports is not None:
            return ports
        with self._lock:
            if self._ports is None:
                self._ports = self._open()
            return self._ports

    def _open(self) -> Tuple[CommandBusPort, QueryBusPort]:
        settings = self._load()
        if settings.in_memory is not None:
            memory = settings.in_memory
            return memory.commands.with_timeout(settings.command_timeout), memory.queries.with_timeout(
                settings.query_timeout
            )
        assert settings.config is not None
        bus = Bus(settings.config)
        self._bus = bus
        if self._atexit_pid != os.getpid():
            atexit.register(self.close)
            self._atexit_pid = os.getpid()
        logger.info("natsbus: opened a Bus to %s for %s in process %d", bus.connected_url, self.owner, os.getpid())
        return (
            CommandBus(bus, settings.command_timeout, settings.service_id),
            QueryBus(bus, settings.query_timeout, settings.service_id),
        )

    def close(self) -> None:
        """Close the Bus (the next use opens a new one). Safe twice."""
        with self._lock:
            bus, self._bus, self._ports = self._bus, None, None
        if bus is not None:
            bus.close()
            logger.info("natsbus: closed the Bus for %s in process %d", self.owner, os.getpid())
