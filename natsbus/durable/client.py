"""The client side of durable commands: ``send()`` and ``result()``."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Dict, Optional, Set

from .. import codec
from .._records import read_record, record_key, record_reply
from .._transport.connection import Connection
from .._transport.jetstream import JetStream, jetstream_for
from ..envelope import (
    decode_response,
    new_id,
    service_error,
    utc_timestamp,
)
from ..errors import (
    ConfigError,
    EnvelopeError,
    JetStreamError,
    MessageTypeError,
    NatsBusError,
    NotConnectedError,
    PayloadTooLargeError,
    ResultNotReadyError,
)
from ..messages import Kind, ensure_message_class, message_kind, type_name
from .config import API_TIMEOUT, DEFAULT_CONFIG, DurableConfig, check_no_overlap

if TYPE_CHECKING:
    from ..cqrs import CommandBus

logger = logging.getLogger("natsbus.durable")


async def _ensure_client_side(js: JetStream, config: DurableConfig) -> None:
    await check_no_overlap(js)
    await config.commands_stream().ensure(js)


_CLIENT_READY: weakref.WeakKeyDictionary[JetStream, Set[DurableConfig]] = weakref.WeakKeyDictionary()
_CLIENT_LOCK = threading.Lock()


def _client(bus: Connection, config: DurableConfig) -> JetStream:
    """The bus's JetStream, with the commands stream checked once per connection and config."""
    js = jetstream_for(bus)
    with _CLIENT_LOCK:
        ready = config in _CLIENT_READY.get(js, set())
    if not ready:
        bus.live_transport().run(lambda: _ensure_client_side(js, config), API_TIMEOUT * 3)
        with _CLIENT_LOCK:
            _CLIENT_READY.setdefault(js, set()).add(config)
    return js


# -- the client side: send, result ---------------------------------------------------------


def send(
    commands: CommandBus,
    command: Any,
    *,
    command_id: Optional[str] = None,
    config: Optional[DurableConfig] = None,
) -> str:
    """Store ``command`` in JetStream for a durable worker; see :meth:`natsbus.CommandBus.send`."""
    cfg = config or DEFAULT_CONFIG
    cls = type(command)
    ensure_message_class(cls)
    if message_kind(cls) is Kind.QUERY:
        raise MessageTypeError(f"{cls.__name__} is a query; only commands can be sent durably")
    if command_id is not None and (not isinstance(command_id, str) or not command_id):
        raise ConfigError(f"command_id must be a non-empty string, got {command_id!r}")
    name = type_name(cls)
    subject = cfg.command_subject(name)
    cid = command_id or new_id(Kind.COMMAND)
    body = codec.dumps(
        {
            "command_type": name,
            "command_id": cid,
            "service_id": commands.service_id,
            "timestamp": utc_timestamp(),
            "payload": codec.unstructure(command),
        }
    )
    bus = commands.bus
    if len(body) > bus.max_payload:
        raise PayloadTooLargeError(
            f"command to {subject} is {len(body)} bytes, over the server's max payload of {bus.max_payload} bytes",
            subject=subject,
            size=len(body),
            limit=bus.max_payload,
        )
    js = _client(bus, cfg)
    timeout = commands.timeout or API_TIMEOUT
    for attempt in range(3):
        try:
            ack = bus.live_transport().run(
                lambda: js.publish(subject, body, msg_id=cid, stream=cfg.stream, timeout=timeout), timeout + 1
            )
            break
        except (JetStreamError, NotConnectedError, TimeoutError) as exc:
            # Not stored, or stored and the ack lost: the same Nats-Msg-Id makes a retry safe.
            if attempt == 2 or (isinstance(exc, JetStreamError) and exc.code not in (408, 503)):
                if isinstance(exc, NatsBusError):
                    raise
                raise JetStreamError(f"publish to {subject}: no ack from JetStream within {timeout:g}s") from exc
            logger.info("send %s %s: %s; trying again", subject, cid, exc)
            time.sleep(0.1 * (attempt + 1))  # a JetStream leader election or reconnect takes a moment
    if ack.duplicate:
        logger.info("send %s %s: already stored; JetStream dropped this copy", subject, cid)
    return cid


def result(
    commands: CommandBus,
    command_id: str,
    *,
    wait: float = 0.0,
    returns: Any = None,
    config: Optional[DurableConfig] = None,
) -> Any:
    """The result of a command sent with ``send()``; see :meth:`natsbus.CommandBus.result`."""
    cfg = config or DEFAULT_CONFIG
    if wait < 0:
        raise ConfigError(f"wait must be >= 0 seconds, got {wait!r}")
    bus = commands.bus
    js = jetstream_for(bus)
    key = record_key(command_id)
    deadline = time.monotonic() + wait
    pause = 0.02
    while True:
        entry = bus.live_transport().run(lambda: js.kv_get(cfg.results_bucket, key), API_TIMEOUT)
        record = read_record(entry.value, command_id) if entry is not None else None
        if record is not None and record.get("state") == "done":
            return _decode_result(record, command_id, returns)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ResultNotReadyError(
                f"Command result not available after {round(wait * 1000)}ms: {command_id}",
                command_id=command_id,
                wait=wait,
            )
        time.sleep(min(pause, left))  # polling the bucket; a watch per call would cost a consumer
        pause = min(pause * 2, 0.25)


def _decode_result(record: Dict[str, Any], command_id: str, returns: Any) -> Any:
    body, headers = record_reply(record)
    subject = str(record.get("subject") or "")
    try:
        envelope = decode_response(body, Kind.COMMAND)
    except EnvelopeError as exc:
        raise EnvelopeError(f"invalid stored response for {command_id}: {exc}") from None
    if envelope.id != command_id:
        raise EnvelopeError(f"stored response answers {envelope.id!r}, not {command_id!r}")
    if not envelope.success:
        raise service_error(envelope, headers, subject)
    if returns is None or envelope.payload is None:
        return envelope.payload
    try:
        return codec.structure(envelope.payload, returns)
    except ValueError as exc:
        raise EnvelopeError(f"stored result of {command_id} does not fit {returns}: {exc}") from None
