"""Idempotent commands: a repeated ``command_id`` gets the reply already sent.

A caller that times out cannot know whether its command ran. Its retry
(:class:`~natsbus.RetryPolicy` retries reuse the ``command_id``) would run
the handler a second time. Give the :class:`~natsbus.WorkerPool` a store::

    pool = WorkerPool(bus, "billing", idempotency=MemoryIdempotencyStore(ttl=600))
    pool = WorkerPool(bus, "billing", idempotency=KeyValueIdempotencyStore())  # shared by all instances

and for each command it

1. claims the ``command_id`` in the store before the handler runs;
2. remembers the reply it sends (body and the ``Nats-Service-Error*``
   headers, errors included) for ``ttl`` seconds;
3. answers a repeated ``command_id`` with exactly that reply, without
   running the handler;
4. makes a repeat that arrives while the first is still running wait for
   the first one's reply (at most ``wait`` seconds, and never past the
   repeat's own deadline), then answer with it; past that it answers
   :class:`~natsbus.BusyError` (503, "still running"), which a
   :class:`~natsbus.RetryPolicy` retries.

Queries are never deduplicated. A request refused before its handler
started (its caller had already given up, or the pool was full) is not
remembered, so its retry runs. When the store cannot be reached the pool
answers :class:`~natsbus.BusyError` rather than risk running a command twice.

:class:`MemoryIdempotencyStore` remembers per process (bounded, with a
TTL): repeats that reach another instance of the service are not seen.
:class:`KeyValueIdempotencyStore` is a JetStream key-value bucket shared by
every instance: the first request to *create* the key (a revision-checked
write only one can win) runs the handler; the others poll the key.

What this does not do: if a process dies after the handler's side effect
and before the reply was stored, a retry runs the handler again (the
in-memory store forgets everything on a restart; the key-value store
hands the command to a retry once ``lease`` seconds have passed, by the
NATS server's clock). For
effects that must happen exactly once, the handler also records the
``command_id`` in the same transaction as its effect; see
docs/exactly-once.rst.
"""

from __future__ import annotations

import abc
import collections
import datetime as dt
import enum
import logging
import threading
import time
import uuid
from functools import partial
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Tuple, TypeVar, Union

import attrs

from ._records import ReplyPair, done_record, read_record, record_key, record_reply, running_record
from ._resources import BucketSpec, check_bucket_name, check_replicas, check_storage
from ._transport import Headers
from ._transport.connection import Connection
from ._transport.jetstream import jetstream_for
from .dispatch import HandlerRoute, NotStarted, ReplyMemory
from .envelope import ERROR_CODE_HEADER, error_reply, peek_id
from .errors import BusyError, ConfigError, JetStreamError, NatsBusError
from .messages import Kind

__all__ = [
    "Claim",
    "ClaimState",
    "IdempotencyStore",
    "KeyValueIdempotencyStore",
    "MemoryIdempotencyStore",
    "default_store",
]

logger = logging.getLogger("natsbus.idempotency")

T = TypeVar("T")

#: The error code of a busy reply, which no store remembers.
BUSY_CODE = str(BusyError.code)

#: A reply as the worker sends it: the body and the headers.
#: ``Dispatcher.dispatch``'s signature.
Dispatch = Callable[..., ReplyPair]


class ClaimState(str, enum.Enum):
    """What :meth:`IdempotencyStore.begin` found for a ``command_id``.

    A ``str`` too: ``ClaimState.OWNED == "owned"``.
    """

    #: This request claimed it: run the handler, then
    #: :meth:`~IdempotencyStore.finish` (or :meth:`~IdempotencyStore.abandon`).
    OWNED = "owned"
    #: It was answered: answer with :attr:`Claim.reply`.
    DONE = "done"
    #: Another request runs it now.
    RUNNING = "running"


@attrs.frozen
class Claim:
    """What :meth:`IdempotencyStore.begin` found for a ``command_id``.

    Attributes:
        state: A :class:`ClaimState` (its value, e.g. ``"owned"``, is
            converted to it).
        token: The owner's proof (a revision, an event), for ``finish``/``abandon``.
        reply: The remembered reply when ``state`` is :attr:`ClaimState.DONE`.
    """

    state: ClaimState = attrs.field(converter=ClaimState)
    token: Any = None
    reply: Optional[ReplyPair] = None


class IdempotencyStore(abc.ABC):
    """Where a WorkerPool remembers, per ``command_id``, the reply it sent.

    Subclass it for another backend (a database table, Redis): implement
    :meth:`begin`, :meth:`finish`, :meth:`abandon` and :meth:`wait_for`;
    :meth:`wrap` does the rest. Every method is called on worker threads.

    Args:
        ttl: Seconds a reply is remembered.
        wait: Seconds a repeat waits at most for a first request still running.
    """

    def __init__(self, ttl: float, wait: float) -> None:
        if ttl <= 0:
            raise ConfigError(f"ttl must be > 0 seconds, got {ttl!r}")
        if wait < 0:
            raise ConfigError(f"wait must be >= 0 seconds, got {wait!r}")
        self.ttl = ttl
        self.wait = wait
        self._counter_lock = threading.Lock()
        #: Repeated commands answered from the store (the handler did not run).
        self.replayed = 0

    def count_replayed(self) -> None:
        """Count a repeat answered from the store (:attr:`replayed`)."""
        with self._counter_lock:
            self.replayed += 1

    def open(self, bus: Connection) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Prepare to serve on ``bus`` (the pool calls it in ``start()``; fails there, not later)."""

    @abc.abstractmethod
    def begin(self, bus: Connection, command_id: str) -> Claim:
        """Claim ``command_id``, or report its reply, or that it is running elsewhere."""

    @abc.abstractmethod
    def finish(self, bus: Connection, command_id: str, token: Any, reply: ReplyPair) -> None:
        """Remember ``reply`` for ``command_id`` (claimed with ``token``) and wake its waiters."""

    @abc.abstractmethod
    def abandon(self, bus: Connection, command_id: str, token: Any) -> None:
        """Release a claim without remembering anything (the handler did not run)."""

    @abc.abstractmethod
    def wait_for(self, bus: Connection, command_id: str, timeout: float) -> None:
        """Block up to ``timeout`` seconds, or until ``command_id``'s state may have changed."""

    def guard(self, bus: Connection) -> ReplyMemory:
        """This store as the Dispatcher consults it: ``claim`` before a command's handler, ``settle`` after.

        ``Dispatcher.dispatch(..., memory=store.guard(bus))`` answers a
        repeated ``command_id`` from the store; the WorkerPool does this,
        after the envelope is decoded (so the id is read once).
        """
        return _Guard(self, bus)

    def wrap(self, dispatch: Dispatch, bus: Connection) -> Dispatch:
        """``dispatch`` (``Dispatcher.dispatch``, or a function like it) with commands answered through this store.

        For a dispatch function of your own; a WorkerPool passes
        :meth:`guard` to its Dispatcher instead.
        """
        guard = self.guard(bus)

        def guarded(
            route: HandlerRoute,
            data: bytes,
            max_payload: int = 0,
            *,
            headers: Headers = None,
            deadline: Optional[float] = None,
        ) -> ReplyPair:
            if route.kind is not Kind.COMMAND:
                return dispatch(route, data, max_payload, headers=headers, deadline=deadline)
            command_id, _ = peek_id(data)
            if not command_id or (deadline is not None and time.monotonic() >= deadline):
                # Invalid (dispatch answers 400), or not going to start (504): nothing to remember.
                return dispatch(route, data, max_payload, headers=headers, deadline=deadline)
            answer, token = guard.claim(route, command_id, deadline)
            if answer is not None:
                return answer
            try:
                reply = dispatch(route, data, max_payload, headers=headers, deadline=deadline)
            except BaseException:
                guard.settle(route, command_id, token, None)
                raise
            guard.settle(route, command_id, token, reply)
            return reply

        return guarded


class _Guard:
    """An :class:`IdempotencyStore` as a :class:`~natsbus.dispatch.ReplyMemory`: its four methods, in order."""

    __slots__ = ("bus", "store")

    def __init__(self, store: IdempotencyStore, bus: Connection) -> None:
        self.store = store
        self.bus = bus

    def claim(self, route: HandlerRoute, command_id: str, deadline: Optional[float]) -> Tuple[Optional[ReplyPair], Any]:
        """``(reply, None)``: answer with it (remembered, or busy); ``(None, token)``: run the handler."""
        store, bus = self.store, self.bus
        give_up = time.monotonic() + store.wait
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            try:
                claim = store.begin(bus, command_id)
            except NatsBusError as exc:
                logger.warning("%s %s: the idempotency store failed: %s", route.subject, command_id, exc)
                return _busy(
                    command_id,
                    f"Service busy: cannot check whether command {command_id} already ran ({exc}); retry later",
                    route.subject,
                ), None
            if claim.state is ClaimState.DONE and claim.reply is not None:
                store.count_replayed()
                logger.info("%s %s: a repeat; answered with the reply already sent", route.subject, command_id)
                return claim.reply, None
            if claim.state is ClaimState.OWNED:
                return None, claim.token
            left = give_up - time.monotonic()
            if left <= 0:
                return _still_running(command_id, route), None
            store.wait_for(bus, command_id, left)

    def settle(self, route: HandlerRoute, command_id: str, token: Any, reply: Optional[ReplyPair]) -> None:
        """Remember ``reply`` for the claim ``token``, or forget the claim (``None``, not started, busy)."""
        store = self.store
        if reply is None or isinstance(reply, NotStarted) or _busy_reply(reply):
            # The handler raised past the dispatcher, did not start (its caller gave up), or
            # answered busy (it says it did nothing; retry later): a repeat runs it.
            _quietly(store.abandon, self.bus, command_id, token)
            return
        try:  # as a plain pair (a Late reply, which the watchdog answered, is still the handler's)
            store.finish(self.bus, command_id, token, (reply[0], reply[1]))
        except NatsBusError as exc:
            logger.error(
                "%s %s: could not remember the reply (%s); a repeat will run it again",
                route.subject,
                command_id,
                exc,
            )


def _busy_reply(reply: ReplyPair) -> bool:
    headers = reply[1]
    return bool(headers) and headers.get(ERROR_CODE_HEADER) == BUSY_CODE  # type: ignore[union-attr]


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except NatsBusError as exc:
        logger.warning("releasing an idempotency claim failed: %s", exc)


def _busy(command_id: str, text: str, subject: str) -> ReplyPair:
    return error_reply(Kind.COMMAND, command_id, BusyError(text, subject=subject))


def _still_running(command_id: str, route: HandlerRoute) -> ReplyPair:
    return _busy(
        command_id,
        f"Service busy: command {command_id} is still running for an earlier request; retry later for its result",
        route.subject,
    )


class MemoryIdempotencyStore(IdempotencyStore):
    """Replies remembered in this process: bounded, with a TTL.

    A repeat that reaches another instance of the service, or this one
    after a restart, runs again: use :class:`KeyValueIdempotencyStore` to
    share the memory between instances.

    Args:
        ttl: Seconds a reply is remembered (default 10 minutes).
        max_entries: Replies kept at most; the oldest go first.
        wait: Seconds a repeat waits for a first request still running.
        max_bytes: Reply bytes (bodies and headers) kept at most, or ``None``
            for no bound; the oldest go first, and a reply larger than this
            alone is not kept.

    The bounds are enforced in batches, so that remembering a reply costs
    a worker thread two dictionary operations and never a wait for another
    thread: a store may hold up to 32 replies (or 1% of ``max_entries``, if
    fewer) over ``max_entries`` until the next batch, and a reply of
    ``max_bytes / 256`` or more is trimmed for at once. ``len()`` trims
    first.
    """

    def __init__(
        self,
        ttl: float = 600.0,
        max_entries: int = 10_000,
        *,
        wait: float = 30.0,
        max_bytes: Optional[int] = None,
    ) -> None:
        super().__init__(ttl, wait)
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes must be >= 1 or None, got {max_bytes!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # command_id -> the token of the request running it (a one-item list: the event
        # a repeat waits on, made on demand), or the entry remembering its reply:
        # (expires, reply, command_id), a success reply (no headers) kept as its body
        # alone. A first request claims with one atomic setdefault; its reply replaces
        # its token in one assignment. Neither waits for another worker thread (threads
        # that queue on a lock while they contend for the GIL queue up behind each
        # other at every switch): the bookkeeping is done in batches, by whichever
        # thread finds the lock free. Only forgetting an expired reply in begin() (a
        # repeat after the TTL) waits for the lock: a dict cannot compare-and-delete.
        self._state: Dict[str, Union[_Token, _Entry]] = {}
        # Entries remembered since the last trim, for the trimmer to count and order.
        self._fresh: Deque[_Entry] = collections.deque()
        # Only the trimmer (who holds _lock) touches these: every counted entry, oldest
        # first (one replaced since stays until trimmed), and the size of them all.
        self._order: Deque[_Entry] = collections.deque()
        self._bytes = 0
        self._lock = threading.Lock()
        # Set before trying the lock; whoever held it looks again after letting go, so a
        # trim asked for while the lock was taken is not skipped.
        self._trim_wanted = False
        # Trim after this many replies (bounds are kept give or take the last batch),
        # and at once after a reply this big.
        self._batch = max(1, min(_BATCH, max_entries // 100))
        self._big = 0 if max_bytes is None else max(1, max_bytes // 256)
        # Who waits for a running command makes its event under this lock (repeats only).
        self._wait_lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._trim(time.monotonic())
            count = len(self._order)
        self._trim_if_free()  # what was remembered meanwhile
        return count

    def begin(self, bus: Connection, command_id: str) -> Claim:
        """See :meth:`IdempotencyStore.begin`."""
        state = self._state
        while True:
            token = self.owns(command_id)
            if token is not None:
                return Claim(ClaimState.OWNED, token=token)
            value = state.get(command_id)
            if type(value) is list:
                return Claim(ClaimState.RUNNING)
            if type(value) is tuple:
                if value[0] > time.monotonic():
                    return Claim(ClaimState.DONE, reply=_as_reply(value[1]))
                with self._lock:  # past its TTL: forget it (unless replaced meanwhile), then claim
                    if state.get(command_id) is value:
                        del state[command_id]
                self._trim_if_free()  # what was remembered meanwhile
            # else: it went between the two looks: look again

    def guard(self, bus: Connection) -> ReplyMemory:
        """See :meth:`IdempotencyStore.guard` (a first request claims with no lock and no :class:`Claim`).

        A subclass that overrides :meth:`begin`, :meth:`finish` or
        :meth:`abandon` gets the general guard, so that its methods see
        every request.
        """
        if any(getattr(type(self), name) is not getattr(MemoryIdempotencyStore, name) for name in _OVERRIDABLE):
            return _Guard(self, bus)
        return _MemoryGuard(self, bus)

    def owns(self, command_id: str) -> Optional[_Token]:
        """Claim ``command_id`` when it is neither remembered nor running: the token, else ``None``.

        A remembered reply past its TTL makes this ``None`` too: :meth:`begin` forgets it.
        """
        token: _Token = [None]
        return token if self._state.setdefault(command_id, token) is token else None

    def finish(self, bus: Connection, command_id: str, token: Any, reply: ReplyPair) -> None:
        """See :meth:`IdempotencyStore.finish`."""
        self._remember(command_id, token, reply[0] if reply[1] is None else reply, _size(reply))

    def _remember(self, command_id: str, token: _Token, kept: Union[bytes, ReplyPair], size: int) -> None:
        big = size >= self._big and self.max_bytes is not None
        if big and size > self.max_bytes:  # type: ignore[operator]  # too big to keep: forget the claim
            self.abandon(None, command_id, token)  # type: ignore[arg-type]  # the memory store needs no bus
            return
        entry = self._state[command_id] = (time.monotonic() + self.ttl, kept, command_id)
        fresh = self._fresh
        fresh.append(entry)
        event = token[0]
        if event is not None:  # a repeat waits (wait_for made it before looking at _state again)
            event.set()
        if big or len(fresh) >= self._batch:
            self._trim_wanted = True
            self._trim_if_free()

    def _trim_if_free(self) -> None:
        """Trim while a trim is wanted and the lock is free (whoever held the lock calls this after letting go)."""
        lock = self._lock
        while self._trim_wanted and lock.acquire(False):
            try:
                self._trim_wanted = False
                self._trim(time.monotonic())
            finally:
                lock.release()

    def _trim(self, now: float) -> None:
        """With the lock: count and order the fresh entries, then drop the expired and the oldest over the bounds."""
        fresh, order, state = self._fresh, self._order, self._state
        max_entries, max_bytes = self.max_entries, self.max_bytes
        added = 0
        while fresh:
            entry = fresh.popleft()
            order.append(entry)
            kept = entry[1]
            added += _kept_size(kept)
        total = self._bytes + added
        while order:
            entry = order[0]
            if entry[0] > now and len(order) <= max_entries and (max_bytes is None or total <= max_bytes):
                break
            order.popleft()
            kept = entry[1]
            total -= _kept_size(kept)
            if state.get(entry[2]) is entry:  # not replaced since (only the lock's holder deletes an entry)
                del state[entry[2]]
        self._bytes = total

    def abandon(self, bus: Connection, command_id: str, token: Any) -> None:
        """See :meth:`IdempotencyStore.abandon`."""
        state = self._state
        if state.get(command_id) is token:  # only its owner removes a claim
            del state[command_id]
        event = token[0]
        if event is not None:
            event.set()

    def wait_for(self, bus: Connection, command_id: str, timeout: float) -> None:
        """See :meth:`IdempotencyStore.wait_for`."""
        token = self._state.get(command_id)
        if type(token) is not list:
            return  # finished (or abandoned) meanwhile: look again
        with self._wait_lock:
            event = token[0]
            if event is None:  # the first repeat to wait: most commands never get one
                event = token[0] = threading.Event()
        if self._state.get(command_id) is not token:
            return  # finished before the event was there to be set: look again
        event.wait(timeout)


class _MemoryGuard(_Guard):
    """The memory store's guard: a first request (nearly all) claims with one dict operation."""

    __slots__ = ("memory",)

    def __init__(self, store: MemoryIdempotencyStore, bus: Connection) -> None:
        super().__init__(store, bus)
        self.memory = store

    def claim(self, route: HandlerRoute, command_id: str, deadline: Optional[float]) -> Tuple[Optional[ReplyPair], Any]:
        """See :meth:`_Guard.claim`."""
        token = self.memory.owns(command_id)
        if token is not None:
            return None, token
        return super().claim(route, command_id, deadline)  # a repeat: answer, or wait for the first

    def settle(self, route: HandlerRoute, command_id: str, token: Any, reply: Optional[ReplyPair]) -> None:
        """See :meth:`_Guard.settle` (a success reply, nearly all, is remembered straight away)."""
        if type(reply) is tuple and reply[1] is None:
            body = reply[0]
            self.memory._remember(command_id, token, body, len(body))
        else:
            super().settle(route, command_id, token, reply)


#: A running command's token: the event a repeat waits on, once one does.
_Token = List[Optional[threading.Event]]

#: Replies remembered between two trims of a large store.
_BATCH = 32

#: The methods that, overridden, make :meth:`MemoryIdempotencyStore.guard` the general one.
_OVERRIDABLE = ("begin", "finish", "abandon")


#: A remembered reply: when it expires (``time.monotonic()``), the reply, its ``command_id``.
_Entry = Tuple[float, Union[bytes, ReplyPair], str]


def _as_reply(kept: Union[bytes, ReplyPair]) -> ReplyPair:
    return (kept, None) if isinstance(kept, bytes) else kept


def _kept_size(kept: Union[bytes, ReplyPair]) -> int:
    return len(kept) if type(kept) is bytes else _size(kept)  # type: ignore[arg-type]


def _size(reply: ReplyPair) -> int:
    body, headers = reply
    return len(body) + (sum(len(k) + len(v) for k, v in headers.items()) if headers else 0)


def default_store() -> MemoryIdempotencyStore:
    """The store a WorkerPool uses unless told otherwise: replies kept 5 minutes, 10,000 or 64 MiB at most."""
    return MemoryIdempotencyStore(ttl=300.0, max_entries=10_000, max_bytes=64 * 1024 * 1024)


class KeyValueIdempotencyStore(IdempotencyStore):
    """Replies remembered in a JetStream key-value bucket, shared by every instance.

    The bucket is created on the pool's ``start()`` with these settings
    (or checked, when it exists: another ``ttl``, ``replicas`` or
    ``storage`` is an :class:`~natsbus.IncompatibleSettingsError`).

    Args:
        bucket: The bucket name.
        ttl: Seconds a reply is remembered (the bucket's max age).
        replicas: Copies in a JetStream cluster.
        storage: ``"file"`` or ``"memory"``.
        wait: Seconds a repeat waits for a first request still running.
        lease: Seconds after which a command claimed by a request that
            never finished (its process died) may be claimed again. Keep it
            above the handler's longest run: a repeat past it runs the
            handler a second time.
        poll: Seconds between looks at the key while waiting.

    The lease runs on the NATS server's clock, never on the clocks of the
    hosts that claim and take over (they may disagree by any amount): the
    claim's age is the time the server stamped on it, against the time it
    stamps on a write of this store's own (one small key per process,
    ``natsbus.clock.{id}``, kept for ``ttl``), carried forward on this
    host's monotonic clock. The server stamps whole seconds, so a claim is
    taken over between ``lease`` and about ``lease + 2`` seconds after it
    was written. In a cluster the stamps come from the bucket's stream
    leader; a leader change makes the lease as precise as the servers'
    clocks agree.
    """

    def __init__(
        self,
        bucket: str = "natsbus_idempotency",
        ttl: float = 600.0,
        *,
        replicas: int = 1,
        storage: str = "file",
        wait: float = 30.0,
        lease: float = 120.0,
        poll: float = 0.05,
    ) -> None:
        super().__init__(ttl, wait)
        check_bucket_name("bucket", bucket)
        check_replicas(replicas)
        check_storage(storage)
        if lease <= 0:
            raise ConfigError(f"lease must be > 0 seconds, got {lease!r}")
        if poll <= 0:
            raise ConfigError(f"poll must be > 0 seconds, got {poll!r}")
        self.bucket = bucket
        self.replicas = replicas
        self.storage = storage
        self.lease = lease
        self.poll = poll
        self._owner = uuid.uuid4().hex
        self._timeout = 5.0
        self._clock_key = f"natsbus.clock.{self._owner}"  # never a record key: those have no "."
        # The server's clock: (a time it stamped, time.monotonic() just after), re-read after a while.
        self._clock: Optional[Tuple[float, float]] = None
        self._clock_refresh = 60.0

    def open(self, bus: Connection) -> None:
        """Create the bucket, or check the existing one's settings."""
        spec = BucketSpec(
            self.bucket,
            self.ttl,
            self.replicas,
            self.storage,
            "natsbus: replies to commands, by command_id (natsbus.idempotency)",
        )
        js = jetstream_for(bus)
        bus.live_transport().run(spec.ensure, js, timeout=self._timeout * 2)

    def _run(self, bus: Connection, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return bus.live_transport().run(fn, timeout=self._timeout)
        except TimeoutError as exc:
            raise JetStreamError(f"key-value bucket {self.bucket} did not answer within {self._timeout:g}s") from exc

    def begin(self, bus: Connection, command_id: str) -> Claim:
        """See :meth:`IdempotencyStore.begin`: the revision-checked create decides the owner."""
        js = jetstream_for(bus)
        key = record_key(command_id)
        for _ in range(3):  # a key deleted between our create and get: try again
            marker = running_record(command_id, self._owner)
            revision = self._run(bus, partial(js.kv_create, self.bucket, key, marker))
            if revision is not None:
                return Claim(ClaimState.OWNED, token=revision)
            entry = self._run(bus, partial(js.kv_get, self.bucket, key))
            if entry is None:
                continue
            record = read_record(entry.value, command_id)
            if record is None:
                raise JetStreamError(f"bucket {self.bucket} holds something else under key {key}")
            if record.get("state") == "done":
                return Claim(ClaimState.DONE, reply=record_reply(record))
            age = self._claim_age(bus, entry.revision)
            if age is not None and age > self.lease:
                taken = self._run(bus, partial(js.kv_update, self.bucket, key, marker, entry.revision))
                if taken is not None:
                    logger.warning(
                        "%s: claimed by a request that did not finish within the %gs lease; running it again",
                        command_id,
                        self.lease,
                    )
                    return Claim(ClaimState.OWNED, token=taken)
            return Claim(ClaimState.RUNNING)
        return Claim(ClaimState.RUNNING)

    def _claim_age(self, bus: Connection, revision: int) -> Optional[float]:
        """Seconds since the server stored ``revision``, at least (its clock); ``None`` when unknown.

        The server stamps whole seconds: a stamp ``t`` means a time in
        ``[t, t + 1)``, so the age is counted from ``t + 1``, and "now" is
        the lower end of what the server's clock can read (see
        :meth:`_server_now`). Never more than the real age, so a lease is
        never cut short; at most about 2 s less.
        """
        stored = self._run(bus, partial(jetstream_for(bus).get_message, f"KV_{self.bucket}", revision))
        written = _server_seconds(stored.time) if stored is not None else None
        if written is None:  # replaced since it was read (looked at again), or no stamp
            return None
        now = self._server_now(bus)
        return None if now is None else now - (written + 1.0)

    def _server_now(self, bus: Connection) -> Optional[float]:
        """The server's clock now, at least: a write of our own, stamped by the server, carried forward.

        A write stamped ``t`` happened at a server time ``>= t``, before
        ``time.monotonic()`` read ``m``; at ``m' >= m`` the server's clock
        reads at least ``t + (m' - m)`` (this host's monotonic clock
        measures the time elapsed, not the time of day). Re-read every
        minute, so a server whose clock was set meanwhile is followed.
        """
        clock = self._clock
        if clock is None or time.monotonic() - clock[1] > self._clock_refresh:
            js = jetstream_for(bus)
            revision = self._run(bus, partial(js.kv_put, self.bucket, self._clock_key, b""))
            stored = self._run(bus, partial(js.get_message, f"KV_{self.bucket}", revision))
            after = time.monotonic()
            stamped = _server_seconds(stored.time) if stored is not None else None
            if stamped is None:
                return None
            clock = self._clock = (stamped, after)
        return clock[0] + (time.monotonic() - clock[1])

    def finish(self, bus: Connection, command_id: str, token: Any, reply: ReplyPair) -> None:
        """See :meth:`IdempotencyStore.finish`: a write checked against our claim's revision."""
        js = jetstream_for(bus)
        key = record_key(command_id)
        record = done_record(command_id, "", reply)
        if self._run(bus, partial(js.kv_update, self.bucket, key, record, token)) is None:
            logger.warning("%s: another request took the command over; its reply is the one remembered", command_id)

    def abandon(self, bus: Connection, command_id: str, token: Any) -> None:
        """See :meth:`IdempotencyStore.abandon`."""
        js = jetstream_for(bus)
        key = record_key(command_id)
        self._run(bus, partial(js.kv_delete, self.bucket, key, token))

    def wait_for(self, bus: Connection, command_id: str, timeout: float) -> None:
        """See :meth:`IdempotencyStore.wait_for`: the key is polled every ``poll`` seconds."""
        time.sleep(min(timeout, self.poll))


def _server_seconds(stamp: str) -> Optional[float]:
    """A time the server stamped (RFC 3339, UTC) as POSIX seconds; ``None`` when there is none."""
    try:
        parsed = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
