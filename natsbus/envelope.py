"""Request and response envelopes, exactly as ``spec/nats-cqrs-pattern.md``.

A command request on the wire::

    {"command_type": "CreateUserCommand", "command_id": "cmd-<uuid4>",
     "service_id": "user-service", "timestamp": "2025-11-29T12:34:56Z",
     "payload": {...}}

and its response has exactly ``success``, ``command_id``, ``timestamp``,
``payload`` and ``error``. Queries use ``query_type`` / ``query_id`` and the
``qry-`` prefix. The functions here mirror the spec's ``CqrsRequestHandler``
helpers; the decoders validate and say precisely what is wrong.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Dict, Optional, Tuple, Type

import attrs

from . import codec
from .errors import (
    EnvelopeError,
    HandlerError,
    InvalidRequestError,
    ServiceError,
    error_class_for_code,
)
from .messages import Kind, command_subject, query_subject

__all__ = [
    "INVALID_REQUEST_PREFIX",
    "RequestEnvelope",
    "ResponseEnvelope",
    "command_subject",
    "create_request_envelope",
    "create_response_envelope",
    "decode_request",
    "decode_response",
    "new_id",
    "query_subject",
    "utc_timestamp",
]

#: The spec's prefix for replies to requests that could not be read.
INVALID_REQUEST_PREFIX = "Invalid request format: "

_TYPE_KEY = {Kind.COMMAND: "command_type", Kind.QUERY: "query_type"}
_ID_KEY = {Kind.COMMAND: "command_id", Kind.QUERY: "query_id"}

_last_second = -1
_last_stamp = ""


def utc_timestamp(now: Optional[float] = None) -> str:
    """RFC 3339 UTC with second precision and a ``Z``: ``2025-11-29T12:34:56Z``."""
    global _last_second, _last_stamp
    second = int(time.time() if now is None else now)
    if second != _last_second:
        # Two threads may both format the same second; both results are equal.
        _last_stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        _last_second = second
    return _last_stamp


# natsbus's own generator: user code calling random.seed() must not make ids
# repeat (idempotency stores and JetStream dedup key on them). Seeded from
# os.urandom, and again in every forked child.
_rng = random.Random()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rng.seed)
_getrandbits = _rng.getrandbits

_VERSION_4 = (0x4 << 76) | (0x2 << 62)  # RFC 4122: version 4, variant 10
_CLEAR = ~((0xF << 76) | (0x3 << 62))


def new_id(kind: Kind) -> str:
    """A fresh ``cmd-<uuid4>`` or ``qry-<uuid4>`` id.

    The 122 random bits come from a private ``random.Random`` seeded from
    ``os.urandom`` (and re-seeded in forked children) rather than from
    ``os.urandom`` per id: ids must be unique, not secret, and this is three
    times faster on the hot path.
    """
    h = "%032x" % ((_getrandbits(128) & _CLEAR) | _VERSION_4)
    return f"{kind.id_prefix}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def kind_of_id(message_id: str) -> Kind:
    """The kind an id's prefix says (``qry-`` is a query; anything else a command)."""
    return Kind.QUERY if message_id.startswith("qry-") else Kind.COMMAND


@attrs.frozen
class RequestEnvelope:
    """A command or query request.

    Attributes:
        kind: Command or query.
        message_type: ``command_type`` / ``query_type``, e.g. ``CreateUserCommand``.
        id: ``command_id`` / ``query_id``.
        service_id: The caller's service id.
        timestamp: RFC 3339 UTC.
        payload: The message as JSON data.
    """

    kind: Kind
    message_type: str
    id: str
    service_id: str
    timestamp: str
    payload: Any

    @property
    def subject(self) -> str:
        """The subject this request is sent to."""
        if self.kind is Kind.COMMAND:
            return command_subject(self.message_type)
        return query_subject(self.message_type)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object, with the spec's keys in the spec's order."""
        return {
            _TYPE_KEY[self.kind]: self.message_type,
            _ID_KEY[self.kind]: self.id,
            "service_id": self.service_id,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }

    def to_bytes(self) -> bytes:
        """The envelope as JSON bytes."""
        return codec.dumps(self.to_dict())


@attrs.frozen
class ResponseEnvelope:
    """A command or query response.

    Attributes:
        kind: Command or query (decides ``command_id`` vs ``query_id``).
        success: Whether the handler succeeded.
        id: The request's id.
        timestamp: RFC 3339 UTC.
        payload: The result as JSON data, or ``None``.
        error: The error text when ``success`` is false, else ``None``.
    """

    kind: Kind
    success: bool
    id: str
    timestamp: str
    payload: Any = None
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object: exactly success, id, timestamp, payload, error."""
        return {
            "success": self.success,
            _ID_KEY[self.kind]: self.id,
            "timestamp": self.timestamp,
            "payload": self.payload,
            "error": self.error,
        }

    def to_bytes(self) -> bytes:
        """The envelope as JSON bytes."""
        return codec.dumps(self.to_dict())


def create_request_envelope(
    message_type: str,
    message_id: str,
    service_id: str,
    payload: Any,
    *,
    kind: Optional[Kind] = None,
    timestamp: Optional[str] = None,
) -> RequestEnvelope:
    """Build a request envelope, as the spec's ``create_request_envelope``.

    Args:
        message_type: E.g. ``CreateUserCommand``.
        message_id: E.g. ``cmd-123``; its prefix gives the kind unless
            ``kind`` is given.
        service_id: The caller's service id.
        payload: JSON data (already unstructured).
        kind: Command or query.
        timestamp: Defaults to now.
    """
    return RequestEnvelope(
        kind=kind or kind_of_id(message_id),
        message_type=message_type,
        id=message_id,
        service_id=service_id,
        timestamp=timestamp or utc_timestamp(),
        payload=payload,
    )


def create_response_envelope(
    success: bool,
    message_id: str,
    payload: Any = None,
    error: Optional[str] = None,
    *,
    kind: Optional[Kind] = None,
    timestamp: Optional[str] = None,
) -> ResponseEnvelope:
    """Build a response envelope, as the spec's ``create_response_envelope``."""
    return ResponseEnvelope(
        kind=kind or kind_of_id(message_id),
        success=success,
        id=message_id,
        timestamp=timestamp or utc_timestamp(),
        payload=payload,
        error=error,
    )


def _load_object(data: bytes, what: str) -> Dict[str, Any]:
    try:
        obj = codec.loads(data)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, UnicodeDecodeError) or "utf-8" in str(exc).lower():
            raise EnvelopeError(f"{what} is not valid UTF-8") from exc
        raise EnvelopeError(f"{what} is not valid JSON") from exc
    except RecursionError as exc:
        raise EnvelopeError(f"{what} is nested too deeply") from exc
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{what} must be a JSON object, got {codec.json_label(obj)}")
    return obj


def _str_field(obj: Dict[str, Any], key: str, what: str) -> str:
    if key not in obj:
        raise EnvelopeError(f"expected '{key}' field in {what}")
    value = obj[key]
    if not isinstance(value, str):
        raise EnvelopeError(f"field '{key}' in {what} must be a string, got {codec.json_label(value)}")
    return value


def decode_request(data: bytes, kind: Optional[Kind] = None) -> RequestEnvelope:
    """Parse and validate request-envelope bytes.

    Args:
        data: The message body.
        kind: The kind the subject says; when ``None``, taken from which
            of ``command_type`` / ``query_type`` is present.

    Raises:
        EnvelopeError: naming what is wrong (not JSON, not an object, a
            missing or mistyped field).
    """
    obj = _load_object(data, "request")
    if kind is None:
        if "command_type" in obj:
            kind = Kind.COMMAND
        elif "query_type" in obj:
            kind = Kind.QUERY
        else:
            raise EnvelopeError("expected 'command_type' or 'query_type' field in request")
    what = f"{kind.value} request"
    message_type = _str_field(obj, _TYPE_KEY[kind], what)
    message_id = _str_field(obj, _ID_KEY[kind], what)
    service_id = obj.get("service_id", "")
    if not isinstance(service_id, str):
        raise EnvelopeError(f"field 'service_id' in {what} must be a string")
    timestamp = obj.get("timestamp", "")
    if not isinstance(timestamp, str):
        raise EnvelopeError(f"field 'timestamp' in {what} must be a string")
    if "payload" not in obj:
        raise EnvelopeError(f"expected 'payload' field in {what}")
    return _request_envelope(kind, message_type, message_id, service_id, timestamp, obj["payload"])


# RequestEnvelope(...) for decode_request, which every request crosses on a worker
# thread: attrs' frozen __init__ sets each field through object.__setattr__; this
# sets the slots through their descriptors, at a third of the cost. Frozen as ever.
# tests/test_envelope.py checks it builds what RequestEnvelope(...) builds.
_SET_KIND, _SET_TYPE, _SET_ID, _SET_SERVICE, _SET_TIMESTAMP, _SET_PAYLOAD = (
    RequestEnvelope.__dict__[name].__set__
    for name in ("kind", "message_type", "id", "service_id", "timestamp", "payload")
)


def _request_envelope(
    kind: Kind, message_type: str, message_id: str, service_id: str, timestamp: str, payload: Any
) -> RequestEnvelope:
    envelope = object.__new__(RequestEnvelope)
    _SET_KIND(envelope, kind)
    _SET_TYPE(envelope, message_type)
    _SET_ID(envelope, message_id)
    _SET_SERVICE(envelope, service_id)
    _SET_TIMESTAMP(envelope, timestamp)
    _SET_PAYLOAD(envelope, payload)
    return envelope


def peek_id(data: bytes) -> Tuple[Optional[str], Optional[Kind]]:
    """Best effort: the id and kind in possibly-invalid request bytes.

    Used to address an error reply to a request that failed validation.
    """
    try:
        obj = codec.loads(data)
    except Exception:
        return None, None
    if not isinstance(obj, dict):
        return None, None
    for kind in (Kind.COMMAND, Kind.QUERY):
        value = obj.get(_ID_KEY[kind])
        if isinstance(value, str):
            return value, kind
    return None, None


def decode_response(data: bytes, kind: Optional[Kind] = None) -> ResponseEnvelope:
    """Parse and validate response-envelope bytes.

    Raises:
        EnvelopeError: naming what is wrong.
    """
    obj = _load_object(data, "response")
    if kind is None:
        kind = Kind.QUERY if "query_id" in obj else Kind.COMMAND
    what = f"{kind.value} response"
    success = obj.get("success")
    if not isinstance(success, bool):
        if "success" not in obj:
            raise EnvelopeError(f"expected 'success' field in {what}")
        raise EnvelopeError(f"field 'success' in {what} must be a boolean")
    message_id = _str_field(obj, _ID_KEY[kind], what)
    timestamp = obj.get("timestamp", "")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise EnvelopeError(f"field 'error' in {what} must be a string or null")
    return ResponseEnvelope(
        kind=kind,
        success=success,
        id=message_id,
        timestamp=timestamp if isinstance(timestamp, str) else "",
        payload=obj.get("payload"),
        error=error,
    )


# -- error replies: the envelope and the NATS micro headers that go with it ---------------

#: NATS headers of a message (``None`` when there are none).
Headers = Optional[Dict[str, str]]

#: NATS micro headers carrying an error reply's text and code.
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"

#: Headers of a reply to a scatter-gather request (``scatter.queries.{Type}``):
#: the answering instance's id, as it reports it to ``$SRV.PING``, and its service name.
INSTANCE_HEADER = "Natsbus-Instance"
SERVICE_HEADER = "Natsbus-Service"


def header_value(text: str, limit: int = 1024) -> str:
    """``text`` made fit for a NATS header value: one line, at most ``limit`` characters."""
    return " ".join(text.split())[:limit]


def error_reply(kind: Kind, message_id: str, error: ServiceError) -> Tuple[bytes, Headers]:
    """The spec's error envelope for ``error``, with the NATS micro headers."""
    text = error.message
    body = codec.dumps(
        {
            "success": False,
            _ID_KEY[kind]: message_id,
            "timestamp": utc_timestamp(),
            "payload": None,
            "error": text,
        }
    )
    return body, {ERROR_HEADER: header_value(text), ERROR_CODE_HEADER: str(error.code)}


def service_error(envelope: ResponseEnvelope, headers: Headers, subject: str) -> ServiceError:
    """The typed error an error reply stands for.

    The class comes from the ``Nats-Service-Error-Code`` header (every
    natsbus worker sends it). A responder that follows only the wire
    contract sends no headers: then the spec's ``Invalid request format:``
    prefix is the one signal there is, and anything else is a handler error.
    """
    text = envelope.error or "unknown error"
    code = headers.get(ERROR_CODE_HEADER) if headers else None
    if code is not None:
        cls: Type[ServiceError] = error_class_for_code(code)
    elif text.startswith(INVALID_REQUEST_PREFIX):
        cls = InvalidRequestError
    else:
        cls = HandlerError
    return cls(text, subject=subject, envelope=envelope)
