"""Looking into durable commands: what waits, what was dead-lettered, and replaying it."""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple, Union

import attrs

from .._records import record_key
from .._transport.connection import Connection
from .._transport.jetstream import ConsumerState, StoredMessage, jetstream_for
from ..envelope import (
    peek_id,
)
from ..errors import (
    JetStreamError,
)
from .config import (
    API_TIMEOUT,
    COMMAND_ID_HEADER,
    DEFAULT_CONFIG,
    DELIVERIES_HEADER,
    ERROR_CODE_TEXT_HEADER,
    ERROR_TEXT_HEADER,
    FAILED_AT_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    SERVICE_HEADER,
    DurableConfig,
)

logger = logging.getLogger("natsbus.durable")


@attrs.frozen
class StoredCommand:
    """A command stored in the commands stream and not yet acknowledged.

    Attributes:
        seq: Its stream sequence.
        subject: ``durable.commands.{Type}``.
        command_type: The type name.
        command_id: Its id.
        stored_at: When JetStream stored it (RFC 3339).
        data: The request envelope's bytes.
    """

    seq: int
    subject: str
    command_type: str
    command_id: str
    stored_at: str
    data: bytes


@attrs.frozen
class PendingCommands:
    """What waits in the commands stream (``natsbus durable pending``).

    Attributes:
        stream: The stream's name.
        exists: Whether the stream exists (nothing was ever sent otherwise).
        messages: Messages in the stream (with ``workqueue`` retention:
            commands not yet acknowledged).
        consumers: Each service's consumer and its counts.
        commands: The first pending commands, oldest first.
    """

    stream: str
    exists: bool
    messages: int
    consumers: Tuple[ConsumerState, ...]
    commands: Tuple[StoredCommand, ...]


@attrs.frozen
class DeadLetter:
    """A command that failed ``max_deliveries`` times.

    Attributes:
        seq: Its sequence in the dead-letter stream (what ``replay`` takes).
        command_type: The type name.
        command_id: Its id.
        error: The last error text.
        error_code: The last error code (e.g. ``"500"``).
        deliveries: How many times it was delivered.
        service: The service that gave up on it.
        failed_at: When (RFC 3339).
        original_subject: Where it was stored.
        data: The request envelope's bytes.
    """

    seq: int
    command_type: str
    command_id: str
    error: str
    error_code: str
    deliveries: int
    service: str
    failed_at: str
    original_subject: str
    data: bytes

    @classmethod
    def from_message(cls, msg: StoredMessage, config: DurableConfig) -> DeadLetter:
        """Read a message of the dead-letter stream."""
        headers = msg.headers
        try:
            deliveries = int(headers.get(DELIVERIES_HEADER, "0"))
        except ValueError:
            deliveries = 0
        return cls(
            seq=msg.seq,
            command_type=msg.subject[len(config.dead_letter_prefix) + 1 :],
            command_id=headers.get(COMMAND_ID_HEADER, "") or (peek_id(msg.data)[0] or ""),
            error=headers.get(ERROR_TEXT_HEADER, ""),
            error_code=headers.get(ERROR_CODE_TEXT_HEADER, ""),
            deliveries=deliveries,
            service=headers.get(SERVICE_HEADER, ""),
            failed_at=headers.get(FAILED_AT_HEADER, "") or msg.time,
            original_subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
            data=msg.data,
        )


def pending(bus: Connection, config: Optional[DurableConfig] = None, *, limit: int = 20) -> PendingCommands:
    """The commands waiting in the commands stream, and each consumer's counts.

    With ``limits``/``interest`` retention the list starts after the lowest
    acknowledgement floor of the consumers (acknowledged commands stay in
    such a stream until ``max_age``). Creates nothing.

    Args:
        bus: The connection.
        config: The durable config (default :class:`DurableConfig`).
        limit: Commands listed at most.
    """
    cfg = config or DEFAULT_CONFIG
    js = jetstream_for(bus)

    async def read() -> PendingCommands:
        state = await js.stream_state(cfg.stream)
        if state is None:
            return PendingCommands(cfg.stream, False, 0, (), ())
        consumers = tuple(await js.consumers(cfg.stream))
        start = state.first_seq
        if consumers and cfg.retention != "workqueue":
            start = max(start, min(c.ack_floor for c in consumers) + 1)
        found: List[StoredCommand] = []
        seq = start
        while len(found) < limit and state.messages:
            msg = await js.next_message(cfg.stream, seq, f"{cfg.subject_prefix}.>")
            if msg is None:
                break
            found.append(
                StoredCommand(
                    seq=msg.seq,
                    subject=msg.subject,
                    command_type=msg.subject[len(cfg.subject_prefix) + 1 :],
                    command_id=peek_id(msg.data)[0] or msg.headers.get("Nats-Msg-Id", ""),
                    stored_at=msg.time,
                    data=msg.data,
                )
            )
            seq = msg.seq + 1
        return PendingCommands(cfg.stream, True, state.messages, consumers, tuple(found))

    result_: PendingCommands = bus.live_transport().run(read, timeout=API_TIMEOUT * 4)
    return result_


def dead_letters(bus: Connection, config: Optional[DurableConfig] = None, *, limit: int = 100) -> List[DeadLetter]:
    """The dead letters, oldest first (``limit`` at most). Creates nothing."""
    cfg = config or DEFAULT_CONFIG
    js = jetstream_for(bus)

    async def read() -> List[DeadLetter]:
        state = await js.stream_state(cfg.dead_letter_stream)
        found: List[DeadLetter] = []
        if state is None or not state.messages:
            return found
        seq = state.first_seq
        while len(found) < limit:
            msg = await js.next_message(cfg.dead_letter_stream, seq, f"{cfg.dead_letter_prefix}.>")
            if msg is None:
                break
            found.append(DeadLetter.from_message(msg, cfg))
            seq = msg.seq + 1
        return found

    letters: List[DeadLetter] = bus.live_transport().run(read, timeout=API_TIMEOUT * 4)
    return letters


def replay(bus: Connection, which: Union[int, str], config: Optional[DurableConfig] = None) -> DeadLetter:
    """Send a dead letter again: its stored result is cleared, the command stored anew, the letter deleted.

    The command keeps its ``command_id`` (its new result is stored under
    it); its ``Nats-Msg-Id`` is new, so JetStream's duplicate window does
    not drop it.

    Args:
        bus: The connection.
        which: The dead letter's sequence number, or its command id.
        config: The durable config.

    Returns:
        The dead letter that was replayed.

    Raises:
        JetStreamError: no such dead letter (``code`` 404), no commands
            stream, or JetStream failed. Creates nothing, checks no settings.
    """
    cfg = config or DEFAULT_CONFIG
    js = jetstream_for(bus)
    letter: Optional[DeadLetter] = None
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        msg = bus.live_transport().run(js.get_message, cfg.dead_letter_stream, int(which), timeout=API_TIMEOUT)
        if msg is not None and msg.subject.startswith(cfg.dead_letter_prefix + "."):
            letter = DeadLetter.from_message(msg, cfg)
    else:
        letter = next((d for d in dead_letters(bus, cfg, limit=100_000) if d.command_id == which), None)
    if letter is None:
        raise JetStreamError(f"no dead letter {which} in stream {cfg.dead_letter_stream}", code=404)
    found = letter
    subject = cfg.command_subject(found.command_type)
    client = js  # the stream exists (the letter came from it); publish checks it is the one that stores it

    async def again() -> None:
        if found.command_id and await client.bucket_settings(cfg.results_bucket) is not None:
            await client.kv_delete(cfg.results_bucket, record_key(found.command_id))
        await client.publish(
            subject,
            found.data,
            msg_id=f"{found.command_id or 'unknown'}.replay.{found.seq}",
            stream=cfg.stream,
        )
        await client.delete_message(cfg.dead_letter_stream, found.seq)

    bus.live_transport().run(again, timeout=API_TIMEOUT * 4)
    logger.info("replayed dead letter %d as %s %s", found.seq, subject, found.command_id)
    return found
