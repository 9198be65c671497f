"""Service discovery over the NATS micro protocol (ADR-32), client side.

Ask every NATS micro service — natsbus worker pools and services written
with any other NATS library alike — who it is (PING), what it serves
(INFO) and how it is doing (STATS)::

    with Bus() as bus:
        for service in bus.discover():                 # or discover(bus)
            print(service.name, service.id, [e.subject for e in service.endpoints])
        bus.stats("user-service")                      # every instance's counters
        bus.has_handler("CreateUserCommand")           # True when someone serves it

One request goes out with a reply inbox of its own, and replies are
collected from all instances until none has arrived for ``quiet`` seconds,
``timeout`` seconds have passed, or ``count`` replies are in; when nobody
subscribes the subject the answer is an empty list at once. Replies that
are not valid micro responses are logged and skipped, so one odd service
does not hide the others.

``has_handler`` reads the endpoints the services list in INFO. It never
sends a probe to ``commands.X`` itself (a probe would run the command), so
a plain subscription that does not speak the micro protocol is not seen.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar, Union

import attrs

from . import codec
from ._micro import (
    DISCOVERY_QUIET,
    DISCOVERY_TIMEOUT,
    INFO_RESPONSE_TYPE,
    PING_RESPONSE_TYPE,
    STATS_RESPONSE_TYPE,
    control_subject,
    format_rfc3339,
)
from ._transport import GatheredReply
from ._transport.connection import Connection
from .errors import ConfigError, EnvelopeError, NoHandlerError
from .messages import Kind, command_subject, message_kind, parse_subject, query_subject, type_name
from .schema import REQUEST_SCHEMA_KEY, RESPONSE_SCHEMA_KEY

__all__ = [
    "DEFAULT_QUIET",
    "DEFAULT_TIMEOUT",
    "EndpointContract",
    "EndpointInfo",
    "EndpointStatsSnapshot",
    "ServiceInfo",
    "ServicePing",
    "ServiceStats",
    "contract",
    "control_subject",
    "discover",
    "format_rfc3339",
    "has_handler",
    "parse_rfc3339",
    "ping",
    "stats",
]

logger = logging.getLogger("natsbus.discovery")

#: Seconds to wait for replies in all.
DEFAULT_TIMEOUT = DISCOVERY_TIMEOUT
#: Seconds without a new reply after which every instance is taken to have answered.
DEFAULT_QUIET = DISCOVERY_QUIET

T = TypeVar("T")

_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))$"
)


def parse_rfc3339(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime.

    Tolerant of what real services send: any number of fraction digits
    (Go sends nanoseconds, ``2024-01-02T03:04:05.123456789Z``; digits past
    microseconds are dropped), ``Z`` or ``z`` or a numeric offset
    (``+00:00``, ``-07:00``, also ``+0000``), ``T``, ``t`` or a space
    between date and time, and a leap second (read as ``:59.999999``).

    Raises:
        EnvelopeError: ``text`` is not such a timestamp (also a ValueError).
    """
    match = _RFC3339_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise EnvelopeError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    micros = int((fraction + "000000")[:6])
    if second == 60:  # a leap second: the last representable instant of the minute
        second, micros = 59, 999_999
    if match.group(8):
        tz = dt.UTC
    else:
        hours, minutes = int(match.group(10)), int(match.group(11))
        if hours > 23 or minutes > 59:
            raise EnvelopeError(f"not an RFC 3339 timestamp (bad offset): {text!r}")
        offset = dt.timedelta(hours=hours, minutes=minutes)
        tz = dt.timezone(-offset if match.group(9) == "-" else offset)
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)
    except ValueError as exc:
        raise EnvelopeError(f"not an RFC 3339 timestamp ({exc}): {text!r}") from None
    return moment.astimezone(dt.UTC)


# -- results ------------------------------------------------------------------


def _text(obj: Dict[str, Any], key: str, default: Optional[str] = None) -> str:
    value = obj.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or (default is None and not value):
        raise EnvelopeError(f"expected a string '{key}' field, got {codec.json_label(value)}")
    return value


def _int(obj: Dict[str, Any], key: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EnvelopeError(f"expected a number in '{key}', got {codec.json_label(value)}")
    return int(value)


def _metadata(obj: Dict[str, Any]) -> Dict[str, str]:
    value = obj.get("metadata")
    if not isinstance(value, dict):
        return {}  # absent or null: no metadata
    return {str(k): str(v) for k, v in value.items()}


def _list(obj: Dict[str, Any], key: str) -> List[Dict[str, Any]]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise EnvelopeError(f"expected a list of objects in '{key}'")
    return value


def _check_type(obj: Dict[str, Any], expected: str) -> None:
    kind = obj.get("type")
    if kind is not None and kind != expected:
        raise EnvelopeError(f"expected type {expected!r}, got {kind!r}")


@attrs.frozen
class ServicePing:
    """One instance's answer to PING.

    Attributes:
        name: The service name (shared by its instances).
        id: This instance's id.
        version: Its SemVer version.
        metadata: Its metadata.
        rtt: Seconds from the request to this reply (``None`` when not measured).
    """

    name: str
    id: str
    version: str
    metadata: Dict[str, str] = attrs.Factory(dict)
    rtt: Optional[float] = attrs.field(default=None, eq=False)

    @classmethod
    def from_dict(cls, obj: Dict[str, Any], rtt: Optional[float] = None) -> ServicePing:
        """Read an ``io.nats.micro.v1.ping_response`` object.

        Raises:
            EnvelopeError: ``name`` or ``id`` is missing, or another type is named.
        """
        _check_type(obj, PING_RESPONSE_TYPE)
        return cls(_text(obj, "name"), _text(obj, "id"), _text(obj, "version", ""), _metadata(obj), rtt)


@attrs.frozen
class EndpointInfo:
    """One endpoint, as INFO lists it.

    Attributes:
        name: The endpoint name (for natsbus: the message type name).
        subject: The subject it serves.
        queue_group: Its queue group (``""`` when none is given).
        metadata: Its metadata.
    """

    name: str
    subject: str
    queue_group: str = ""
    metadata: Dict[str, str] = attrs.Factory(dict)

    @property
    def kind(self) -> Optional[Kind]:
        """``Kind.COMMAND`` for ``commands.X``, ``Kind.QUERY`` for ``queries.X``, else ``None``."""
        parsed = parse_subject(self.subject)
        return parsed[0] if parsed else None

    @property
    def request_schema(self) -> Optional[Dict[str, Any]]:
        """The JSON Schema of its requests' payload (natsbus metadata ``request_schema``), if it publishes one."""
        return _schema_in(self.metadata, REQUEST_SCHEMA_KEY)

    @property
    def response_schema(self) -> Optional[Dict[str, Any]]:
        """The JSON Schema of its success replies' payload (``response_schema``), if it publishes one."""
        return _schema_in(self.metadata, RESPONSE_SCHEMA_KEY)

    @classmethod
    def from_dict(cls, obj: Dict[str, Any]) -> EndpointInfo:
        """Read one element of INFO's ``endpoints``.

        Raises:
            EnvelopeError: ``name`` or ``subject`` is missing.
        """
        return cls(_text(obj, "name"), _text(obj, "subject"), _text(obj, "queue_group", ""), _metadata(obj))


@attrs.frozen
class ServiceInfo:
    """One instance's answer to INFO.

    Attributes:
        name: The service name.
        id: This instance's id.
        version: Its SemVer version.
        description: Its description (``""`` when it sent none or ``null``).
        metadata: Its metadata.
        endpoints: What it serves.
        rtt: Seconds from the request to this reply.
    """

    name: str
    id: str
    version: str
    description: str = ""
    metadata: Dict[str, str] = attrs.Factory(dict)
    endpoints: Tuple[EndpointInfo, ...] = ()
    rtt: Optional[float] = attrs.field(default=None, eq=False)

    @classmethod
    def from_dict(cls, obj: Dict[str, Any], rtt: Optional[float] = None) -> ServiceInfo:
        """Read an ``io.nats.micro.v1.info_response`` object.

        Raises:
            EnvelopeError: a required field is missing or mistyped.
        """
        _check_type(obj, INFO_RESPONSE_TYPE)
        return cls(
            name=_text(obj, "name"),
            id=_text(obj, "id"),
            version=_text(obj, "version", ""),
            description=_text(obj, "description", ""),
            metadata=_metadata(obj),
            endpoints=tuple(EndpointInfo.from_dict(e) for e in _list(obj, "endpoints")),
            rtt=rtt,
        )


def _schema_in(metadata: Dict[str, str], key: str) -> Optional[Dict[str, Any]]:
    text = metadata.get(key)
    if not text:
        return None
    try:
        value = codec.loads(text.encode())
    except (ValueError, TypeError):
        logger.warning("skipped an endpoint's %s: not JSON", key)
        return None
    return value if isinstance(value, dict) else None


@attrs.frozen
class EndpointContract:
    """A message type's contract, as a running service publishes it (:func:`contract`).

    Attributes:
        name: The wire type name.
        subject: ``commands.X`` / ``queries.X``.
        service: The service that serves it.
        version: That service's version.
        instance_id: The instance the contract was read from.
        request_schema: The JSON Schema (draft 2020-12) of the request
            envelope's ``payload``; ``None`` when the service publishes none
            (a service that is not a natsbus pool, or an older one).
        response_schema: The JSON Schema of a success reply's ``payload``.
    """

    name: str
    subject: str
    service: str
    version: str
    instance_id: str
    request_schema: Optional[Dict[str, Any]] = None
    response_schema: Optional[Dict[str, Any]] = None

    @property
    def kind(self) -> Optional[Kind]:
        """``Kind.COMMAND`` or ``Kind.QUERY``, from the subject."""
        parsed = parse_subject(self.subject)
        return parsed[0] if parsed else None


@attrs.frozen
class EndpointStatsSnapshot:
    """One endpoint's counters, as STATS reports them.

    Attributes:
        name: The endpoint name.
        subject: The subject it serves.
        queue_group: Its queue group.
        num_requests: Requests received (answered well or not).
        num_errors: Requests answered with an error.
        last_error: The last error text, or ``""``.
        processing_time: Total handling time in nanoseconds.
        average_processing_time: Mean handling time in nanoseconds.
        data: Whatever extra the service reports (``None`` for natsbus).
    """

    name: str
    subject: str
    queue_group: str = ""
    num_requests: int = 0
    num_errors: int = 0
    last_error: str = ""
    processing_time: int = 0
    average_processing_time: int = 0
    data: Any = None

    @classmethod
    def from_dict(cls, obj: Dict[str, Any]) -> EndpointStatsSnapshot:
        """Read one element of STATS' ``endpoints``.

        Raises:
            EnvelopeError: a required field is missing or mistyped.
        """
        return cls(
            name=_text(obj, "name"),
            subject=_text(obj, "subject"),
            queue_group=_text(obj, "queue_group", ""),
            num_requests=_int(obj, "num_requests"),
            num_errors=_int(obj, "num_errors"),
            last_error=_text(obj, "last_error", ""),
            processing_time=_int(obj, "processing_time"),
            average_processing_time=_int(obj, "average_processing_time"),
            data=obj.get("data"),
        )


@attrs.frozen
class ServiceStats:
    """One instance's answer to STATS.

    Attributes:
        name: The service name.
        id: This instance's id.
        version: Its SemVer version.
        started: When it started (aware, UTC).
        endpoints: Each endpoint's counters.
        metadata: Its metadata.
        rtt: Seconds from the request to this reply.
    """

    name: str
    id: str
    version: str
    started: dt.datetime
    endpoints: Tuple[EndpointStatsSnapshot, ...] = ()
    metadata: Dict[str, str] = attrs.Factory(dict)
    rtt: Optional[float] = attrs.field(default=None, eq=False)

    def endpoint(self, name: str) -> Optional[EndpointStatsSnapshot]:
        """The endpoint called ``name`` (or serving subject ``name``), if any."""
        for endpoint in self.endpoints:
            if name in (endpoint.name, endpoint.subject):
                return endpoint
        return None

    @classmethod
    def from_dict(cls, obj: Dict[str, Any], rtt: Optional[float] = None) -> ServiceStats:
        """Read an ``io.nats.micro.v1.stats_response`` object.

        Raises:
            EnvelopeError: a required field is missing or mistyped, or
                ``started`` is not RFC 3339.
        """
        _check_type(obj, STATS_RESPONSE_TYPE)
        return cls(
            name=_text(obj, "name"),
            id=_text(obj, "id"),
            version=_text(obj, "version", ""),
            started=parse_rfc3339(_text(obj, "started")),
            endpoints=tuple(EndpointStatsSnapshot.from_dict(e) for e in _list(obj, "endpoints")),
            metadata=_metadata(obj),
            rtt=rtt,
        )


# -- asking -------------------------------------------------------------------


def _gather(
    bus: Connection,
    verb: str,
    name: Optional[str],
    id: Optional[str],
    timeout: float,
    quiet: float,
    count: Optional[int],
) -> List[GatheredReply]:
    if timeout <= 0 or quiet <= 0:
        raise ConfigError(f"timeout and quiet must be > 0 seconds, got {timeout!r} and {quiet!r}")
    if count is not None and count < 1:
        raise ConfigError(f"count must be >= 1, got {count!r}")
    subject = control_subject(verb, name, id)
    if id is not None and count is None:
        count = 1  # one instance has that id
    transport = bus.live_transport()
    gather = partial(transport.gather, subject, b"", timeout=timeout, quiet=quiet, max_count=count)
    replies: List[GatheredReply] = transport.run(gather, timeout=timeout + 5.0)
    return replies


def _read(replies: List[GatheredReply], verb: str, parse: Callable[[Dict[str, Any], Optional[float]], T]) -> List[T]:
    results = []
    for reply in replies:
        try:
            if reply.headers and reply.headers.get("Nats-Service-Error"):
                raise EnvelopeError(f"error reply: {reply.headers['Nats-Service-Error']}")
            obj = codec.loads(reply.data)
            if not isinstance(obj, dict):
                raise EnvelopeError(f"expected a JSON object, got {codec.json_label(obj)}")
            results.append(parse(obj, reply.rtt))
        except (ValueError, TypeError) as exc:  # EnvelopeError is a ValueError
            logger.warning("skipped an invalid %s reply: %s: %r", verb, exc, reply.data[:200])
    results.sort(key=lambda r: (getattr(r, "name", ""), getattr(r, "id", "")))
    return results


def ping(
    bus: Connection,
    name: Optional[str] = None,
    id: Optional[str] = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: float = DEFAULT_QUIET,
    count: Optional[int] = None,
) -> List[ServicePing]:
    """PING every service instance (or those named ``name``, or one ``id``).

    Args:
        bus: The connection.
        name: Only instances of this service.
        id: Only this instance (needs ``name``).
        timeout: Seconds to wait in all.
        quiet: Stop this many seconds after the latest reply.
        count: Stop once this many replies are in.

    Returns:
        One answer per instance that replied, sorted by name and id.

    Raises:
        ConfigError: a bad name, id, timeout or count.
        BusClosedError: the Bus is closed.
    """
    return _read(_gather(bus, "PING", name, id, timeout, quiet, count), "PING", ServicePing.from_dict)


def discover(
    bus: Connection,
    name: Optional[str] = None,
    id: Optional[str] = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: float = DEFAULT_QUIET,
    count: Optional[int] = None,
) -> List[ServiceInfo]:
    """INFO from every service instance: what each serves. Arguments as :func:`ping`."""
    return _read(_gather(bus, "INFO", name, id, timeout, quiet, count), "INFO", ServiceInfo.from_dict)


def stats(
    bus: Connection,
    name: Optional[str] = None,
    id: Optional[str] = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: float = DEFAULT_QUIET,
    count: Optional[int] = None,
) -> List[ServiceStats]:
    """STATS from every service instance: per-endpoint counters. Arguments as :func:`ping`."""
    return _read(_gather(bus, "STATS", name, id, timeout, quiet, count), "STATS", ServiceStats.from_dict)


def _subjects(message_type: Union[str, type], kind: Union[Kind, str, None]) -> List[str]:
    """The subjects ``message_type`` may be served on: ``commands.X`` and/or ``queries.X``."""
    try:
        wanted_kind = Kind(kind) if kind is not None else None
    except ValueError:
        raise ConfigError(f"kind must be 'command' or 'query', got {kind!r}") from None
    if isinstance(message_type, type):
        wanted_kind = wanted_kind or message_kind(message_type)
        name = type_name(message_type)
    else:
        name = message_type
    subjects = []
    if wanted_kind in (None, Kind.COMMAND):
        subjects.append(command_subject(name))
    if wanted_kind in (None, Kind.QUERY):
        subjects.append(query_subject(name))
    return subjects


def contract(
    bus: Connection,
    message_type: Union[str, type],
    *,
    service: Optional[str] = None,
    kind: Union[Kind, str, None] = None,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: float = DEFAULT_QUIET,
) -> EndpointContract:
    """The contract a running service publishes for ``message_type``: its JSON Schemas.

    Read from the endpoint metadata of the services' INFO (natsbus pools
    publish ``request_schema`` and ``response_schema``; see
    :mod:`natsbus.schema`). Of several instances, the first (by service
    name and instance id) that publishes schemas is read; during a rolling
    deploy instances may differ: :func:`discover` shows each one's.

    Args:
        bus: The connection.
        message_type: A wire type name or a message class.
        service: Only this service's instances.
        kind: ``"command"`` or ``"query"``; default either (or the class's own).
        timeout: Seconds to wait in all.
        quiet: Stop this many seconds after the latest reply.

    Raises:
        NoHandlerError: no running service lists the type.
        ConfigError: a bad kind, name, timeout or quiet.
    """
    subjects = _subjects(message_type, kind)
    found = [
        (info, endpoint)
        for info in discover(bus, service, timeout=timeout, quiet=quiet)
        for endpoint in info.endpoints
        if endpoint.subject in subjects
    ]
    if not found:
        where = f" in service {service}" if service else ""
        raise NoHandlerError(f"No handler available for {' or '.join(subjects)}{where}", subject=subjects[0])
    found.sort(key=lambda pair: pair[1].request_schema is None)  # stable: those with schemas first
    info, endpoint = found[0]
    return EndpointContract(
        name=endpoint.name,
        subject=endpoint.subject,
        service=info.name,
        version=info.version,
        instance_id=info.id,
        request_schema=endpoint.request_schema,
        response_schema=endpoint.response_schema,
    )


def has_handler(
    bus: Connection,
    message_type: Union[str, type],
    *,
    kind: Union[Kind, str, None] = None,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: float = DEFAULT_QUIET,
) -> bool:
    """Whether some running service lists an endpoint for ``message_type`` in INFO.

    Args:
        bus: The connection.
        message_type: A wire type name (``"CreateUserCommand"``) or a message class.
        kind: Only ``commands.X`` (``"command"``) or ``queries.X`` (``"query"``);
            default: either (or the class's own kind).
        timeout: Seconds to wait in all.
        quiet: Stop this many seconds after the latest reply.

    Returns:
        True when a micro service (a natsbus pool or any other) lists the
        subject. A plain subscriber that does not answer INFO is not seen.
    """
    subjects = set(_subjects(message_type, kind))
    services = discover(bus, timeout=timeout, quiet=quiet)
    return any(endpoint.subject in subjects for service in services for endpoint in service.endpoints)
