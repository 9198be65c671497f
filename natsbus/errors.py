"""Every exception natsbus raises.

One root, :class:`NatsBusError`; catch it to catch anything the library
raises. Where an error meets a builtin's contract it is also that builtin
(a timeout is also a :class:`TimeoutError`), so generic code keeps working::

    NatsBusError
    ├── ConfigError (ValueError)            bad configuration or arguments
    │   └── IncompatibleSettingsError       an existing stream, consumer or bucket differs
    ├── RegistrationError (ValueError)      a handler cannot be registered
    ├── MessageTypeError (TypeError)        not a message class natsbus can send
    ├── LifecycleError (RuntimeError)
    │   ├── BusClosedError                  the Bus or WorkerPool is closed
    │   └── LoopThreadError                 a blocking call from the loop thread
    ├── TransportError                      the connection to NATS
    │   ├── ConnectError (ConnectionError)  could not connect; names each URL and why
    │   │   └── NotConnectedError           not connected now: nothing was sent
    │   └── JetStreamError                  a JetStream call failed (no JetStream, ...)
    ├── EnvelopeError (ValueError)          bytes that are not a valid envelope
    ├── TraceContextError (ValueError)      a malformed W3C ``traceparent``
    ├── ResultNotReadyError (TimeoutError)  no stored result for a sent command yet
    └── RequestError                        one request failed; has ``.subject``
        ├── RequestTimeoutError (TimeoutError)
        ├── NoHandlerError                  nobody subscribes the subject
        ├── PayloadTooLargeError (ValueError)
        ├── PermissionDeniedError (PermissionError)
        └── ServiceError                    the service answered success=false
            ├── InvalidRequestError         400 "Invalid request format: ..."
            ├── NotFoundError               404
            ├── ConflictError               409
            ├── HandlerError                500 (any other handler failure)
            ├── BusyError                   503 the pool was full, or the command is
            │                               still running elsewhere; retry later
            └── DeadlineExceededError       504 (also a TimeoutError)

Handlers raise :class:`ServiceError` subclasses (or any exception) to answer
with an error envelope; the caller then gets the class matching the code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Type

if TYPE_CHECKING:
    from .envelope import ResponseEnvelope

__all__ = [
    "BusClosedError",
    "BusyError",
    "ConfigError",
    "ConflictError",
    "ConnectError",
    "DeadlineExceededError",
    "EnvelopeError",
    "HandlerError",
    "IncompatibleSettingsError",
    "InvalidRequestError",
    "JetStreamError",
    "LifecycleError",
    "LoopThreadError",
    "MessageTypeError",
    "NatsBusError",
    "NoHandlerError",
    "NotConnectedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RegistrationError",
    "RequestError",
    "RequestTimeoutError",
    "ResultNotReadyError",
    "ServiceError",
    "TraceContextError",
    "TransportError",
    "error_class_for_code",
]


class NatsBusError(Exception):
    """The root of every exception natsbus raises."""


class ConfigError(NatsBusError, ValueError):
    """A configuration value or argument is invalid."""


class IncompatibleSettingsError(ConfigError):
    """A stream, consumer or bucket exists with settings natsbus cannot use.

    natsbus creates JetStream resources with explicit settings and reuses
    them when they match; it never changes one that exists.

    Attributes:
        resource: What differs, e.g. ``stream NATSBUS_COMMANDS``.
        setting: The setting that differs, e.g. ``retention``.
        existing: Its value on the server.
        wanted: The value natsbus is configured with.
    """

    def __init__(self, resource: str, setting: str, existing: Any, wanted: Any) -> None:
        super().__init__(
            f"{resource} exists with {setting}={existing!r}, but natsbus is configured with "
            f"{setting}={wanted!r}; change the configuration to match, or delete or edit the {resource.split()[0]}"
        )
        self.resource = resource
        self.setting = setting
        self.existing = existing
        self.wanted = wanted


class RegistrationError(NatsBusError, ValueError):
    """A handler cannot be registered (duplicate type, no message type, ...)."""


class MessageTypeError(NatsBusError, TypeError):
    """An object is not a message natsbus can send (not an attrs class)."""


class LifecycleError(NatsBusError, RuntimeError):
    """An object was used in a state that does not allow it."""


class BusClosedError(LifecycleError):
    """The Bus or WorkerPool is closed, or was closed while a call waited."""


class LoopThreadError(LifecycleError):
    """A blocking natsbus call was made on the Bus's own event-loop thread.

    It would deadlock: the call waits for the loop, and the loop waits for
    the call. Use a worker thread, or the loop's own async APIs.
    """


class TransportError(NatsBusError):
    """The connection to NATS failed."""


class ConnectError(TransportError, ConnectionError):
    """Could not connect to any of ``servers``; the text names each and its reason.

    Attributes:
        servers: The URLs that were tried (any password in them as ``***``).
    """

    def __init__(self, message: str, servers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.servers = servers


class NotConnectedError(ConnectError):
    """The Bus is not connected now, and its reconnect grace passed: nothing was sent.

    Raised by a call made while the Bus is reconnecting (or, with
    ``connect_in_background``, has not connected yet) once the call's
    ``reconnect_grace`` passed without a connection. The request never
    left the process, so it is always safe to retry.
    """


class JetStreamError(TransportError):
    """A JetStream call failed: JetStream is off, a stream is missing, an API error.

    Attributes:
        code: The API error's HTTP-like status (e.g. 404, 503), or 0.
        err_code: The server's JetStream error code (e.g. 10058), or 0.
    """

    def __init__(self, message: str, *, code: int = 0, err_code: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.err_code = err_code


class EnvelopeError(NatsBusError, ValueError):
    """Bytes are not a valid request or response envelope; says what is wrong."""


class TraceContextError(NatsBusError, ValueError):
    """A ``traceparent`` value is not a valid W3C trace context; says what is wrong.

    Raised only by :meth:`natsbus.middleware.TraceContext.parse`; the
    middleware itself ignores an invalid header, as the W3C spec asks.
    """


class ResultNotReadyError(NatsBusError, TimeoutError):
    """No result is stored for a command sent with ``CommandBus.send()`` (yet).

    It may still be waiting for a worker, running, or retried after a
    failure; or its result expired, or the id was never sent.

    Attributes:
        command_id: The command's id.
        wait: The seconds waited.
    """

    def __init__(self, message: str, *, command_id: str = "", wait: float = 0.0) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.wait = wait


class RequestError(NatsBusError):
    """A single command or query failed.

    Attributes:
        subject: The NATS subject the request was sent to.
    """

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.subject = subject

    @property
    def message(self) -> str:
        """The error text, without the exception class."""
        return str(self.args[0]) if self.args else ""


class RequestTimeoutError(RequestError, TimeoutError):
    """No reply arrived in time.

    The text is the spec's: ``Command request timeout after 5000ms``.

    Attributes:
        timeout: The timeout in seconds.
    """

    def __init__(self, message: str, *, subject: str = "", timeout: Optional[float] = None) -> None:
        super().__init__(message, subject=subject)
        self.timeout = timeout


class NoHandlerError(RequestError):
    """Nobody subscribes the subject: ``No handler available for commands.X``.

    Raised as soon as NATS reports that there are no responders, not after
    the timeout.
    """


class PayloadTooLargeError(RequestError, ValueError):
    """The encoded request (or reply) exceeds the server's max payload.

    Attributes:
        size: The encoded size in bytes.
        limit: The server's limit in bytes.
    """

    def __init__(self, message: str, *, subject: str = "", size: int = 0, limit: int = 0) -> None:
        super().__init__(message, subject=subject)
        self.size = size
        self.limit = limit


class PermissionDeniedError(RequestError, PermissionError):
    """The server refused to let this connection publish or subscribe a subject."""


class ServiceError(RequestError):
    """The service answered with ``success: false``.

    Handlers may raise this (or a subclass) to answer with an error envelope
    carrying the subclass's code; the caller gets the matching subclass.

    Attributes:
        code: The NATS micro error code (400, 404, 409, 500, 503, 504).
        envelope: The response envelope, on the caller's side; ``None`` when
            the error was raised inside a handler.
    """

    code: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        subject: str = "",
        envelope: Optional[ResponseEnvelope] = None,
    ) -> None:
        super().__init__(message, subject=subject)
        self.envelope = envelope


class InvalidRequestError(ServiceError):
    """The service could not read the request: ``Invalid request format: ...``."""

    code = 400


class NotFoundError(ServiceError):
    """The thing the request names does not exist."""

    code = 404


class ConflictError(ServiceError):
    """The request conflicts with the current state (e.g. a duplicate)."""

    code = 409


class HandlerError(ServiceError):
    """The handler failed for any other reason."""

    code = 500


class BusyError(ServiceError):
    """The worker pool was full and refused the request at once.

    Another instance in the queue group may have room: retry with backoff.
    Also the answer to a repeated ``command_id`` whose first request is
    still running past the wait (see :mod:`natsbus.idempotency`).
    """

    code = 503


class DeadlineExceededError(ServiceError, TimeoutError):
    """The handler ran past its time limit, or the caller's deadline passed."""

    code = 504


_BY_CODE: Dict[int, Type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidRequestError,
        NotFoundError,
        ConflictError,
        HandlerError,
        BusyError,
        DeadlineExceededError,
    )
}


def error_class_for_code(code: Any) -> Type[ServiceError]:
    """The :class:`ServiceError` subclass for a NATS micro error code.

    Args:
        code: An int or numeric string; anything unknown maps to ServiceError.

    Returns:
        The matching class, or :class:`ServiceError` itself.
    """
    try:
        return _BY_CODE.get(int(code), ServiceError)
    except (TypeError, ValueError):
        return ServiceError
