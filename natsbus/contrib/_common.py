"""What the Flask and Django integrations share: settings, one Bus per process, errors as HTTP.

The settings are the same keys in both (``NATSBUS_TIMEOUT`` in Flask's
config, ``NATSBUS["TIMEOUT"]`` in Django's settings):

==================  ===========================================================
``SERVERS``         a URL, a comma-separated string or a list; ``None``: ``NATS_URL``
``TIMEOUT``         default seconds for commands (5.0); ``None``: no limit
``QUERY_TIMEOUT``   default seconds for queries (3.0); ``None``: no limit
``SERVICE_ID``      the ``service_id`` in request envelopes
``OPTIONS``         other :class:`~natsbus.NatsConfig` fields, e.g. ``connect_timeout``
``RETRY``           a :class:`~natsbus.RetryPolicy` for both buses; ``None``: no retries
``MIDDLEWARE``      client middleware for both buses, e.g. ``[TraceContextMiddleware()]``
``QUERY_CACHE``     a :class:`~natsbus.QueryCache` for the query bus (one per process)
``IN_MEMORY``       a :class:`~natsbus.testing.InMemoryBus` to use instead of NATS (tests)
==================  ===========================================================

:func:`find_problems` reports every problem at once; an unknown key gets a
"did you mean".

natsbus errors as HTTP answers (:func:`http_problem`, one pure function;
Flask's ``NATSBUS_ERROR_RESPONSES`` and Django's ``ErrorResponseMiddleware``
use it). The body is an RFC 9457 problem (``application/problem+json``):
``type`` ``about:blank``, ``title`` the status's phrase, ``status``,
``detail``, and ``error``, a stable name for the condition:

=================================================  ======  ===============  =============  ===========
natsbus error                                      status  ``error``        ``detail``     Retry-After
=================================================  ======  ===============  =============  ===========
InvalidRequestError (code 400)                     400     invalid_request  the service's
NotFoundError (404)                                404     not_found        the service's
ConflictError (409)                                409     conflict         the service's
another ServiceError with a 4xx code               that    its name, e.g.   the service's
                                                           ``forbidden``
BusyError (503)                                    503     busy             fixed          1
NoHandlerError                                     503     no_handler       fixed          5
NotConnectedError, ConnectError                    503     not_connected    fixed          5
BusClosedError                                     503     shutting_down    fixed          5
ResultNotReadyError                                503     not_ready        fixed          1
RequestTimeoutError, DeadlineExceededError (504)   504     timeout          fixed
PayloadTooLargeError                               413     too_large        fixed
EnvelopeError (a reply natsbus cannot read)        502     bad_reply        fixed
HandlerError (500), a ServiceError's other codes   500     handler_error    fixed
anything else, e.g. ConfigError, JetStreamError    500     internal         fixed
=================================================  ======  ===============  =============  ===========

Only a 4xx shows the service's own text (a handler writes those for its
callers: ``User not found: u-1``). Every other ``detail`` is a fixed
sentence: a handler's crash text, server URLs, subjects and credentials
stay in the server's log (:func:`log_problem`: a 500 at ERROR with the
traceback, another 5xx at WARNING), never in the answer. A
``PermissionDeniedError`` is a 500 too: the web server's NATS user lacks a
permission, which the HTTP client cannot fix.
"""

from __future__ import annotations

import atexit
import difflib
import logging
import os
import sys
import threading
import weakref
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs

from ..bus import Bus
from ..config import NatsConfig
from ..cqrs import CommandBus, QueryBus
from ..errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    EnvelopeError,
    JetStreamError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ResultNotReadyError,
    ServiceError,
    TransportError,
)
from ..middleware import ClientCall, HandlerMiddleware, Middleware
from ..policies import QueryCache, RetryPolicy
from ..ports import CommandBusPort, QueryBusPort

if TYPE_CHECKING:
    from ..health import Health
    from ..testing import InMemoryBus

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "RETRY_AFTER_BUSY",
    "RETRY_AFTER_UNAVAILABLE",
    "BusSettings",
    "HttpProblem",
    "LazyBus",
    "Problem",
    "find_problems",
    "http_problem",
    "log_problem",
    "parse_settings",
    "problems_text",
]

logger = logging.getLogger("natsbus.contrib")

#: The keys both integrations read, with their defaults (``SERVICE_ID``'s is per framework).
DEFAULTS: Dict[str, Any] = {
    "SERVERS": None,
    "TIMEOUT": 5.0,
    "QUERY_TIMEOUT": 3.0,
    "SERVICE_ID": None,
    "OPTIONS": {},
    "RETRY": None,
    "MIDDLEWARE": (),
    "QUERY_CACHE": None,
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
        config: How to connect (``None`` with ``in_memory``).
        command_timeout: The CommandBus's default timeout.
        query_timeout: The QueryBus's default timeout.
        service_id: The ``service_id`` put in request envelopes.
        in_memory: Use this instead of connecting (tests).
        retry: The buses' retry policy.
        middleware: The buses' client middleware.
        query_cache: The QueryBus's cache.
    """

    config: Optional[NatsConfig]
    command_timeout: Optional[float]
    query_timeout: Optional[float]
    service_id: str
    in_memory: Optional[InMemoryBus] = None
    retry: Optional[RetryPolicy] = None
    middleware: Tuple[Middleware[ClientCall], ...] = ()
    query_cache: Optional[QueryCache] = None


def _timeout_problem(value: Any, label: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return f"{label} must be a number of seconds > 0, or None for no limit; got {value!r}"
    return None


def _instance_problem(value: Any, cls: type, label: str, example: str) -> Optional[str]:
    """``value`` should be a ``cls`` or None."""
    if value is None or isinstance(value, cls):
        return None
    if isinstance(value, type) and issubclass(value, cls):
        return f"{label} is the class {value.__name__}; give an instance, e.g. {example}"
    return f"{label} must be a natsbus.{cls.__name__} (e.g. {example}) or None, got {value!r}"


def _middleware_problems(value: Any, label: str) -> List[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [f"{label} must be a list of client middleware, e.g. [TraceContextMiddleware()], got {value!r}"]
    problems = []
    for i, item in enumerate(value):
        where = f"{label}[{i}]"
        if isinstance(item, HandlerMiddleware):
            problems.append(f"{where} is handler middleware ({type(item).__name__}); it goes on a WorkerPool")
        elif isinstance(item, type) and issubclass(item, Middleware):
            problems.append(f"{where} is the class {item.__name__}; give an instance: {item.__name__}()")
        elif not isinstance(item, Middleware):
            problems.append(
                f"{where} must be client middleware (a natsbus.middleware.ClientMiddleware, or a built-in "
                f"such as TraceContextMiddleware()), got {item!r}"
            )
    return problems


def _suggest(word: str, choices: Sequence[str]) -> Optional[str]:
    """The closest of ``choices`` to ``word`` (case-insensitively), if any is close."""
    by_upper = {choice.upper(): choice for choice in choices}
    close = difflib.get_close_matches(word.upper(), list(by_upper), n=1)
    return by_upper[close[0]] if close else None


def _unknown_key(key: Any, label: Callable[[str], str], known: Sequence[str], hints: Mapping[str, str]) -> str:
    text = f"{label(str(key))} is not a natsbus setting"
    hint = hints.get(str(key))
    if hint:
        return f"{text}; {hint}"
    if str(key).lower() in _CONFIG_FIELDS:
        return f"{text}; did you mean {label('OPTIONS')}[{str(key).lower()!r}]?"
    close = _suggest(str(key), known)
    if close:
        return f"{text}; did you mean {label(close)}?"
    return f"{text}; known: {', '.join(known)}"


def _check(
    values: Any,
    label: Callable[[str], str],
    extra_keys: Tuple[str, ...],
    default_service_id: str,
    hints: Mapping[str, str],
) -> Tuple[List[Problem], Optional[BusSettings]]:
    """The problems in ``values`` and, when there are none, the BusSettings."""
    if not isinstance(values, Mapping):
        return [(NOT_A_MAPPING, f"{label('')} must be a dict, got {type(values).__name__}")], None
    problems: List[Problem] = []
    known = sorted(set(DEFAULTS) | set(extra_keys))
    for key in sorted(set(values) - set(known), key=str):
        problems.append((UNKNOWN_KEY, _unknown_key(key, label, known, hints)))
    merged = {**DEFAULTS, **{k: v for k, v in values.items() if k in DEFAULTS}}
    bad: List[Optional[str]] = [
        _timeout_problem(merged["TIMEOUT"], label("TIMEOUT")),
        _timeout_problem(merged["QUERY_TIMEOUT"], label("QUERY_TIMEOUT")),
    ]
    service_id = merged["SERVICE_ID"]
    if service_id is not None and (not isinstance(service_id, str) or not service_id):
        bad.append(f"{label('SERVICE_ID')} must be a non-empty string, got {service_id!r}")
    bad.append(_instance_problem(merged["RETRY"], RetryPolicy, label("RETRY"), "RetryPolicy(attempts=3)"))
    bad.extend(_middleware_problems(merged["MIDDLEWARE"], label("MIDDLEWARE")))
    bad.append(_instance_problem(merged["QUERY_CACHE"], QueryCache, label("QUERY_CACHE"), "QueryCache(ttl=30)"))
    memory = merged["IN_MEMORY"]
    # The test kit is not imported here: an InMemoryBus exists only once someone imported it.
    testing = sys.modules.get("natsbus.testing")
    if memory is not None and (testing is None or not isinstance(memory, testing.InMemoryBus)):
        bad.append(f"{label('IN_MEMORY')} must be a natsbus.testing.InMemoryBus or None")
    problems.extend((BAD_VALUE, text) for text in bad if text)
    config = _config(merged, label, problems, read_env=memory is None)
    if problems:
        return problems, None
    settings = BusSettings(
        config=config if memory is None else None,
        command_timeout=merged["TIMEOUT"],
        query_timeout=merged["QUERY_TIMEOUT"],
        service_id=service_id or default_service_id,
        in_memory=memory,
        retry=merged["RETRY"],
        middleware=tuple(merged["MIDDLEWARE"]),
        query_cache=merged["QUERY_CACHE"],
    )
    return [], settings


def _options_problems(options: Any, label: Callable[[str], str]) -> List[str]:
    if not isinstance(options, Mapping):
        return [f"{label('OPTIONS')} must be a dict of NatsConfig fields, got {options!r}"]
    problems = []
    fields = sorted(_CONFIG_FIELDS)
    for key in sorted(set(options) - _CONFIG_FIELDS, key=str):
        text = f"{label('OPTIONS')} has {key!r}, which NatsConfig does not take"
        close = _suggest(str(key), fields)
        if str(key) == "servers":
            problems.append(f"{text}; put server URLs in {label('SERVERS')}")
        elif close:
            problems.append(f"{text}; did you mean {close!r}?")
        else:
            problems.append(f"{text} (it takes {', '.join(fields)})")
    if problems:
        return problems
    try:
        NatsConfig(**options)  # the values alone, whatever the servers are
    except (ConfigError, TypeError, ValueError) as exc:
        return [f"{label('OPTIONS')}: {exc}"]
    return []


def _servers_problem(servers: Any, label: Callable[[str], str], read_env: bool) -> Optional[str]:
    if servers is not None and not (
        isinstance(servers, str) or (isinstance(servers, (list, tuple)) and all(isinstance(s, str) for s in servers))
    ):
        return f"{label('SERVERS')} must be a URL, a list of URLs or None, got {servers!r}"
    if servers is None and not read_env:
        return None
    try:
        if servers is None:
            NatsConfig.from_env()
        else:
            NatsConfig(servers=servers)
    except ConfigError as exc:
        where = label("SERVERS") if servers is not None else f"NATS_URL (read as {label('SERVERS')} is None)"
        return f"{where}: {exc}"
    return None


def _config(
    merged: Mapping[str, Any], label: Callable[[str], str], problems: List[Problem], read_env: bool
) -> Optional[NatsConfig]:
    """The NatsConfig; SERVERS and OPTIONS are checked apart, so one's mistake hides none of the other's."""
    options, servers = merged["OPTIONS"], merged["SERVERS"]
    found = _options_problems(options, label)
    server_problem = _servers_problem(servers, label, read_env)
    if server_problem:
        found.append(server_problem)
    problems.extend((BAD_VALUE, text) for text in found)
    if found or not read_env:
        return None
    try:
        if servers is None:
            return NatsConfig.from_env(**options)  # NATS_URL, read in the process that connects
        return NatsConfig(servers=servers, **options)
    except (ConfigError, TypeError, ValueError) as exc:
        problems.append((BAD_VALUE, f"{label('OPTIONS')} with {label('SERVERS')}: {exc}"))
        return None


def find_problems(
    values: Any,
    label: Callable[[str], str],
    extra_keys: Tuple[str, ...] = (),
    hints: Optional[Mapping[str, str]] = None,
) -> List[Problem]:
    """Every problem in a settings mapping, as ``(check id, message)``.

    Reads ``NATS_URL`` (and natscli's other variables) to check them when
    ``SERVERS`` is ``None``; the Bus reads them again when it opens.

    Args:
        values: The mapping (``NATSBUS_*`` keys without the prefix, or Django's ``NATSBUS``).
        label: Writes a key as the user wrote it, e.g. ``NATSBUS['TIMEOUT']``.
        extra_keys: Keys the framework adds (e.g. Django's ``POOL``); the
            framework checks their values.
        hints: What to say about a key the framework does not take, by key.
    """
    return _check(values, label, extra_keys, "natsbus", hints or {})[0]


def parse_settings(
    values: Any,
    label: Callable[[str], str],
    *,
    default_service_id: str,
    extra_keys: Tuple[str, ...] = (),
    hints: Optional[Mapping[str, str]] = None,
) -> BusSettings:
    """Validated :class:`BusSettings` from a settings mapping.

    Raises:
        ConfigError: naming every bad key.
    """
    problems, settings = _check(values, label, extra_keys, default_service_id, hints or {})
    if settings is None:
        raise ConfigError(problems_text(label(""), [text for _, text in problems]))
    return settings


def problems_text(what: str, problems: Sequence[str]) -> str:
    """One message for a ConfigError: the only problem, or a list of them all."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems in {what}:\n" + "\n".join(f"- {text}" for text in problems)


# -- natsbus errors as HTTP answers --------------------------------------------------

#: The media type of the error bodies (RFC 9457).
PROBLEM_CONTENT_TYPE = "application/problem+json"
#: Seconds in ``Retry-After`` when a pool was full, or a result is not stored yet.
RETRY_AFTER_BUSY = 1
#: Seconds in ``Retry-After`` when no service answers or NATS is unreachable.
RETRY_AFTER_UNAVAILABLE = 5

#: The service's own text is shown for these codes, with these ``error`` names.
_CLIENT_ERRORS = {400: "invalid_request", 404: "not_found", 409: "conflict"}


@attrs.frozen
class HttpProblem:
    """How to answer a natsbus error over HTTP: an RFC 9457 problem.

    Attributes:
        status: The HTTP status.
        error: A stable name for the condition (``not_found``, ``busy``, ...),
            the body's ``error`` member.
        detail: The body's ``detail``: the service's text for a 4xx, else
            a fixed sentence.
        retry_after: Seconds for a ``Retry-After`` header, or ``None``.
    """

    status: int
    error: str
    detail: str
    retry_after: Optional[int] = None

    @property
    def title(self) -> str:
        """The status's phrase (``about:blank`` problems use it as their title)."""
        return HTTPStatus(self.status).phrase

    def body(self) -> Dict[str, Any]:
        """The JSON body: ``type``, ``title``, ``status``, ``detail``, ``error``."""
        return {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "error": self.error,
        }

    def headers(self) -> Dict[str, str]:
        """``Retry-After``, when there is one."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def _service_problem(error: ServiceError) -> HttpProblem:
    code = error.code
    if code == 503:
        return HttpProblem(503, "busy", "The service is busy; try again shortly.", RETRY_AFTER_BUSY)
    if code == 504:
        return HttpProblem(504, "timeout", "The service did not answer in time.")
    if isinstance(code, int) and 400 <= code < 500:
        try:
            name = _CLIENT_ERRORS.get(code) or HTTPStatus(code).name.lower()
        except ValueError:  # not a status HTTP defines
            pass
        else:
            return HttpProblem(code, name, error.message)
    return HttpProblem(500, "handler_error", "The service failed to handle this request.")


def http_problem(error: NatsBusError) -> HttpProblem:
    """The HTTP answer for a natsbus error (see the module's table).

    Pure: looks only at the error's class, its ``code`` and, for a 4xx, its text.

    Args:
        error: What a view raised.

    Returns:
        The status, the body's ``error`` and ``detail``, and the seconds for
        ``Retry-After``.
    """
    if isinstance(error, ServiceError):
        return _service_problem(error)
    if isinstance(error, NoHandlerError):
        return HttpProblem(503, "no_handler", "No service is available for this request.", RETRY_AFTER_UNAVAILABLE)
    if isinstance(error, (NotConnectedError, ConnectError)) or (
        isinstance(error, TransportError) and not isinstance(error, JetStreamError)
    ):
        return HttpProblem(503, "not_connected", "The message bus is not reachable.", RETRY_AFTER_UNAVAILABLE)
    if isinstance(error, BusClosedError):
        return HttpProblem(503, "shutting_down", "This server is shutting down.", RETRY_AFTER_UNAVAILABLE)
    if isinstance(error, ResultNotReadyError):
        return HttpProblem(503, "not_ready", "The result is not ready yet.", RETRY_AFTER_BUSY)
    if isinstance(error, RequestTimeoutError):
        return HttpProblem(504, "timeout", "The service did not answer in time.")
    if isinstance(error, PayloadTooLargeError):
        return HttpProblem(413, "too_large", "The request is too large to send to the service.")
    if isinstance(error, EnvelopeError):
        return HttpProblem(502, "bad_reply", "The service's reply could not be read.")
    return HttpProblem(500, "internal", "The server failed to handle this request.")


def log_problem(error: NatsBusError, problem: HttpProblem, request: str) -> None:
    """Log what the answer does not say: a 500 with its traceback, other 5xx in one line.

    Args:
        error: The error.
        problem: Its answer.
        request: The request, for the log line (``GET /users/u-1``).
    """
    if problem.status == 500:
        logger.error("natsbus: %s answered 500 (%s): %r", request, problem.error, error, exc_info=error)
    elif problem.status >= 500:
        logger.warning("natsbus: %s answered %d (%s): %s", request, problem.status, problem.error, error)


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
            return _in_memory_buses(settings, settings.in_memory)
        assert settings.config is not None
        bus = Bus(settings.config)
        self._bus = bus
        if self._atexit_pid != os.getpid():
            atexit.register(self.close)
            self._atexit_pid = os.getpid()
        logger.info("natsbus: opened a Bus to %s for %s in process %d", bus.connected_url, self.owner, os.getpid())
        return (
            CommandBus(
                bus, settings.command_timeout, settings.service_id, retry=settings.retry, middleware=settings.middleware
            ),
            QueryBus(
                bus,
                settings.query_timeout,
                settings.service_id,
                retry=settings.retry,
                cache=settings.query_cache,
                middleware=settings.middleware,
            ),
        )

    def liveness(self) -> Health:
        """``/livez`` for a web process: does not open the Bus before its first use; when open, its loop answers.

        (In a forked child, checking the loop opens the child's own connection, as a first call would.)

        See :func:`natsbus.health.bus_liveness`; ok with ``{"loop": "not opened"}``
        before the first use (or ``"in-memory"``).
        """
        from ..health import Health, bus_liveness

        bus = self._bus
        if bus is None:
            return Health(True, checks={"loop": "in-memory" if self.opened else "not opened"})
        return bus_liveness(bus)

    def readiness(self) -> Health:
        """``/readyz`` for a web process: the Bus is connected (opened now if needed).

        See :func:`natsbus.health.bus_readiness`. A Bus that cannot open is
        not ready (``"not connected (ConnectError)"``; the error's text is
        not shown); the in-memory bus always is.
        """
        from ..health import Health, bus_readiness

        try:
            self.ports()  # a pod is ready once it can reach NATS, before any view has sent anything
        except NatsBusError as exc:
            logger.warning("natsbus: readiness: cannot open the Bus for %s: %s", self.owner, type(exc).__name__)
            return Health(False, f"not connected ({type(exc).__name__})", {"connection": "not opened"})
        bus = self._bus
        if bus is None:
            return Health(True, checks={"connection": "in-memory"})
        return bus_readiness(bus)

    def close(self) -> None:
        """Close the Bus (the next use opens a new one). Safe twice."""
        with self._lock:
            bus, self._bus, self._ports = self._bus, None, None
        if bus is not None:
            bus.close()
            logger.info("natsbus: closed the Bus for %s in process %d", self.owner, os.getpid())


def _in_memory_buses(settings: BusSettings, memory: InMemoryBus) -> Tuple[CommandBusPort, QueryBusPort]:
    """The in-memory bus's command and query buses, with the settings a Bus would get."""
    from ..testing import InMemoryCommandBus, InMemoryQueryBus  # only an IN_MEMORY setting gets here

    # The InMemoryBus's own client middleware first, then the settings'.
    chain = memory.client_middleware + settings.middleware
    commands = InMemoryCommandBus(
        memory, settings.command_timeout, settings.service_id, retry=settings.retry, middleware=chain
    )
    queries = InMemoryQueryBus(
        memory,
        settings.query_timeout,
        settings.service_id,
        retry=settings.retry,
        cache=settings.query_cache,
        middleware=chain,
    )
    return commands, queries
