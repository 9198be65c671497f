"""The NATS micro service protocol (ADR-32), worker side.

A running :class:`~natsbus.WorkerPool` is a NATS micro service: its name
is the pool's ``service_id``, it gets a fresh instance id, and each
handler is one endpoint (named after the message type, on its
``commands.X`` / ``queries.Y`` subject and the pool's queue group). It
answers the discovery verbs on every form of their subjects::

    $SRV.PING   $SRV.PING.<name>   $SRV.PING.<name>.<id>
    $SRV.INFO   $SRV.INFO.<name>   $SRV.INFO.<name>.<id>
    $SRV.STATS  $SRV.STATS.<name>  $SRV.STATS.<name>.<id>

without a queue group, so every instance answers. The callbacks run on
the loop thread and only build a small JSON object from counters (no
user code); the stats lock they take is held by the worker threads for a
few additions at most.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from . import codec
from ._transport import Handler, RawHeaders, Transport, new_nuid
from .errors import BusClosedError, ConfigError

if TYPE_CHECKING:
    from .dispatch import Dispatcher, HandlerRoute

__all__ = [
    "INFO_RESPONSE_TYPE",
    "PING_RESPONSE_TYPE",
    "PREFIX",
    "STATS_RESPONSE_TYPE",
    "VERBS",
    "MicroResponder",
    "control_subject",
    "format_rfc3339",
]

logger = logging.getLogger("natsbus.micro")

#: The root of the discovery subjects.
#: Discovery's defaults (the Bus's discovery methods, natsbus.discovery and the
#: CLI): seconds to wait for replies in all, and seconds of quiet after which
#: every instance has answered.
DISCOVERY_TIMEOUT = 2.0
DISCOVERY_QUIET = 0.2

PREFIX = "$SRV"
#: The discovery verbs.
VERBS = ("PING", "INFO", "STATS")
PING_RESPONSE_TYPE = "io.nats.micro.v1.ping_response"
INFO_RESPONSE_TYPE = "io.nats.micro.v1.info_response"
STATS_RESPONSE_TYPE = "io.nats.micro.v1.stats_response"

# ADR-32's names and the official SemVer regex (as in micro-v1/definitions.json).
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


def control_subject(verb: str, name: Optional[str] = None, id: Optional[str] = None) -> str:
    """``$SRV.<verb>``, ``$SRV.<verb>.<name>`` or ``$SRV.<verb>.<name>.<id>``.

    Raises:
        ConfigError: an unknown verb, an id without a name, or a name or
            id that is not a valid subject token.
    """
    verb = verb.upper()
    if verb not in VERBS:
        raise ConfigError(f"unknown micro verb {verb!r}; expected one of {', '.join(VERBS)}")
    if name is None:
        if id is not None:
            raise ConfigError("a service id needs the service name too")
        return f"{PREFIX}.{verb}"
    if not NAME_RE.match(name):
        raise ConfigError(f"{name!r} is not a micro service name (letters, digits, '-' and '_')")
    if id is None:
        return f"{PREFIX}.{verb}.{name}"
    if not id or any(ch in id for ch in " \t\r\n.*>"):
        raise ConfigError(f"{id!r} is not a service instance id")
    return f"{PREFIX}.{verb}.{name}.{id}"


def format_rfc3339(epoch_ns: int) -> str:
    """RFC 3339 UTC with microseconds, ``2024-01-02T03:04:05.123456Z``.

    Microseconds, not nanoseconds: nats-py's own parser reads at most six
    fraction digits; Go and every RFC 3339 parser read any number.
    """
    seconds, ns = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns // 1000:06d}Z"


class MicroResponder:
    """Answers PING, INFO and STATS for one worker pool.

    Args:
        name: The service name (the pool's ``service_id``).
        version: A SemVer version.
        description: Free text; always sent as a string.
        metadata: String keys and values, sent as is.
        dispatcher: The pool's dispatcher: its routes are the endpoints,
            their counters the stats.
        queue_group: The endpoints' queue group.

    Raises:
        ConfigError: ``name`` or ``version`` breaks the protocol's rules,
            or ``metadata`` is not strings to strings.
    """

    def __init__(
        self,
        name: str,
        version: str,
        description: str,
        metadata: Optional[Mapping[str, str]],
        dispatcher: Dispatcher,
        queue_group: str,
    ) -> None:
        if not NAME_RE.match(name):
            raise ConfigError(
                f"service_id {name!r} cannot name a NATS micro service: use letters, digits, '-' and '_' only"
            )
        if not isinstance(version, str) or not SEMVER_RE.match(version):
            raise ConfigError(f"version {version!r} is not a SemVer version such as 1.2.3")
        if not isinstance(description, str):
            raise ConfigError(f"description must be a string, got {type(description).__name__}")
        meta = dict(metadata or {})
        for key, value in meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"metadata must map strings to strings, got {key!r}: {value!r}")
        self.name = name
        self.version = version
        self.description = description
        self.metadata: Dict[str, str] = meta
        self.queue_group = queue_group
        self.id = new_nuid()
        self.started_ns = time.time_ns()
        self._dispatcher = dispatcher
        self._schemas: Dict[str, Dict[str, str]] = {}

    # -- the three responses (any thread) -----------------------------------

    def _identity(self, kind: str) -> Dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": dict(self.metadata),
        }

    def ping_response(self) -> Dict[str, Any]:
        """The ``io.nats.micro.v1.ping_response`` object."""
        return self._identity(PING_RESPONSE_TYPE)

    def info_response(self, schemas: bool = True) -> Dict[str, Any]:
        """The ``io.nats.micro.v1.info_response`` object (``schemas=False``: endpoint metadata empty)."""
        response = self._identity(INFO_RESPONSE_TYPE)
        response["description"] = self.description
        response["endpoints"] = [
            {
                "name": route.name,
                "subject": route.subject,
                "queue_group": self.queue_group,
                "metadata": self.endpoint_metadata(route) if schemas else {},
            }
            for route in self._dispatcher.routes
        ]
        return response

    def prepare(self) -> None:
        """Build every endpoint's metadata now, on the caller's thread (not the loop's)."""
        for route in self._dispatcher.routes:
            self.endpoint_metadata(route)

    def endpoint_metadata(self, route: HandlerRoute) -> Dict[str, str]:
        """An endpoint's metadata: its request and result JSON Schemas, as JSON text.

        ``request_schema`` describes the request envelope's ``payload``,
        ``response_schema`` a success reply's ``payload`` (see
        :mod:`natsbus.schema`); ADR-32 metadata maps strings to strings.
        Made once per endpoint; a type the generator cannot read gets no
        schema keys (logged), never a failed start.
        """
        cached = self._schemas.get(route.subject)
        if cached is None:
            from . import schema  # loaded by serving pools only

            try:
                cached = {
                    schema.REQUEST_SCHEMA_KEY: codec.dumps(schema.json_schema(route.message_class)).decode(),
                    schema.RESPONSE_SCHEMA_KEY: codec.dumps(
                        schema.result_schema(route.message_class, route.call)
                    ).decode(),
                }
            except Exception:
                logger.warning("no JSON Schema for %s: its endpoint metadata has none", route.subject, exc_info=True)
                cached = {}
            self._schemas[route.subject] = cached
        return dict(cached)

    def stats_response(self) -> Dict[str, Any]:
        """The ``io.nats.micro.v1.stats_response`` object, counters read under the stats lock."""
        response = self._identity(STATS_RESPONSE_TYPE)
        response["started"] = format_rfc3339(self.started_ns)
        endpoints = []
        for route, stats in self._dispatcher.snapshot():  # a consistent snapshot of each route's counters
            endpoints.append(
                {
                    "name": route.name,
                    "subject": route.subject,
                    "queue_group": self.queue_group,
                    "num_requests": stats.num_requests,
                    "num_errors": stats.num_errors,
                    "last_error": stats.last_error,
                    "processing_time": stats.processing_time_ns,
                    "average_processing_time": stats.average_processing_time_ns,
                    "data": None,
                }
            )
        response["endpoints"] = endpoints
        return response

    # -- subscriptions (loop thread) ------------------------------------------

    async def subscribe(self, transport: Transport) -> List[Any]:
        """Subscribe the nine discovery subjects (no queue group); return the subscriptions.

        The service counts as started from here.
        """
        self.started_ns = time.time_ns()
        # PING and INFO cannot change once the pool runs (no handlers are
        # added after start), so their bodies are encoded once.
        ping = codec.dumps(self.ping_response())
        info = codec.dumps(self.info_response())
        if len(info) > transport.max_payload:  # an INFO nobody could receive: without the schemas, then
            logger.warning(
                "%s: INFO with the JSON Schemas is %d bytes, over the server's max payload of %d; "
                "it is sent without them",
                self.name,
                len(info),
                transport.max_payload,
            )
            info = codec.dumps(self.info_response(schemas=False))
        builders: Dict[str, Callable[[], bytes]] = {
            "PING": lambda: ping,
            "INFO": lambda: info,
            "STATS": lambda: codec.dumps(self.stats_response()),
        }
        subs = []
        for verb in VERBS:
            handler = self._responder(transport, verb, builders[verb])
            for subject in (
                control_subject(verb),
                control_subject(verb, self.name),
                control_subject(verb, self.name, self.id),
            ):
                subs.append(await transport.subscribe(subject, "", handler))
        return subs

    def _responder(self, transport: Transport, verb: str, build: Callable[[], bytes]) -> Handler:
        def respond(subject: str, reply: str, data: bytes, headers: RawHeaders) -> None:
            # Loop thread: a few counters into a small JSON object, then queue it.
            if not reply:
                return
            try:
                transport.publish(reply, build())
            except BusClosedError:
                pass  # stopping; the asker gets no answer from this instance
            except Exception:  # never let a discovery request break the loop
                logger.exception("answering %s for %s failed", verb, self.name)

        return respond
