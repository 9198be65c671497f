"""natsbus: blocking CQRS commands and queries over NATS for threaded Python.

The public API lives here. Public modules beyond it (the same list as
:data:`PUBLIC_MODULES`, which the tests check)::

    natsbus.codec                 the JSON converter and its validation texts
    natsbus.config                NatsConfig, tls_context, redact_url, redact_text
    natsbus.contrib.django        the Django app (settings, checks, natsbus_worker)
    natsbus.contrib.django.checks its system checks
    natsbus.contrib.django.views  the health probe views (livez, readyz)
    natsbus.contrib.flask         the Flask extension
    natsbus.cqrs                  CommandBus, QueryBus, the Requester seam, TimeoutArg
    natsbus.discovery             NATS micro discovery (ping, discover, stats)
    natsbus.durable               durable commands on JetStream
    natsbus.envelope              the wire contract's envelopes
    natsbus.health                /livez and /readyz: HealthServer and the checks
    natsbus.idempotency           idempotency stores
    natsbus.metrics               the Prometheus collector, ClientMetrics
    natsbus.middleware            client and handler middleware, tracing
    natsbus.ports                 CommandBusPort, QueryBusPort
    natsbus.pytest_plugin         the pytest fixtures
    natsbus.schema                JSON Schemas of message types, AsyncAPI documents
    natsbus.server                an embedded nats-server
    natsbus.testing               InMemoryBus

Everything else (modules whose name starts with ``_``, and ``bus``,
``dispatch``, ``worker``, ``messages``, ``context``, ``policies``,
``errors``, ``bench``, ``cli``, ``demo``) is reached through the names
here; see ``docs/architecture.rst`` for how the package is layered.
"""

from typing import TYPE_CHECKING, Any, Dict, List

from ._version import __version__
from .bus import Bus, ConnectionState
from .codec import converter
from .config import NatsConfig
from .context import RequestContext, current_request
from .cqrs import DEFAULT, CommandBus, InstanceResult, QueryBus
from .envelope import (
    RequestEnvelope,
    ResponseEnvelope,
    create_request_envelope,
    create_response_envelope,
    decode_request,
    decode_response,
)
from .errors import (
    BusClosedError,
    BusyError,
    ConfigError,
    ConflictError,
    ConnectError,
    DeadlineExceededError,
    EnvelopeError,
    HandlerError,
    IncompatibleSettingsError,
    InvalidRequestError,
    JetStreamError,
    LifecycleError,
    LoopThreadError,
    MessageTypeError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RegistrationError,
    RequestError,
    RequestTimeoutError,
    ResultNotReadyError,
    ServiceError,
    TraceContextError,
    TransportError,
)
from .messages import Command, Kind, Query, command_subject, query_subject, scatter_subject, type_name
from .policies import QueryCache, RetryPolicy

if TYPE_CHECKING:  # imported on first use (below): a client-only process never loads them
    from .discovery import EndpointContract, EndpointInfo, EndpointStatsSnapshot, ServiceInfo, ServicePing, ServiceStats
    from .dispatch import Dispatcher
    from .durable import DeadLetter, DurableConfig
    from .idempotency import IdempotencyStore, KeyValueIdempotencyStore, MemoryIdempotencyStore
    from .metrics import PrometheusCollector
    from .server import NatsCluster, NatsServer
    from .worker import WorkerPool

#: The public modules besides this one (the docstring lists them too).
PUBLIC_MODULES = (
    "natsbus.codec",
    "natsbus.config",
    "natsbus.contrib.django",
    "natsbus.contrib.django.checks",
    "natsbus.contrib.django.views",
    "natsbus.contrib.flask",
    "natsbus.cqrs",
    "natsbus.discovery",
    "natsbus.durable",
    "natsbus.envelope",
    "natsbus.health",
    "natsbus.idempotency",
    "natsbus.metrics",
    "natsbus.middleware",
    "natsbus.ports",
    "natsbus.pytest_plugin",
    "natsbus.schema",
    "natsbus.server",
    "natsbus.testing",
)

#: Public names whose modules load on first use, and where they live.
_LAZY: Dict[str, str] = {
    "EndpointContract": "discovery",
    "EndpointInfo": "discovery",
    "EndpointStatsSnapshot": "discovery",
    "ServiceInfo": "discovery",
    "ServicePing": "discovery",
    "ServiceStats": "discovery",
    "DeadLetter": "durable",
    "DurableConfig": "durable",
    "IdempotencyStore": "idempotency",
    "KeyValueIdempotencyStore": "idempotency",
    "MemoryIdempotencyStore": "idempotency",
    "PrometheusCollector": "metrics",
    "NatsCluster": "server",
    "NatsServer": "server",
    "Dispatcher": "dispatch",
    "WorkerPool": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'natsbus' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Bus",
    "BusClosedError",
    "BusyError",
    "Command",
    "CommandBus",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "ConnectionState",
    "DEFAULT",
    "DeadLetter",
    "DeadlineExceededError",
    "Dispatcher",
    "DurableConfig",
    "EndpointContract",
    "EndpointInfo",
    "EndpointStatsSnapshot",
    "EnvelopeError",
    "HandlerError",
    "IdempotencyStore",
    "IncompatibleSettingsError",
    "InstanceResult",
    "InvalidRequestError",
    "JetStreamError",
    "KeyValueIdempotencyStore",
    "Kind",
    "LifecycleError",
    "LoopThreadError",
    "MemoryIdempotencyStore",
    "MessageTypeError",
    "NatsBusError",
    "NatsCluster",
    "NatsConfig",
    "NatsServer",
    "NoHandlerError",
    "NotConnectedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PrometheusCollector",
    "Query",
    "QueryBus",
    "QueryCache",
    "RegistrationError",
    "RequestContext",
    "RequestEnvelope",
    "RequestError",
    "RequestTimeoutError",
    "ResponseEnvelope",
    "ResultNotReadyError",
    "RetryPolicy",
    "ServiceError",
    "ServiceInfo",
    "ServicePing",
    "ServiceStats",
    "TraceContextError",
    "TransportError",
    "WorkerPool",
    "__version__",
    "command_subject",
    "converter",
    "create_request_envelope",
    "create_response_envelope",
    "current_request",
    "decode_request",
    "decode_response",
    "query_subject",
    "scatter_subject",
    "type_name",
]
