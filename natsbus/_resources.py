"""The JetStream resources natsbus creates: explicit settings, reused only when they match.

natsbus never changes an existing stream or bucket: when one exists it
compares the settings it manages and raises
:class:`~natsbus.IncompatibleSettingsError` naming the first that differs.
The only change it makes is to let a durable consumer's subject filter
grow (a new release of a service handling one more command type), never
shrink, so instances of an older release running meanwhile keep theirs.

No nats here: the server is reached through ``natsbus._transport.jetstream``.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import attrs

from ._transport.jetstream import JetStream
from .errors import ConfigError, IncompatibleSettingsError

__all__ = [
    "NAME_RE",
    "BucketSpec",
    "ConsumerSpec",
    "StreamSpec",
    "check_bucket_name",
    "check_replicas",
    "check_settings",
    "check_storage",
]

logger = logging.getLogger("natsbus.jetstream")


#: What a stream, consumer or bucket name may contain.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def check_bucket_name(what: str, name: str) -> None:
    """Raise ConfigError unless ``name`` is a valid stream or bucket name."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{what} must be letters, digits, '-' or '_', got {name!r}")


def check_replicas(replicas: int) -> None:
    """Raise ConfigError unless ``replicas`` is 1..5 (JetStream's range)."""
    if not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ConfigError(f"replicas must be 1..5, got {replicas!r}")


def check_storage(storage: str) -> None:
    """Raise ConfigError unless ``storage`` is ``file`` or ``memory``."""
    if storage not in ("file", "memory"):
        raise ConfigError(f"storage must be 'file' or 'memory', got {storage!r}")


def _same(wanted: Any, existing: Any) -> bool:
    if isinstance(wanted, float) or isinstance(existing, float):
        try:
            return math.isclose(float(wanted), float(existing), abs_tol=1e-3)
        except (TypeError, ValueError):
            return False
    if isinstance(wanted, (list, tuple)) and isinstance(existing, (list, tuple)):
        return sorted(map(str, wanted)) == sorted(map(str, existing))
    return bool(wanted == existing)


def check_settings(resource: str, wanted: Mapping[str, Any], existing: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Raise :class:`IncompatibleSettingsError` for the first of ``keys`` that differs."""
    for key in keys:
        if not _same(wanted[key], existing.get(key)):
            shown = existing.get(key)
            raise IncompatibleSettingsError(
                resource,
                key,
                sorted(shown) if isinstance(shown, list) else shown,
                sorted(wanted[key]) if isinstance(wanted[key], (list, tuple)) else wanted[key],
            )


@attrs.frozen
class StreamSpec:
    """A stream as natsbus wants it.

    Attributes:
        name: The stream name.
        subjects: The subjects it captures.
        retention: ``limits``, ``workqueue`` or ``interest``.
        storage: ``file`` or ``memory``.
        replicas: Copies in a cluster (1 on a single server).
        max_age: Seconds a message is kept at most (0: no limit).
        duplicate_window: Seconds within which a repeated ``Nats-Msg-Id`` is dropped.
        description: Shown by ``nats stream info``.
    """

    name: str
    subjects: Tuple[str, ...]
    retention: str
    storage: str
    replicas: int
    max_age: float
    duplicate_window: float
    description: str = ""

    _CHECKED = ("subjects", "retention", "storage", "replicas", "max_age", "duplicate_window")

    def settings(self) -> Dict[str, Any]:
        """The settings in natsbus's names."""
        return {
            "subjects": list(self.subjects),
            "retention": self.retention,
            "storage": self.storage,
            "replicas": self.replicas,
            "max_age": self.max_age,
            "duplicate_window": self.duplicate_window,
            "discard": "old",
        }

    async def ensure(self, js: JetStream) -> None:
        """Create the stream, or check that the existing one has these settings."""
        existing = await js.stream_settings(self.name)
        if existing is None:
            await js.create_stream(self.name, self.settings(), self.description)
            logger.info("created stream %s (%s)", self.name, _describe(self.settings(), self._CHECKED))
            return
        check_settings(f"stream {self.name}", self.settings(), existing, self._CHECKED)


@attrs.frozen
class ConsumerSpec:
    """A durable pull consumer as natsbus wants it.

    Attributes:
        stream: Its stream.
        name: Its durable name.
        filter_subjects: The subjects it must deliver (it may deliver more).
        ack_wait: Seconds before an unacknowledged delivery is redelivered.
        max_ack_pending: Deliveries awaiting an ack at most, over all instances.
        description: Shown by ``nats consumer info``.
    """

    stream: str
    name: str
    filter_subjects: Tuple[str, ...]
    ack_wait: float
    max_ack_pending: int
    description: str = ""

    _CHECKED = ("push", "ack_policy", "deliver_policy", "ack_wait", "max_deliver", "max_ack_pending")

    def settings(self, filters: Iterable[str]) -> Dict[str, Any]:
        """The settings in natsbus's names, with these filter subjects."""
        return {
            "push": False,
            "filter_subjects": sorted(set(filters)),
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": self.ack_wait,
            # natsbus counts deliveries itself, so that a worker dying on the
            # last delivery cannot strand a command: see natsbus.durable.
            "max_deliver": -1,
            "max_ack_pending": self.max_ack_pending,
        }

    async def ensure(self, js: JetStream) -> List[str]:
        """Create the consumer, or check it and widen its filter; return the filter subjects."""
        resource = f"consumer {self.name} of stream {self.stream}"
        existing = await js.consumer_settings(self.stream, self.name)
        if existing is None:
            wanted = self.settings(self.filter_subjects)
            await js.create_consumer(self.stream, self.name, wanted, self.description)
            logger.info("created %s (%s)", resource, _describe(wanted, ("filter_subjects", "ack_wait")))
            return list(wanted["filter_subjects"])
        check_settings(resource, self.settings(self.filter_subjects), existing, self._CHECKED)
        have = set(existing["filter_subjects"])
        missing = set(self.filter_subjects) - have
        if not have:
            raise IncompatibleSettingsError(resource, "filter_subjects", [], sorted(self.filter_subjects))
        if missing:
            wanted = self.settings(have | missing)
            await js.create_consumer(self.stream, self.name, wanted, self.description)
            logger.warning("%s now also delivers %s", resource, ", ".join(sorted(missing)))
            return list(wanted["filter_subjects"])
        return sorted(have)


@attrs.frozen
class BucketSpec:
    """A key-value bucket as natsbus wants it.

    Attributes:
        bucket: The bucket name.
        ttl: Seconds a value is kept (0: forever).
        replicas: Copies in a cluster.
        storage: ``file`` or ``memory``.
        description: Shown by ``nats kv info``.
    """

    bucket: str
    ttl: float
    replicas: int
    storage: str
    description: str = ""

    _CHECKED = ("ttl", "history", "replicas", "storage")

    def settings(self) -> Dict[str, Any]:
        """The settings in natsbus's names."""
        return {"ttl": self.ttl, "history": 1, "replicas": self.replicas, "storage": self.storage}

    async def ensure(self, js: JetStream) -> None:
        """Create the bucket, or check that the existing one has these settings."""
        existing = await js.bucket_settings(self.bucket)
        if existing is None:
            await js.create_bucket(self.bucket, self.settings(), self.description)
            logger.info("created key-value bucket %s (%s)", self.bucket, _describe(self.settings(), self._CHECKED))
            return
        check_settings(f"key-value bucket {self.bucket}", self.settings(), existing, self._CHECKED)


def _describe(settings: Mapping[str, Any], keys: Iterable[str]) -> str:
    return ", ".join(f"{key}={settings[key]}" for key in keys)
