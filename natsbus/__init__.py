"""natsbus: blocking CQRS commands and queries over NATS for threaded Python.

The public API lives here; everything else is an implementation detail
unless its module says otherwise (``natsbus.server``, ``natsbus.envelope``,
``natsbus.codec``, ``natsbus.discovery``, ``natsbus.metrics``,
``natsbus.middleware``, ``natsbus.durable``, ``natsbus.idempotency`` are public modules too).
"""

from .bus import DEFAULT, Bus, CommandBus, QueryBus
from .codec import converter
from .config import NatsConfig
from .context import RequestContext, current_request
from .discovery import EndpointInfo, EndpointStatsSnapshot, ServiceInfo, ServicePing, ServiceStats
from .durable import DeadLetter, DurableConfig
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
from .idempotency import IdempotencyStore, KeyValueIdempotencyStore, MemoryIdempotencyStore
from .messages import Command, Kind, Query, command_subject, query_subject, type_name
from .metrics import PrometheusCollector
from .policies import QueryCache, RetryPolicy
from .server import NatsCluster, NatsServer
from .worker import Dispatcher, WorkerPool

__version__ = "0.1.0"

__all__ = [
    "Bus",
    "BusClosedError",
    "BusyError",
    "Command",
    "CommandBus",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "DEFAULT",
    "DeadLetter",
    "DeadlineExceededError",
    "Dispatcher",
    "DurableConfig",
    "EndpointInfo",
    "EndpointStatsSnapshot",
    "EnvelopeError",
    "HandlerError",
    "IdempotencyStore",
    "IncompatibleSettingsError",
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
    "type_name",
]
