"""The client side of durable commands: ``send()`` and ``result()``."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from functools import partial
from typing import Any, Dict, Optional, Protocol, Set, Tuple, cast

import attrs

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
from ..policies import RetryPolicy
from .config import API_TIMEOUT, DEFAULT_CONFIG, DurableConfig, check_no_overlap

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
        bus.live_transport().run(_ensure_client_side, js, config, timeout=API_TIMEOUT * 3)
        with _CLIENT_LOCK:
            _CLIENT_READY.setdefault(js, set()).add(config)
    return js


# -- the client side: send, result ---------------------------------------------------------


#: The ack wait of a ``send()`` on a bus whose timeout is ``None`` ("no limit"):
#: nats-py wants a number; about eleven days is as good as none.
NO_ACK_LIMIT = 1e6


@attrs.frozen(kw_only=True)
class _TransientStoreFailure(RetryPolicy):
    """Retry what may pass (no ack, not connected, JetStream unavailable), not a refusal."""

    retry_on: Tuple[type, ...] = (JetStreamError, NotConnectedError, TimeoutError)

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Not a JetStream refusal (a 4xx: limits, a wrong stream), which comes back every time."""
        if isinstance(error, JetStreamError) and error.code not in (0, 408, 503):
            return False
        return super().should_retry(error, attempt)


#: How ``send()`` retries when its CommandBus has no RetryPolicy: three tries
#: on a transient failure (a JetStream leader election, a reconnect).
SEND_RETRY = _TransientStoreFailure(attempts=3, backoff=0.1, multiplier=2.0)


class _Sender(Protocol):
    """What ``send()`` and ``result()`` read of the CommandBus they are given."""

    @property
    def bus(self) -> object: ...  # a natsbus.Bus
    @property
    def service_id(self) -> str: ...
    @property
    def timeout(self) -> Optional[float]: ...
    @property
    def retry(self) -> Optional[RetryPolicy]: ...


def _connection_of(commands: _Sender, what: str) -> Connection:
    bus = commands.bus
    if not callable(getattr(bus, "live_transport", None)):
        raise ConfigError(
            f"{what} stores commands in JetStream: it needs a natsbus.Bus connected to NATS, not {type(bus).__name__}"
        )
    return cast(Connection, bus)


def send(
    commands: _Sender,
    command: Any,
    *,
    command_id: Optional[str] = None,
    config: Optional[DurableConfig] = None,
) -> str:
    """Store ``command`` in JetStream for a durable worker; see :meth:`natsbus.CommandBus.send`."""
    connection = _connection_of(commands, "send()")
    return send_on(connection, commands.service_id, commands.timeout, commands.retry, command, command_id, config)


def send_on(
    connection: Connection,
    service_id: str,
    timeout: Optional[float],
    retry: Optional[RetryPolicy],
    command: Any,
    command_id: Optional[str] = None,
    config: Optional[DurableConfig] = None,
) -> str:
    """:func:`send` with the CommandBus's settings spelled out.

    Args:
        timeout: Seconds to wait for JetStream's ack, per try (``None``: no limit).
        retry: How to retry a failed store (default :data:`SEND_RETRY`); the
            ``command_id`` (the ``Nats-Msg-Id``) stays the same, so a store
            whose ack was lost is not stored twice.
    """
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
            "service_id": service_id,
            "timestamp": utc_timestamp(),
            "payload": codec.unstructure(command),
        }
    )
    transport = connection.live_transport()
    if len(body) > transport.max_payload:
        raise PayloadTooLargeError(
            f"command to {subject} is {len(body)} bytes, over the server's max payload of "
            f"{transport.max_payload} bytes",
            subject=subject,
            size=len(body),
            limit=transport.max_payload,
        )
    js = _client(connection, cfg)
    ack_wait = NO_ACK_LIMIT if timeout is None else timeout
    policy = retry if retry is not None else SEND_RETRY
    attempt = 0
    while True:
        try:
            publish = partial(js.publish, subject, body, msg_id=cid, stream=cfg.stream, timeout=ack_wait)
            ack = transport.run(publish, timeout=ack_wait + 1)
            break
        except (NatsBusError, TimeoutError) as exc:
            # Not stored, or stored and the ack lost: the same Nats-Msg-Id makes a retry safe.
            error: NatsBusError = (
                exc
                if isinstance(exc, NatsBusError)
                else JetStreamError(f"publish to {subject}: no ack from JetStream within {ack_wait:g}s")
            )
            if not policy.should_retry(error, attempt):
                if error is exc:
                    raise
                raise error from exc
            delay = policy.delay(attempt)
            attempt += 1
            logger.info("send %s %s: %s; try %d in %.2fs", subject, cid, error, attempt + 1, delay)
            time.sleep(delay)
    if ack.duplicate:
        logger.info("send %s %s: already stored; JetStream dropped this copy", subject, cid)
    return cid


def result(
    commands: _Sender,
    command_id: str,
    *,
    wait: float = 0.0,
    returns: Any = None,
    config: Optional[DurableConfig] = None,
) -> Any:
    """The result of a command sent with ``send()``; see :meth:`natsbus.CommandBus.result`."""
    return result_on(_connection_of(commands, "result()"), command_id, wait, returns, config)


def result_on(
    connection: Connection,
    command_id: str,
    wait: float = 0.0,
    returns: Any = None,
    config: Optional[DurableConfig] = None,
) -> Any:
    """:func:`result` on a connection."""
    cfg = config or DEFAULT_CONFIG
    if wait < 0:
        raise ConfigError(f"wait must be >= 0 seconds, got {wait!r}")
    js = jetstream_for(connection)
    transport = connection.live_transport()
    key = record_key(command_id)
    deadline = time.monotonic() + wait
    pause = 0.02
    while True:
        entry = transport.run(js.kv_get, cfg.results_bucket, key, timeout=API_TIMEOUT)
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
