"""Opt-in client policies: retries with backoff, and a query result cache."""

from __future__ import annotations

import enum
import os
import random
import threading
import time
import weakref
from collections import OrderedDict
from typing import Any, Hashable, Optional, Tuple, Type, Union

import attrs

from .errors import BusyError, ConfigError, NoHandlerError, RequestTimeoutError

__all__ = ["DEFAULT", "DefaultType", "QueryCache", "RetryArg", "RetryPolicy", "TimeoutArg"]


class DefaultType(enum.Enum):
    """The type of :data:`DEFAULT` ("the default"), for annotations."""

    DEFAULT = "DEFAULT"


#: A per-call argument's "use the configured value" (``None`` would mean
#: "no limit"): the bus's timeout or retry policy, the Bus's reconnect grace.
DEFAULT = DefaultType.DEFAULT
#: A call's ``timeout`` (or ``reconnect_grace``): seconds, ``None`` for no
#: limit, or DEFAULT for the configured value.
TimeoutArg = Union[float, None, DefaultType]


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Retry failed calls with exponential backoff and jitter.

    Only errors where a retry can help are retried: a timeout, no handler
    (a worker may be restarting) and busy (another instance may have
    room). A command is retried with the *same* ``command_id``, so an
    idempotent worker can recognise the repeat; queries retry freely.

    Args:
        attempts: Tries in all, the first included (1 = no retry).
        backoff: Seconds before the first retry.
        multiplier: Each further wait is this much longer.
        max_backoff: The longest wait between tries.
        jitter: A random fraction of each wait added or removed (0..1).
        retry_on: The error classes that are retried.
    """

    attempts: int = attrs.field(default=3)
    backoff: float = attrs.field(default=0.1, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    max_backoff: float = attrs.field(default=2.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_non_negative)
    retry_on: Tuple[Type[BaseException], ...] = (RequestTimeoutError, NoHandlerError, BusyError)

    @attempts.validator
    def _check_attempts(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ConfigError(f"RetryPolicy.attempts must be >= 1, got {value}")

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """Whether to try again after ``error`` on try number ``attempt`` (0-based)."""
        return attempt + 1 < self.attempts and isinstance(error, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after try number ``attempt`` (0-based) failed."""
        base = min(self.max_backoff, self.backoff * (self.multiplier**attempt))
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))


#: A call's ``retry``: a policy, ``None`` for no retry, or DEFAULT for the bus's.
RetryArg = Union[RetryPolicy, None, DefaultType]


class QueryCache:
    """A thread-safe LRU cache of query results with a time-to-live.

    Keyed by query type and payload; only successful results are kept.
    Each hit decodes the cached reply afresh, so callers never share (and
    cannot corrupt) one result object.

    Args:
        ttl: Seconds an entry stays valid.
        maxsize: Entries kept at most; the least recently used goes first.
    """

    def __init__(self, ttl: float = 30.0, maxsize: int = 1024) -> None:
        if ttl <= 0:
            raise ConfigError(f"QueryCache ttl must be > 0 seconds, got {ttl!r}")
        if maxsize < 1:
            raise ConfigError(f"QueryCache maxsize must be >= 1, got {maxsize!r}")
        self.ttl = ttl
        self.maxsize = maxsize
        self._entries: OrderedDict[Hashable, Tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        _LIVE_CACHES.add(self)

    def get(self, key: Hashable) -> Optional[Any]:
        """The cached value, or ``None`` when absent or expired."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= now:
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` for ``ttl`` seconds."""
        with self._lock:
            self._entries[key] = (time.monotonic() + self.ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# Caches alive in this process, so a fork can reset their locks in the child
# (a lock held by another thread at fork time would never be released there).
_LIVE_CACHES: weakref.WeakSet[QueryCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_LIVE_CACHES):
        cache._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
