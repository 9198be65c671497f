"""The one place nats-py's errors become natsbus's."""

from __future__ import annotations

import re
import ssl
from typing import Dict, Type

import nats.errors as nerr

from ..errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    RequestError,
    TransportError,
)

#: Connect failures that say more than the connection errors that follow them.
TELLING_ERRORS = (nerr.AuthorizationError, ssl.SSLError)
#: A permissions violation the server reports, and the subject it names.
PERMISSION_RE = re.compile(r"Permissions Violation for (Publish|Subscription) to \"?([^\"']+)\"?", re.I)


# tests/test_public_api.py fails when nats grows a class missing here.
ERROR_MAP: Dict[Type[BaseException], Type[NatsBusError]] = {
    nerr.TimeoutError: TransportError,
    nerr.NoRespondersError: NoHandlerError,
    nerr.StaleConnectionError: TransportError,
    nerr.OutboundBufferLimitError: NotConnectedError,
    nerr.UnexpectedEOF: TransportError,
    nerr.FlushTimeoutError: TransportError,
    nerr.ConnectionClosedError: BusClosedError,
    nerr.SecureConnRequiredError: ConnectError,
    nerr.SecureConnWantedError: ConnectError,
    nerr.SecureConnFailedError: ConnectError,
    nerr.BadSubscriptionError: TransportError,
    nerr.BadSubjectError: ConfigError,
    nerr.BadHeaderError: ConfigError,
    nerr.SlowConsumerError: TransportError,
    nerr.BadTimeoutError: ConfigError,
    nerr.AuthorizationError: ConnectError,
    nerr.NoServersError: ConnectError,
    nerr.JsonParseError: TransportError,
    nerr.MaxPayloadError: PayloadTooLargeError,
    nerr.DrainTimeoutError: TransportError,
    nerr.ConnectionDrainingError: BusClosedError,
    nerr.ConnectionReconnectingError: NotConnectedError,
    nerr.InvalidUserCredentialsError: ConnectError,
    nerr.InvalidCallbackTypeError: ConfigError,
    nerr.ProtocolError: TransportError,
    nerr.ServerNotInPoolError: ConfigError,
    nerr.NotJSMessageError: TransportError,
    nerr.MsgAlreadyAckdError: TransportError,
    nerr.Error: TransportError,
}


def map_error(exc: BaseException, subject: str = "") -> NatsBusError:
    """The natsbus error for a nats (or OS) error, chained to it by the caller."""
    if isinstance(exc, NatsBusError):
        return exc
    for klass in type(exc).__mro__:
        target = ERROR_MAP.get(klass)
        if target is not None:
            break
    else:
        target = TransportError
    text = str(exc) or type(exc).__name__
    if issubclass(target, RequestError):
        return target(f"{text} (subject {subject})" if subject else text, subject=subject)
    return target(text)
