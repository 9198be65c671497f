"""The settings of durable commands: :class:`DurableConfig` and the headers of dead letters."""

from __future__ import annotations

import logging
from typing import Any, Optional, Tuple, Union

import attrs

from .._resources import BucketSpec, StreamSpec, check_bucket_name, check_replicas, check_storage
from .._transport.jetstream import JetStream
from ..errors import (
    ConfigError,
    MessageTypeError,
)
from ..messages import _check_token

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

_RESERVED_TOKENS = ("commands", "queries")
#: Seconds for one JetStream API call made by this package.
API_TIMEOUT = 5.0


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


DEFAULT_CONFIG = DurableConfig()


def as_config(durable: Union[bool, DurableConfig, None]) -> Optional[DurableConfig]:
    """``WorkerPool(durable=...)``: ``True`` is the default config, falsy is off."""
    if durable is None or durable is False:
        return None
    if durable is True:
        return DEFAULT_CONFIG
    if isinstance(durable, DurableConfig):
        return durable
    raise ConfigError(f"durable must be True, False, None or a DurableConfig, got {durable!r}")


async def check_no_overlap(js: JetStream) -> None:
    """Raise ConfigError when a stream captures request-reply subjects."""
    for subject in ("commands.>", "queries.>"):
        captured = await js.streams_capturing(subject)
        if captured:
            raise ConfigError(
                f"stream {', '.join(sorted(captured))} captures {subject}: JetStream would acknowledge "
                "request-reply commands and queries in place of their handlers; remove those subjects from it"
            )
