"""The one place nats-py's errors become natsbus's.

Call sites do not catch nats errors themselves; they wrap the call in a
context manager that maps them (as httpx's ``map_httpcore_exceptions()``
does), and say there which errors mean "absent"::

    async def delete_stream(self, name: str) -> bool:
        with mapped(f"delete stream {name}", absent=(jserr.NotFoundError,)):
            return bool(await self._js.delete_stream(name))
        return False  # it did not exist

:func:`mapped` is for JetStream calls (:func:`map_js_error`, the text
starting with what was being done), :func:`mapped_core` for core NATS
calls (:func:`map_error`, the error naming the subject). A plain ``with``
works around ``await``: no async form is needed.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from types import TracebackType
from typing import Callable, Dict, Optional, Tuple, Type

import nats.errors as nerr
import nats.js.errors as jserr

from ..errors import (
    BusClosedError,
    ConfigError,
    ConnectError,
    JetStreamError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    PayloadTooLargeError,
    RequestError,
    TransportError,
)

#: Connect failures that say more than the connection errors that follow them.
TELLING_ERRORS = (
    nerr.AuthorizationError,
    nerr.SecureConnRequiredError,
    nerr.SecureConnWantedError,
    nerr.SecureConnFailedError,
    ssl.SSLError,
)
#: What a server's ``-ERR`` says when it refuses a login (nats-py 2.16
#: raises it as a plain ``nats.errors.Error``; older ones as AuthorizationError).
REFUSED_LOGIN_RE = re.compile(
    r"authorization violation|authentication (?:timeout|expired|revoked)|user authentication|authorization failed",
    re.I,
)


def is_telling(exc: BaseException) -> bool:
    """Whether a connect failure names its cause (a refused login, TLS), whatever class carries it."""
    return isinstance(exc, TELLING_ERRORS) or (isinstance(exc, nerr.Error) and bool(REFUSED_LOGIN_RE.search(str(exc))))


def connect_reason(exc: BaseException) -> str:
    """Why one try to connect failed, in a few words (not yet redacted: see ``redact_text``)."""
    text = str(exc)
    if isinstance(exc, nerr.Error):
        if isinstance(exc, nerr.AuthorizationError):  # nats-py's class for the server's words below
            return "login refused: Authorization Violation"
        text = text.removeprefix("nats: ").strip().strip("'")
        if REFUSED_LOGIN_RE.search(text):
            return f"login refused: {text}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {text}"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return text or type(exc).__name__


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


# Every nats JetStream error class, mapped to the natsbus class raised in
# its place; the most specific entry on the class's MRO wins.
# tests/test_durable.py fails when nats grows a class missing here.
JS_ERROR_MAP: Dict[Type[BaseException], Type[NatsBusError]] = {
    jserr.Error: JetStreamError,
    jserr.APIError: JetStreamError,
    jserr.ServiceUnavailableError: JetStreamError,
    jserr.ServerError: JetStreamError,
    jserr.NotFoundError: JetStreamError,
    jserr.BadRequestError: JetStreamError,
    jserr.ConsumerInvalidResetError: JetStreamError,
    jserr.NoStreamResponseError: JetStreamError,
    jserr.TooManyStalledMsgsError: JetStreamError,
    jserr.FetchTimeoutError: JetStreamError,
    jserr.ConsumerSequenceMismatchError: JetStreamError,
    jserr.BucketNotFoundError: JetStreamError,
    jserr.BadBucketError: JetStreamError,
    jserr.KeyValueError: JetStreamError,
    jserr.KeyDeletedError: JetStreamError,
    jserr.KeyNotFoundError: JetStreamError,
    jserr.KeyWrongLastSequenceError: JetStreamError,
    jserr.NoKeysError: JetStreamError,
    jserr.KeyHistoryTooLargeError: ConfigError,
    jserr.InvalidKeyError: ConfigError,
    jserr.InvalidBucketNameError: ConfigError,
    jserr.InvalidObjectNameError: ConfigError,
    jserr.BadObjectMetaError: JetStreamError,
    jserr.LinkIsABucketError: JetStreamError,
    jserr.DigestMismatchError: JetStreamError,
    jserr.ObjectNotFoundError: JetStreamError,
    jserr.ObjectDeletedError: JetStreamError,
    jserr.ObjectAlreadyExists: JetStreamError,
    jserr.KeyValueLimitMarkerTTLNotSupportedError: JetStreamError,
}


def map_js_error(exc: BaseException, what: str = "") -> NatsBusError:
    """The natsbus error for a nats JetStream (or nats, or timeout) error; chain it with ``from``.

    Args:
        exc: The error raised by nats-py.
        what: What was being done, for the text (e.g. ``publish to durable.commands.X``).
    """
    if isinstance(exc, NatsBusError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, jserr.NoStreamResponseError):
        return JetStreamError(f"{prefix}no JetStream stream answered; is JetStream enabled on the server?", code=503)
    if isinstance(exc, jserr.ServiceUnavailableError):
        return JetStreamError(f"{prefix}JetStream is not available on this server (503)", code=503)
    if isinstance(exc, jserr.Error):
        target: Type[NatsBusError] = JetStreamError
        for klass in type(exc).__mro__:
            if klass in JS_ERROR_MAP:
                target = JS_ERROR_MAP[klass]
                break
        if isinstance(exc, jserr.APIError):
            text = exc.description or type(exc).__name__
            code, err_code = exc.code or 0, exc.err_code or 0
            detail = f"{text} (code {code}, error {err_code})" if code or err_code else text
            if issubclass(target, JetStreamError):
                return target(prefix + detail, code=code, err_code=err_code)
            return target(prefix + detail)
        text = exc.description or type(exc).__name__
        return target(prefix + text)
    if isinstance(exc, (asyncio.TimeoutError, nerr.TimeoutError)):
        return JetStreamError(f"{prefix}JetStream did not answer in time", code=408)
    general = map_error(exc)
    if prefix and type(general) is TransportError:
        return TransportError(prefix + str(general))
    return general


class Mapped:
    """A ``with`` block whose nats errors leave it as natsbus errors (see :func:`mapped`).

    Args:
        to_natsbus: Makes the natsbus error for a caught one.
        catch: The errors to map; any other passes through untouched.
        absent: Caught errors meaning "not there": swallowed, so the code
            after the block runs (and answers ``None``, ``False``, ...).
        absent_if: Decides the same from a caught error itself (a code in it, say).
    """

    __slots__ = ("_absent", "_absent_if", "_catch", "_to_natsbus")

    def __init__(
        self,
        to_natsbus: Callable[[BaseException], NatsBusError],
        catch: Tuple[Type[BaseException], ...],
        absent: Tuple[Type[BaseException], ...] = (),
        absent_if: Optional[Callable[[BaseException], bool]] = None,
    ) -> None:
        self._to_natsbus = to_natsbus
        self._catch = catch
        self._absent = absent
        self._absent_if = absent_if

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool:
        if exc is None:
            return False
        if isinstance(exc, self._absent):
            return True
        if not isinstance(exc, self._catch):
            return False
        if self._absent_if is not None and self._absent_if(exc):
            return True
        raise self._to_natsbus(exc) from exc


def mapped(
    what: str,
    *,
    absent: Tuple[Type[BaseException], ...] = (),
    absent_if: Optional[Callable[[BaseException], bool]] = None,
) -> Mapped:
    """Map the nats (and timeout) errors of a JetStream call with :func:`map_js_error`.

    Args:
        what: What is being done, as the error text starts (``delete stream X``).
        absent: Errors meaning the thing is not there: the block ends
            quietly and the code after it runs.
        absent_if: The same, decided from the error (e.g. its ``err_code``).
    """
    return Mapped(lambda exc: map_js_error(exc, what), (nerr.Error, asyncio.TimeoutError), absent, absent_if)


def mapped_core(subject: str) -> Mapped:
    """Map the nats errors of a core NATS call on ``subject`` with :func:`map_error`.

    Only nats errors: a bare ``asyncio.TimeoutError`` passes through, as
    the callers' own timeouts.
    """
    return Mapped(lambda exc: map_error(exc, subject), (nerr.Error,))
