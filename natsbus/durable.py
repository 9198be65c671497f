"""Durable commands: stored in JetStream by ``send()``, run by a WorkerPool whenever one is up.

Request-reply needs a live responder: a batch job's ``execute()`` fails
while every worker is down. ``CommandBus.send()`` instead returns the
``command_id`` once JetStream has stored the command, and a pool started
with ``durable=True`` runs it when it can::

    command_id = CommandBus(bus).send(ChargeCard(order_id="o-1", cents=1250))

    pool = WorkerPool(bus, "billing", durable=True)     # or durable=DurableConfig(...)

    CommandBus(bus).result(command_id, wait=30)         # its result, once there is one

The pieces, each created with the settings of a :class:`DurableConfig`
(and reused when they exist with the same settings; otherwise
:class:`~natsbus.IncompatibleSettingsError` names the one that differs):

* **the commands stream** (``NATSBUS_COMMANDS``) captures
  ``durable.commands.>``: a subject space that never overlaps
  request-reply's ``commands.*`` / ``queries.*`` (natsbus refuses to start
  when any stream captures those: JetStream would acknowledge requests in
  place of their handlers). ``Nats-Msg-Id`` is the ``command_id``, so a
  repeated ``send()`` within the duplicate window is stored once.
* **one durable pull consumer per service** (named after the pool's queue
  group), with explicit acks. A pool pulls only as many commands as it
  has idle worker threads, and runs them there, never on the loop thread.
  A command is acknowledged after its reply is stored; while it runs, its
  ack timer is restarted every ``ack_wait / 3`` seconds.
* **the results bucket** (``natsbus_results``) keeps each command's
  response envelope for ``results_ttl`` seconds, for
  ``CommandBus.result()``. A command delivered again after its reply was
  stored (its worker died before the ack) is acknowledged, not run again.
* **the dead-letter stream** (``NATSBUS_DEAD_LETTERS``,
  ``durable.dead.>``). A handler failure (an error reply with a code of
  500 or more) is retried after ``backoff`` seconds; after
  ``max_deliveries`` deliveries the command goes there, with its last
  error in the ``Natsbus-Error*`` headers, and its error reply is stored
  as its result. Replies with a code below 500 (400, 404, 409: the
  handler's verdict, not a failure) are final: stored, acknowledged.
  ``natsbus durable dead`` lists dead letters; ``natsbus durable replay``
  sends one again.

natsbus counts deliveries itself rather than through the consumer's
``max_deliver`` (left unlimited), so that a worker that dies during the
last delivery cannot strand the command: a command delivered more than
``max_deliveries`` times without an answer is dead-lettered unrun.

Exactly once: see the README. In short, JetStream and this module make
sure a command is *delivered until answered* and not run again once its
reply is stored; a worker dying between the handler's commit and that
store can still run it twice, unless the handler records the
``command_id`` in the same transaction as its effect.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple, Union

import attrs

from . import codec
from ._resources import BucketSpec, ConsumerSpec, StreamSpec
from ._transport.jetstream import ConsumerState, JetStream, JsMessage, Puller, StoredMessage, jetstream_for
from .envelope import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    decode_response,
    error_reply,
    header_value,
    new_id,
    peek_id,
    service_error,
    utc_timestamp,
)
from .errors import (
    ConfigError,
    EnvelopeError,
    JetStreamError,
    MessageTypeError,
    NatsBusError,
    NotConnectedError,
    PayloadTooLargeError,
    RegistrationError,
    ResultNotReadyError,
    error_class_for_code,
)
from .idempotency import ReplyPair, done_record, read_record, record_key, record_reply
from .messages import Kind, _check_token, ensure_message_class, message_kind, type_name

if TYPE_CHECKING:
    from .bus import Bus
    from .cqrs import CommandBus
    from .dispatch import HandlerRoute
    from .worker import WorkerPool

__all__ = [
    "ConsumerState",
    "DeadLetter",
    "DurableConfig",
    "PendingCommands",
    "StoredCommand",
    "dead_letters",
    "pending",
    "replay",
    "result",
    "send",
]

logger = logging.getLogger("natsbus.durable")

#: Headers natsbus puts on a dead letter.
ERROR_TEXT_HEADER = "Natsbus-Error"
ERROR_CODE_TEXT_HEADER = "Natsbus-Error-Code"
DELIVERIES_HEADER = "Natsbus-Deliveries"
SERVICE_HEADER = "Natsbus-Service"
FAILED_AT_HEADER = "Natsbus-Failed-At"
ORIGINAL_SUBJECT_HEADER = "Natsbus-Original-Subject"
ORIGINAL_SEQ_HEADER = "Natsbus-Original-Seq"
COMMAND_ID_HEADER = "Natsbus-Command-Id"

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED_TOKENS = ("commands", "queries")
_API_TIMEOUT = 5.0


def check_bucket_name(what: str, name: str) -> None:
    """Raise ConfigError unless ``name`` is a valid stream or bucket name."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{what} must be letters, digits, '-' or '_', got {name!r}")


def check_replicas(replicas: int) -> None:
    """Raise ConfigError unless ``replicas`` is 1..5 (JetStream's range)."""
    if not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ConfigError(f"replicas must be 1..5, got {replicas!r}")


def check_storage(storage: str) -> None:
    """Raise ConfigError unless ``storage`` is ``file`` or ``memory``."""
    if storage not in ("file", "memory"):
        raise ConfigError(f"storage must be 'file' or 'memory', got {storage!r}")


def _check_prefix(what: str, prefix: str) -> Tuple[str, ...]:
    tokens = tuple(prefix.split(".")) if isinstance(prefix, str) else ()
    if not tokens or not all(tokens):
        raise ConfigError(f"{what} must be dot-separated subject tokens, got {prefix!r}")
    for token in tokens:
        try:
            _check_token(token)
        except MessageTypeError:
            raise ConfigError(f"{what} {prefix!r} has an invalid token {token!r}") from None
    if tokens[0] in _RESERVED_TOKENS or tokens[0].startswith(("$", "_INBOX")):
        raise ConfigError(
            f"{what} {prefix!r} would overlap request-reply or system subjects; "
            f"it may not start with {', '.join(_RESERVED_TOKENS)}, '$' or '_INBOX'"
        )
    return tokens


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"DurableConfig.{attribute.name} must be >= 0 seconds, got {value!r}")


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"DurableConfig.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class DurableConfig:
    """Where durable commands live, and how they are retried. Clients and workers use the same.

    Every stream, consumer and bucket is created with exactly these
    settings, and an existing one is used only when its settings match.

    Args:
        stream: The commands stream.
        subject_prefix: Commands are stored on ``{subject_prefix}.{Type}``;
            it may not overlap ``commands.*`` / ``queries.*``.
        retention: ``"workqueue"`` (a command is deleted once acknowledged;
            each type may be consumed by one service only), ``"limits"``
            (kept until ``max_age``), or ``"interest"``.
        storage: ``"file"`` (survives a server restart) or ``"memory"``.
        replicas: Copies of every stream and bucket in a JetStream cluster
            (1..5; 1 on a single server).
        max_age: Seconds a command waits for a worker at most (0: forever).
        duplicate_window: Seconds within which a second ``send()`` of the
            same ``command_id`` is dropped by JetStream.
        dead_letter_stream: The dead-letter stream.
        dead_letter_prefix: Dead letters go to ``{dead_letter_prefix}.{Type}``.
        dead_letter_max_age: Seconds a dead letter is kept (0: forever).
        results_bucket: The key-value bucket of response envelopes.
        results_ttl: Seconds a result is kept (0: forever).
        consumer: The durable consumer's name; default the pool's queue group.
        ack_wait: Seconds without an ack (or a heartbeat) before a command
            is delivered again, e.g. after its worker died.
        max_deliveries: Deliveries of a failing command before it is dead-lettered.
        backoff: Seconds before each redelivery after a failure; the last
            one repeats.
        max_ack_pending: Commands delivered and not yet acknowledged, over
            all instances of the service, at most.
        fetch_timeout: Seconds one pull waits for commands; also how long
            ``stop()`` may wait for the pull in progress.
    """

    stream: str = "NATSBUS_COMMANDS"
    subject_prefix: str = "durable.commands"
    retention: str = "workqueue"
    storage: str = "file"
    replicas: int = 1
    max_age: float = attrs.field(default=7 * 86400.0, validator=_non_negative)
    duplicate_window: float = attrs.field(default=120.0, validator=_positive)
    dead_letter_stream: str = "NATSBUS_DEAD_LETTERS"
    dead_letter_prefix: str = "durable.dead"
    dead_letter_max_age: float = attrs.field(default=30 * 86400.0, validator=_non_negative)
    results_bucket: str = "natsbus_results"
    results_ttl: float = attrs.field(default=86400.0, validator=_non_negative)
    consumer: Optional[str] = None
    ack_wait: float = attrs.field(default=30.0, validator=_positive)
    max_deliveries: int = 5
    backoff: Tuple[float, ...] = attrs.field(default=(1.0, 5.0, 30.0), converter=tuple)
    max_ack_pending: int = 1000
    fetch_timeout: float = attrs.field(default=1.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        check_bucket_name("stream", self.stream)
        check_bucket_name("dead_letter_stream", self.dead_letter_stream)
        check_bucket_name("results_bucket", self.results_bucket)
        if self.stream == self.dead_letter_stream:
            raise ConfigError("stream and dead_letter_stream must differ")
        if self.consumer is not None:
            check_bucket_name("consumer", self.consumer)
        commands = _check_prefix("subject_prefix", self.subject_prefix)
        dead = _check_prefix("dead_letter_prefix", self.dead_letter_prefix)
        shorter = min(len(commands), len(dead))
        if commands[:shorter] == dead[:shorter]:
            raise ConfigError(
                f"subject_prefix {self.subject_prefix!r} and dead_letter_prefix {self.dead_letter_prefix!r} "
                "overlap; the two streams need subjects of their own"
            )
        if self.retention not in ("workqueue", "limits", "interest"):
            raise ConfigError(f"retention must be 'workqueue', 'limits' or 'interest', got {self.retention!r}")
        check_storage(self.storage)
        check_replicas(self.replicas)
        if self.max_age and self.duplicate_window > self.max_age:
            raise ConfigError("duplicate_window may not be longer than max_age")
        if not isinstance(self.max_deliveries, int) or self.max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be >= 1, got {self.max_deliveries!r}")
        if not self.backoff or any(not isinstance(s, (int, float)) or s < 0 for s in self.backoff):
            raise ConfigError(f"backoff must be one or more delays >= 0 seconds, got {self.backoff!r}")
        if not isinstance(self.max_ack_pending, int) or self.max_ack_pending < 1:
            raise ConfigError(f"max_ack_pending must be >= 1, got {self.max_ack_pending!r}")

    def command_subject(self, message_type: str) -> str:
        """Where a command of this type is stored: ``durable.commands.{Type}``."""
        _check_token(message_type)
        return f"{self.subject_prefix}.{message_type}"

    def dead_letter_subject(self, message_type: str) -> str:
        """Where a dead command of this type goes: ``durable.dead.{Type}``."""
        return f"{self.dead_letter_prefix}.{message_type}"

    def delay(self, delivered: int) -> float:
        """Seconds before the next delivery after delivery number ``delivered`` failed."""
        return float(self.backoff[min(max(delivered, 1), len(self.backoff)) - 1])

    # -- the resources, as natsbus._resources specs --------------------------------------

    def commands_stream(self) -> StreamSpec:
        """The commands stream's settings."""
        return StreamSpec(
            self.stream,
            (f"{self.subject_prefix}.>",),
            self.retention,
            self.storage,
            self.replicas,
            float(self.max_age),
            float(self.duplicate_window),
            "natsbus: durable commands (CommandBus.send)",
        )

    def dead_letters_stream(self) -> StreamSpec:
        """The dead-letter stream's settings."""
        window = min(120.0, self.dead_letter_max_age) if self.dead_letter_max_age else 120.0
        return StreamSpec(
            self.dead_letter_stream,
            (f"{self.dead_letter_prefix}.>",),
            "limits",
            self.storage,
            self.replicas,
            float(self.dead_letter_max_age),
            window,
            "natsbus: durable commands that failed max_deliveries times",
        )

    def results(self) -> BucketSpec:
        """The results bucket's settings."""
        return BucketSpec(
            self.results_bucket,
            float(self.results_ttl),
            self.replicas,
            self.storage,
            "natsbus: response envelopes of durable commands, by command_id",
        )


_DEFAULT = DurableConfig()


def as_config(durable: Union[bool, DurableConfig, None]) -> Optional[DurableConfig]:
    """``WorkerPool(durable=...)``: ``True`` is the default config, falsy is off."""
    if durable is None or durable is False:
        return None
    if durable is True:
        return _DEFAULT
    if isinstance(durable, DurableConfig):
        return durable
    raise ConfigError(f"durable must be True, False, None or a DurableConfig, got {durable!r}")


async def _check_no_overlap(js: JetStream) -> None:
    for subject in ("commands.>", "queries.>"):
        captured = await js.streams_capturing(subject)
        if captured:
            raise ConfigError(
                f"stream {', '.join(sorted(captured))} captures {subject}: JetStream would acknowledge "
                "request-reply commands and queries in place of their handlers; remove those subjects from it"
            )


async def _ensure_client_side(js: JetStream, config: DurableConfig) -> None:
    await _check_no_overlap(js)
    await config.commands_stream().ensure(js)


_CLIENT_READY: weakref.WeakKeyDictionary[JetStream, Set[DurableConfig]] = weakref.WeakKeyDictionary()
_CLIENT_LOCK = threading.Lock()


def _client(bus: Bus, config: DurableConfig) -> JetStream:
    """The bus's JetStream, with the commands stream checked once per connection and config."""
    js = jetstream_for(bus)
    with _CLIENT_LOCK:
        ready = config in _CLIENT_READY.get(js, set())
    if not ready:
        bus.run(lambda: _ensure_client_side(js, config), _API_TIMEOUT * 3)
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
    cfg = config or _DEFAULT
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
    timeout = commands.timeout or _API_TIMEOUT
    for attempt in range(3):
        try:
            ack = bus.run(
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
    cfg = config or _DEFAULT
    if wait < 0:
        raise ConfigError(f"wait must be >= 0 seconds, got {wait!r}")
    bus = commands.bus
    js = jetstream_for(bus)
    key = record_key(command_id)
    deadline = time.monotonic() + wait
    pause = 0.02
    while True:
        entry = bus.run(lambda: js.kv_get(cfg.results_bucket, key), _API_TIMEOUT)
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


# -- the worker side ---------------------------------------------------------------------------


class DurableConsumer:
    """Pulls a service's durable commands onto its WorkerPool's threads.

    Built by ``WorkerPool(durable=...)``; not used directly. The pull loop
    and the heartbeat run on the Bus's loop; each command runs on a worker
    thread the loop reserved before pulling it.

    Attributes:
        executed: Commands whose handler ran and whose reply was stored.
        skipped: Deliveries acknowledged without running (reply already stored).
        retried: Failures sent back for a later delivery.
        dead_lettered: Commands moved to the dead-letter stream.
    """

    def __init__(self, pool: WorkerPool, config: DurableConfig) -> None:
        self.pool = pool
        self.config = config
        self.name = config.consumer or ""
        self._routes: Dict[str, HandlerRoute] = {}
        self._bus: Optional[Bus] = None
        self._js: Optional[JetStream] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._pull_task: Optional[asyncio.Task[None]] = None
        self._beat_task: Optional[asyncio.Task[None]] = None
        self._stopping = False
        self._lock = threading.Lock()
        self._delivered: Set[JsMessage] = set()  # handed to a thread and not answered yet
        self.filter_subjects: List[str] = []
        self.executed = 0
        self.skipped = 0
        self.retried = 0
        self.dead_lettered = 0

    # -- lifecycle (the pool's thread) -------------------------------------------

    def prepare(self, bus: Bus) -> None:
        """Create or check the streams, the results bucket and the consumer.

        Raises:
            RegistrationError: the pool has no command handler.
            IncompatibleSettingsError: a resource exists with other settings.
            ConfigError: a stream captures request-reply subjects.
            JetStreamError: JetStream is off or failed.
        """
        routes = [route for route in self.pool.dispatcher.routes if route.kind is Kind.COMMAND]
        if not routes:
            raise RegistrationError("durable commands need at least one command handler in the pool")
        self._routes = {self.config.command_subject(route.name): route for route in routes}
        # The queue group may be set after construction (natsbus worker --queue-group).
        self.name = self.config.consumer or re.sub(r"[^A-Za-z0-9_-]", "_", self.pool.queue_group)
        self._bus = bus
        self._js = js = jetstream_for(bus)
        spec = ConsumerSpec(
            self.config.stream,
            self.name,
            tuple(sorted(self._routes)),
            float(self.config.ack_wait),
            self.config.max_ack_pending,
            f"natsbus: durable commands of {self.pool.service_id}",
        )

        async def ensure() -> List[str]:
            await _check_no_overlap(js)
            await self.config.commands_stream().ensure(js)
            await self.config.dead_letters_stream().ensure(js)
            await self.config.results().ensure(js)
            return await spec.ensure(js)

        self.filter_subjects = bus.run(ensure, _API_TIMEOUT * 6)

    def start(self) -> None:
        """Start pulling (after :meth:`prepare`)."""
        assert self._bus is not None and self._js is not None
        js = self._js

        async def start() -> None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._wake = asyncio.Event()
            puller = await js.pull(self.config.stream, self.name)
            self._pull_task = loop.create_task(self._pull_loop(puller))
            self._beat_task = loop.create_task(self._heartbeat())

        self._bus.run(start, _API_TIMEOUT * 2)
        logger.info(
            "%s consuming durable commands from stream %s as %s: %s",
            self.pool.service_id,
            self.config.stream,
            self.name,
            ", ".join(sorted(self._routes)),
        )

    def stop(self, timeout: float) -> None:
        """Stop pulling; commands already pulled still run (the pool drains them)."""
        self._stopping = True
        bus, task = self._bus, self._pull_task
        if bus is None or task is None or bus.closed:
            return

        async def wait() -> None:
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(task, timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass

        try:
            bus.run(wait, timeout + 1.0)
        except Exception as exc:  # stopping anyway
            logger.warning("stopping the durable consumer of %s: %s", self.pool.service_id, exc)

    # -- the loop thread ----------------------------------------------------------

    async def _pull_loop(self, puller: Puller) -> None:
        pool = self.pool
        failures = 0
        try:
            while not self._stopping:
                wanted = pool._reserve_workers(pool.max_workers)
                if not wanted:
                    assert self._wake is not None
                    self._wake.clear()
                    try:  # woken when a durable command finishes; the timeout covers request-reply work
                        await asyncio.wait_for(self._wake.wait(), 0.05)
                    except asyncio.TimeoutError:
                        pass
                    continue
                try:
                    msgs = await puller.fetch(wanted, self.config.fetch_timeout)
                except asyncio.CancelledError:
                    pool._release_workers(wanted)
                    raise
                except NatsBusError as exc:
                    pool._release_workers(wanted)
                    failures += 1
                    log = logger.warning if failures == 1 else logger.debug
                    log("%s: pulling durable commands failed: %s; trying again", pool.service_id, exc)
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))  # back off while JetStream is unwell
                    continue
                failures = 0
                if len(msgs) < wanted:
                    pool._release_workers(wanted - len(msgs))
                for msg in msgs:
                    if self._stopping:
                        pool._release_workers(1)
                        await self._quiet(msg.nak())  # another instance may take it now
                        continue
                    with self._lock:
                        self._delivered.add(msg)
                    route = self._routes.get(msg.subject)
                    pool._run_reserved(route or next(iter(self._routes.values())), partial(self._job, msg, route))
        finally:
            await puller.close()

    async def _heartbeat(self) -> None:
        period = max(0.05, self.config.ack_wait / 3)
        while True:
            await asyncio.sleep(period)
            with self._lock:
                running = list(self._delivered)
            for msg in running:
                await self._quiet(msg.in_progress())
            if self._stopping and not running and self._pull_task is not None and self._pull_task.done():
                return

    @staticmethod
    async def _quiet(coro: Any) -> None:
        try:
            await coro
        except NatsBusError as exc:
            logger.debug("answering a durable command delivery failed: %s", exc)

    # -- a worker thread ------------------------------------------------------------

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def _run(self, fn: Any) -> Any:
        assert self._bus is not None
        return self._bus.run(fn, _API_TIMEOUT + 1.0)

    def _job(self, msg: JsMessage, route: Optional[HandlerRoute]) -> None:
        try:
            self._handle(msg, route)
        except BaseException as exc:  # the delivery must be answered whatever happened
            logger.error("durable command %s#%d: %s", msg.subject, msg.stream_seq, exc, exc_info=True)
            try:
                self._run(lambda: msg.nak(self.config.delay(msg.num_delivered)))
            except Exception as nak_exc:  # redelivered after ack_wait anyway
                logger.debug("nak failed: %s", nak_exc)
        finally:
            with self._lock:
                self._delivered.discard(msg)
            loop, wake = self._loop, self._wake
            if loop is not None and wake is not None:
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed
                    pass

    def _handle(self, msg: JsMessage, route: Optional[HandlerRoute]) -> None:
        cfg, js = self.config, self._js
        assert js is not None and self._bus is not None
        message_type = msg.subject[len(cfg.subject_prefix) + 1 :]
        command_id = peek_id(msg.data)[0]
        if not command_id:
            self._dead_letter(msg, message_type, "", "Invalid request format: no command_id in the envelope", "400")
            return
        if msg.num_delivered > cfg.max_deliveries:
            self._dead_letter(
                msg,
                message_type,
                command_id,
                f"delivered {msg.num_delivered} times without an answer; its worker may have died on it each time",
                "500",
            )
            return
        key = record_key(command_id)
        entry = self._run(lambda: js.kv_get(cfg.results_bucket, key))
        record = read_record(entry.value, command_id) if entry is not None else None
        if record is not None and record.get("state") == "done":
            logger.info(
                "%s %s: delivered again (delivery %d) after its reply was stored; acknowledged, not run",
                msg.subject,
                command_id,
                msg.num_delivered,
            )
            self._run(msg.ack)
            self._count("skipped")
            return
        if route is None:
            error, code = f"No handler available for {msg.subject} in {self.pool.service_id}", "404"
            reply: Optional[ReplyPair] = None
        else:
            reply = self.pool.dispatcher.dispatch(route, msg.data, self._bus.max_payload, headers=msg.headers)
            headers = reply[1] or {}
            code = headers.get(ERROR_CODE_HEADER, "")
            if not code or _is_answer(code):
                record_bytes = done_record(command_id, msg.subject, reply)
                self._run(lambda: js.kv_put(cfg.results_bucket, key, record_bytes))
                self._run(msg.ack)
                self._count("executed")
                return
            error = headers.get(ERROR_HEADER, "") or "handler failed"
        if msg.num_delivered >= cfg.max_deliveries:
            self._dead_letter(msg, message_type, command_id, error, code, reply)
            return
        delay = cfg.delay(msg.num_delivered)
        logger.info(
            "%s %s failed on delivery %d of %d: %s; retrying in %gs",
            msg.subject,
            command_id,
            msg.num_delivered,
            cfg.max_deliveries,
            error,
            delay,
        )
        self._run(lambda: msg.nak(delay))
        self._count("retried")

    def _dead_letter(
        self,
        msg: JsMessage,
        message_type: str,
        command_id: str,
        error: str,
        code: str,
        reply: Optional[ReplyPair] = None,
    ) -> None:
        cfg, js = self.config, self._js
        assert js is not None
        headers = {
            COMMAND_ID_HEADER: command_id,
            ERROR_TEXT_HEADER: header_value(error),
            ERROR_CODE_TEXT_HEADER: code or "500",
            DELIVERIES_HEADER: str(msg.num_delivered),
            SERVICE_HEADER: self.pool.service_id,
            FAILED_AT_HEADER: utc_timestamp(),
            ORIGINAL_SUBJECT_HEADER: msg.subject,
            ORIGINAL_SEQ_HEADER: str(msg.stream_seq),
        }
        subject = cfg.dead_letter_subject(message_type or "unknown")
        # The same delivery dead-lettered twice (a crash before the ack) is stored once.
        msg_id = f"{cfg.stream}.{msg.stream_seq}"
        self._run(lambda: js.publish(subject, msg.data, headers, msg_id=msg_id, stream=cfg.dead_letter_stream))
        if command_id:
            if reply is None:
                failure = error_class_for_code(code or "500")(error)
                reply = error_reply(Kind.COMMAND, command_id, failure)
            record_bytes = done_record(command_id, msg.subject, reply)
            self._run(lambda: js.kv_put(cfg.results_bucket, record_key(command_id), record_bytes))
        self._run(msg.ack)
        self._count("dead_lettered")
        logger.error(
            "%s %s dead-lettered to %s after %d deliveries: %s",
            msg.subject,
            command_id or "(no id)",
            subject,
            msg.num_delivered,
            error,
        )


def _is_answer(code: str) -> bool:
    """Whether an error code is the handler's final answer (4xx), not a failure to retry."""
    try:
        return int(code) < 500
    except ValueError:
        return False


# -- operations: pending, dead letters, replay ----------------------------------------------


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


def pending(bus: Bus, config: Optional[DurableConfig] = None, *, limit: int = 20) -> PendingCommands:
    """The commands waiting in the commands stream, and each consumer's counts.

    With ``limits``/``interest`` retention the list starts after the lowest
    acknowledgement floor of the consumers (acknowledged commands stay in
    such a stream until ``max_age``). Creates nothing.

    Args:
        bus: The connection.
        config: The durable config (default :class:`DurableConfig`).
        limit: Commands listed at most.
    """
    cfg = config or _DEFAULT
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

    result_: PendingCommands = bus.run(read, _API_TIMEOUT * 4)
    return result_


def dead_letters(bus: Bus, config: Optional[DurableConfig] = None, *, limit: int = 100) -> List[DeadLetter]:
    """The dead letters, oldest first (``limit`` at most). Creates nothing."""
    cfg = config or _DEFAULT
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

    letters: List[DeadLetter] = bus.run(read, _API_TIMEOUT * 4)
    return letters


def replay(bus: Bus, which: Union[int, str], config: Optional[DurableConfig] = None) -> DeadLetter:
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
    cfg = config or _DEFAULT
    js = jetstream_for(bus)
    letter: Optional[DeadLetter] = None
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        msg = bus.run(lambda: js.get_message(cfg.dead_letter_stream, int(which)), _API_TIMEOUT)
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

    bus.run(again, _API_TIMEOUT * 4)
    logger.info("replayed dead letter %d as %s %s", found.seq, subject, found.command_id)
    return found
