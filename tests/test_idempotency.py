"""Idempotent commands: a repeated command_id gets the reply already sent, the handler runs once."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import attrs
import effects
import pytest
from waiting import wait_until

from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConflictError,
    IncompatibleSettingsError,
    KeyValueIdempotencyStore,
    MemoryIdempotencyStore,
    Query,
    QueryBus,
    RequestTimeoutError,
    RetryPolicy,
    WorkerPool,
    create_request_envelope,
    current_request,
)
from natsbus._records import record_key, running_record
from natsbus._transport.jetstream import jetstream_for
from natsbus.dispatch import Dispatcher, NotStarted
from natsbus.idempotency import Claim, ClaimState
from natsbus.messages import Kind

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Tally(Command[int]):
    n: int


@attrs.frozen
class Refuse(Command[None]):
    n: int


@attrs.frozen
class Count(Query[int]):
    n: int


def command_body(message_type: str, command_id: str, payload: Any) -> bytes:
    return create_request_envelope(message_type, command_id, "test", payload).to_bytes()


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "effects.sqlite"
    effects.create(path)
    return path


def tally_handler(db: Path, gate: Optional[threading.Event] = None) -> Callable[[Tally], int]:
    def tally(cmd: Tally) -> int:
        ctx = current_request()
        assert ctx is not None
        if gate is not None:
            gate.wait(10)  # the test decides when the first run may finish
        return effects.record(db, ctx.message_id, cmd.n)

    return tally


# -- the in-memory store, without a server ------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_forgets_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("natsbus.idempotency.time.monotonic", clock)
    store = MemoryIdempotencyStore(ttl=60.0)
    bus: Any = None
    claim = store.begin(bus, "cmd-1")
    assert claim.state is ClaimState.OWNED
    store.finish(bus, "cmd-1", claim.token, (b"reply", {"h": "v"}))
    clock.now += 59.0
    assert store.begin(bus, "cmd-1").reply == (b"reply", {"h": "v"})
    clock.now += 2.0
    assert store.begin(bus, "cmd-1").state is ClaimState.OWNED  # forgotten: runs again
    assert len(store) == 0


def test_a_claim_state_given_as_its_string_becomes_the_enum() -> None:
    # Stores written before ClaimState return Claim("owned", ...): still understood.
    assert [Claim(text).state for text in ("owned", "done", "running")] == list(ClaimState)
    assert Claim(ClaimState.DONE, reply=(b"r", None)).state == "done"


def test_memory_store_keeps_at_most_max_entries_dropping_the_oldest() -> None:
    store = MemoryIdempotencyStore(ttl=600.0, max_entries=3)
    bus: Any = None
    for i in range(5):
        claim = store.begin(bus, f"cmd-{i}")
        store.finish(bus, f"cmd-{i}", claim.token, (str(i).encode(), None))
    assert len(store) == 3
    assert [store.begin(bus, f"cmd-{i}").state for i in (2, 3, 4)] == [ClaimState.DONE] * 3
    assert store.begin(bus, "cmd-0").state is ClaimState.OWNED


def test_memory_store_repeat_waits_for_the_first_to_finish() -> None:
    store = MemoryIdempotencyStore()
    bus: Any = None
    first = store.begin(bus, "cmd-x")
    assert store.begin(bus, "cmd-x").state is ClaimState.RUNNING
    seen: List[Any] = []

    def repeat() -> None:
        store.wait_for(bus, "cmd-x", 10.0)
        seen.append(store.begin(bus, "cmd-x"))

    waiter = threading.Thread(target=repeat)
    waiter.start()
    store.finish(bus, "cmd-x", first.token, (b"the reply", None))
    waiter.join(10)
    assert [claim.reply for claim in seen] == [(b"the reply", None)]


def _together(threads: int, work: Callable[[int], None]) -> None:
    """Run ``work(0..threads-1)`` on that many threads, started at one barrier."""
    barrier = threading.Barrier(threads)
    errors: List[BaseException] = []

    def run(index: int) -> None:
        barrier.wait(10)
        try:
            work(index)
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(index,)) for index in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(30)
    assert errors == []


def test_memory_store_one_of_many_threads_claiming_one_id_owns_it() -> None:
    store = MemoryIdempotencyStore()
    route = Dispatcher("svc").register(lambda cmd: cmd.n, message_type=Tally)
    guard = store.guard(None)  # type: ignore[arg-type]  # the memory store never uses the bus
    for round_ in range(50):
        command_id = f"cmd-{round_}"
        seen: List[Any] = []
        _together(8, lambda _: seen.append(guard.claim(route, command_id, time.monotonic())))  # noqa: B023
        owners = [token for answer, token in seen if answer is None]
        busy = [answer for answer, _ in seen if answer is not None]
        assert len(owners) == 1 and len(busy) == 7  # the others waited out their deadline, answered busy
        guard.settle(route, command_id, owners[0], (b"r", None))
        assert store.begin(None, command_id).reply == (b"r", None)  # type: ignore[arg-type]


def test_memory_store_keeps_every_reply_remembered_by_threads_at_once() -> None:
    store = MemoryIdempotencyStore(max_entries=100_000)
    route = Dispatcher("svc").register(lambda cmd: cmd.n, message_type=Tally)
    guard = store.guard(None)  # type: ignore[arg-type]  # the memory store never uses the bus

    def remember(thread: int) -> None:
        for n in range(2000):
            command_id = f"cmd-{thread}-{n}"
            answer, token = guard.claim(route, command_id, None)
            assert answer is None
            guard.settle(route, command_id, token, (command_id.encode(), None))

    _together(8, remember)
    assert len(store) == 16_000
    for thread in range(8):
        for n in range(0, 2000, 7):
            command_id = f"cmd-{thread}-{n}"
            assert store.begin(None, command_id).reply == (command_id.encode(), None)  # type: ignore[arg-type]


def test_memory_store_bounds_hold_once_threads_at_once_stop() -> None:
    store = MemoryIdempotencyStore(max_entries=1000, max_bytes=50_000)
    bus: Any = None

    def remember(thread: int) -> None:
        for n in range(1000):
            claim = store.begin(bus, f"cmd-{thread}-{n}")
            store.finish(bus, f"cmd-{thread}-{n}", claim.token, (b"x" * 40, None))

    _together(8, remember)
    assert len(store) == 1000  # 40,000 bytes: the count bounds it
    remembered = sum(
        store.begin(bus, f"cmd-{thread}-{n}").state is ClaimState.DONE for thread in range(8) for n in range(1000)
    )
    assert remembered == 1000
    for n in range(10):  # larger replies: now the bytes bound it
        claim = store.begin(bus, f"big-{n}")
        store.finish(bus, f"big-{n}", claim.token, (b"y" * 10_000, None))
    assert len(store) == 5


def test_memory_store_big_store_trims_in_batches_and_len_trims_first() -> None:
    store = MemoryIdempotencyStore(max_entries=10_000)
    bus: Any = None
    for n in range(10_100):
        claim = store.begin(bus, f"cmd-{n}")
        store.finish(bus, f"cmd-{n}", claim.token, (b"r", None))
    assert len(store._state) <= 10_000 + 32  # trimmed every 32 replies
    assert len(store) == 10_000
    assert store.begin(bus, "cmd-99").state is ClaimState.OWNED
    assert store.begin(bus, "cmd-100").state is ClaimState.DONE


@pytest.mark.parametrize("method", ["owns", "finish", "abandon"])
def test_a_memory_store_subclass_that_overrides_a_method_has_it_called(method: str) -> None:
    seen: List[str] = []

    def record(self: Any, *args: Any) -> Any:
        seen.append(method)
        return getattr(MemoryIdempotencyStore, method)(self, *args)

    audited = type("Audited", (MemoryIdempotencyStore,), {method: record})()
    dispatcher = Dispatcher("svc")
    route = dispatcher.register(lambda cmd: cmd.n, message_type=Tally)
    refused = dispatcher.register(_refuse, message_type=Refuse)
    memory = audited.guard(None)
    dispatcher.dispatch(route, command_body("Tally", "cmd-1", {"n": 1}), memory=memory)
    if method == "abandon":  # a busy reply: nothing done, the claim is released
        dispatcher.dispatch(refused, command_body("Refuse", "cmd-2", {"n": 1}), memory=memory)
    assert seen == [method]


def _refuse(cmd: Refuse) -> None:
    raise BusyError("not now")


def _hold_the_trim_lock(store: MemoryIdempotencyStore) -> Callable[[], None]:
    """Another thread holds the store's trim lock (a len() mid-trim) until the returned call."""
    real_trim = store._trim
    trimmed, gate = threading.Event(), threading.Event()

    def trim_then_hold(now: float) -> None:
        real_trim(now)
        trimmed.set()
        gate.wait(10)

    store._trim = trim_then_hold  # type: ignore[method-assign]
    other = threading.Thread(target=len, args=(store,))
    other.start()
    assert trimmed.wait(10)

    def release() -> None:
        gate.set()
        other.join(10)
        del store._trim  # the real method again

    return release


def test_memory_store_big_replies_remembered_while_the_trim_lock_is_held_are_trimmed_for_after() -> None:
    store = MemoryIdempotencyStore(max_entries=1000, max_bytes=1000)
    bus: Any = None
    release = _hold_the_trim_lock(store)
    for n in range(4):
        claim = store.begin(bus, f"big-{n}")
        store.finish(bus, f"big-{n}", claim.token, (b"x" * 600, None))
    release()
    # Idle from here on (no len(), no more replies): the bytes bound holds all the same.
    assert [type(store._state.get(f"big-{n}")) for n in range(4)] == [type(None)] * 3 + [tuple]


def test_memory_store_a_batch_full_while_the_trim_lock_is_held_is_trimmed_after() -> None:
    store = MemoryIdempotencyStore(max_entries=100)  # trimmed every reply
    bus: Any = None
    release = _hold_the_trim_lock(store)
    for n in range(150):
        claim = store.begin(bus, f"cmd-{n}")
        store.finish(bus, f"cmd-{n}", claim.token, (b"r", None))
    release()
    assert len(store._state) == 100


def test_wrap_forgets_a_not_started_reply_whatever_its_text_but_remembers_a_handlers_own_504() -> None:
    store = MemoryIdempotencyStore()
    route = Dispatcher("svc").register(lambda cmd: cmd.n, message_type=Tally)
    body = command_body("Tally", "cmd-504", {"n": 1})
    not_started = NotStarted(b"late", {"Nats-Service-Error-Code": "504", "Nats-Service-Error": "any text at all"})
    # A handler's own 504, worded as the dispatcher words "not started": it ran, so it is remembered.
    ran = (
        b"ran",
        {"Nats-Service-Error-Code": "504", "Nats-Service-Error": "Deadline exceeded: the caller gave up before I did"},
    )
    replies = [not_started, ran]
    calls: List[bytes] = []

    def dispatch(route: Any, data: bytes, max_payload: int = 0, **options: Any) -> Any:
        calls.append(data)
        return replies.pop(0)

    guarded = store.wrap(dispatch, None)  # type: ignore[arg-type]  # the memory store never uses the bus
    assert guarded(route, body) is not_started
    assert len(store) == 0  # not remembered: the retry runs
    assert guarded(route, body) == ran
    assert guarded(route, body) == ran  # remembered: answered without dispatching
    assert len(calls) == 2


def test_dispatcher_with_a_store_answers_a_repeat_without_running_the_handler() -> None:
    store = MemoryIdempotencyStore()
    ran: List[int] = []
    dispatcher = Dispatcher("svc")
    route = dispatcher.register(lambda cmd: ran.append(cmd.n) or len(ran), message_type=Tally)
    memory = store.guard(None)  # type: ignore[arg-type]  # the memory store never uses the bus
    body = command_body("Tally", "cmd-once", {"n": 7})
    first = dispatcher.dispatch(route, body, memory=memory)
    assert dispatcher.dispatch(route, body, memory=memory) == first  # the same bytes, from the store
    assert ran == [7] and store.replayed == 1
    other = dispatcher.dispatch(route, command_body("Tally", "cmd-other", {"n": 8}), memory=memory)
    assert json.loads(other[0])["payload"] == 2 and ran == [7, 8]


def test_dispatcher_with_a_store_remembers_nothing_it_did_not_start_or_could_not_read() -> None:
    store = MemoryIdempotencyStore()
    dispatcher = Dispatcher("svc")
    route = dispatcher.register(lambda cmd: cmd.n, message_type=Tally)
    memory = store.guard(None)  # type: ignore[arg-type]
    late = dispatcher.dispatch(
        route, command_body("Tally", "cmd-late", {"n": 1}), memory=memory, deadline=time.monotonic() - 1
    )
    assert isinstance(late, NotStarted)
    invalid = dispatcher.dispatch(route, command_body("Tally", "cmd-bad", {"n": "not a number"}), memory=memory)
    assert invalid[1] is not None and invalid[1]["Nats-Service-Error-Code"] == "400"
    assert len(store) == 0  # neither remembered: a retry of either is handled afresh
    retried = dispatcher.dispatch(route, command_body("Tally", "cmd-late", {"n": 1}), memory=memory)
    assert json.loads(retried[0])["success"] is True and len(store) == 1


def test_dispatcher_with_a_store_releases_the_claim_when_the_handler_raises_past_it() -> None:
    store = MemoryIdempotencyStore()
    calls: List[int] = []

    def handler(cmd: Tally) -> int:
        calls.append(cmd.n)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return cmd.n

    dispatcher = Dispatcher("svc")
    route = dispatcher.register(handler, message_type=Tally)
    memory = store.guard(None)  # type: ignore[arg-type]
    body = command_body("Tally", "cmd-interrupted", {"n": 3})
    with pytest.raises(KeyboardInterrupt):
        dispatcher.dispatch(route, body, memory=memory)
    # Released, not left "running": the retry runs at once instead of waiting out the store's wait.
    assert json.loads(dispatcher.dispatch(route, body, memory=memory)[0])["payload"] == 3
    assert calls == [3, 3]


def test_a_memory_store_subclass_that_overrides_begin_is_consulted_for_first_requests() -> None:
    seen: List[str] = []

    class Audited(MemoryIdempotencyStore):
        def begin(self, bus: Any, command_id: str) -> Claim:
            seen.append(command_id)
            return super().begin(bus, command_id)

    dispatcher = Dispatcher("svc")
    route = dispatcher.register(lambda cmd: cmd.n, message_type=Tally)
    memory = Audited().guard(None)  # type: ignore[arg-type]
    dispatcher.dispatch(route, command_body("Tally", "cmd-audited", {"n": 1}), memory=memory)
    assert seen == ["cmd-audited"]  # the fast path of the plain memory store does not skip it


def test_dispatcher_with_a_store_never_deduplicates_queries() -> None:
    store = MemoryIdempotencyStore()
    ran: List[int] = []
    dispatcher = Dispatcher("svc")
    route = dispatcher.register(lambda q: ran.append(q.n) or q.n, message_type=Count)
    memory = store.guard(None)  # type: ignore[arg-type]
    body = create_request_envelope("Count", "q-1", "test", {"n": 2}, kind=Kind.QUERY).to_bytes()
    dispatcher.dispatch(route, body, memory=memory)
    dispatcher.dispatch(route, body, memory=memory)
    assert ran == [2, 2] and len(store) == 0


# -- request-reply with a store ------------------------------------------------------------


def test_command_retried_after_a_client_timeout_executes_once(bus: Bus, nats_url: str, db: Path) -> None:
    gate = threading.Event()
    pool = WorkerPool(
        bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", max_workers=4, idempotency=MemoryIdempotencyStore()
    )
    pool.register(tally_handler(db, gate))
    retrying = CommandBus(bus, timeout=0.3, retry=RetryPolicy(attempts=40, backoff=0.05, max_backoff=0.1))
    with pool:
        results: List[int] = []
        errors: List[BaseException] = []

        def call() -> None:
            try:
                results.append(retrying.execute(Tally(21)))
            except BaseException as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        # The first attempt runs (held by the gate) and times out; a retry with the
        # same command_id arrives and waits for it instead of running it again.
        wait_until(lambda: pool.inflight >= 2, what="a retry arriving while the first run is held")
        gate.set()
        caller.join(20)
        assert (results, errors) == ([42], [])
        assert effects.count(db) == 1
        assert effects.count(db, "invocations") == 1
        assert pool.idempotency is not None and pool.idempotency.replayed >= 1


def test_repeat_after_the_reply_gets_the_same_bytes_without_running(bus: Bus, db: Path) -> None:
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=MemoryIdempotencyStore())
    pool.register(tally_handler(db))
    body = command_body("Tally", "cmd-fixed-1", {"n": 5})
    with pool:
        first = bus.request("commands.Tally", body, timeout=5)
        second = bus.request("commands.Tally", body, timeout=5)
    assert second.data == first.data
    assert effects.count(db) == 1


def test_a_command_sent_twice_with_one_explicit_command_id_runs_once(bus: Bus, db: Path) -> None:
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=MemoryIdempotencyStore())
    pool.register(tally_handler(db))
    commands = CommandBus(bus)
    with pool:
        first = commands.execute(Tally(3), command_id="batch-key-line-1")
        again = commands.submit(Tally(3), command_id="batch-key-line-1").result(5)
        commands.execute(Tally(3), command_id="batch-key-line-2")
    assert again == first
    assert effects.per_command(db) == {"batch-key-line-1": 1, "batch-key-line-2": 1}


def test_error_replies_are_remembered_with_their_headers(bus: Bus, db: Path) -> None:
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=MemoryIdempotencyStore())
    runs: List[int] = []

    @pool.register
    def refuse(cmd: Refuse) -> None:
        runs.append(cmd.n)
        raise ConflictError(f"already taken: {cmd.n} (run {len(runs)})")

    body = command_body("Refuse", "cmd-fixed-2", {"n": 7})
    with pool:
        first = bus.request("commands.Refuse", body, timeout=5)
        second = bus.request("commands.Refuse", body, timeout=5)
    assert (second.data, second.headers) == (first.data, first.headers)
    assert first.headers is not None and first.headers["Nats-Service-Error-Code"] == "409"
    assert runs == [7]


def test_queries_are_never_deduplicated(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=MemoryIdempotencyStore())
    runs: List[int] = []

    @pool.register
    def count(query: Count) -> int:
        runs.append(query.n)
        return len(runs)

    body = create_request_envelope("Count", "qry-fixed", "test", {"n": 1}).to_bytes()
    with pool:
        bus.request("queries.Count", body, timeout=5)
        bus.request("queries.Count", body, timeout=5)
        assert QueryBus(bus).ask(Count(2)) == 3
    assert runs == [1, 1, 2]


def test_a_request_whose_caller_gave_up_before_it_started_is_not_remembered(bus: Bus, db: Path) -> None:
    gate = threading.Event()
    pool = WorkerPool(
        bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", max_workers=1, idempotency=MemoryIdempotencyStore()
    )
    pool.register(tally_handler(db, gate))
    commands = CommandBus(bus)
    with pool:
        occupier = commands.submit(Tally(1), timeout=20)
        wait_until(lambda: pool.inflight == 1, what="the thread busy")
        late = create_request_envelope("Tally", "cmd-late", "test", {"n": 2}).to_bytes()
        with pytest.raises(RequestTimeoutError):
            bus.request("commands.Tally", late, timeout=0.2, headers={"Natsbus-Timeout-Ms": "200"})
        gate.set()
        assert occupier.result(10) == 2
        wait_until(lambda: pool.expired == 1, what="the late request refused unstarted")
        again = bus.request("commands.Tally", late, timeout=5)  # not remembered: it runs now
    assert b'"payload":4' in again.data
    assert effects.per_command(db) == {occupier_id(db, 1): 1, "cmd-late": 1}


def occupier_id(db: Path, n: int) -> str:
    with sqlite3.connect(str(db)) as conn:
        return str(conn.execute("SELECT command_id FROM effects WHERE n = ?", (n,)).fetchone()[0])


# -- two instances sharing a key-value store ---------------------------------------------


@pytest.fixture()
def two_instances(nats_url: str, db: Path) -> Iterator[Any]:
    """Two pools on their own connections, in different queue groups: each gets every request."""
    bucket = f"idem_{uuid.uuid4().hex[:8]}"
    gate = threading.Event()
    gate.set()
    with Bus(nats_url) as bus_a, Bus(nats_url) as bus_b:
        pools = []
        for name, bus in (("a", bus_a), ("b", bus_b)):
            store = KeyValueIdempotencyStore(bucket=bucket, ttl=300.0, wait=5.0, poll=0.02)
            pool = WorkerPool(bus, service_id="tally", queue_group=f"tally-{name}", max_workers=4, idempotency=store)
            pool.register(tally_handler(db, gate))
            pools.append(pool.start())
        try:
            yield pools, gate, bucket
        finally:
            for pool in pools:
                pool.stop(5)
            bus_a.run(lambda: jetstream_for(bus_a).delete_stream(f"KV_{bucket}"))


def test_two_instances_sharing_the_store_run_a_duplicated_command_once(bus: Bus, db: Path, two_instances: Any) -> None:
    pools, _, _ = two_instances
    transport = bus.live_transport()
    for i in range(20):
        body = command_body("Tally", f"cmd-both-{i}", {"n": i})
        replies = bus.run(lambda b=body: transport.gather("commands.Tally", b, timeout=5.0, quiet=5.0, max_count=2))
        assert len(replies) == 2
        assert replies[0].data == replies[1].data  # the same reply from both instances
        assert b'"success":true' in replies[0].data
    assert effects.per_command(db) == {f"cmd-both-{i}": 1 for i in range(20)}
    assert sum(pool.idempotency.replayed for pool in pools) == 20


def test_a_repeat_on_another_instance_waits_then_answers_busy_then_the_reply(
    bus: Bus, db: Path, two_instances: Any
) -> None:
    pools, gate, _ = two_instances
    gate.clear()
    for pool in pools:
        pool.idempotency.wait = 0.3
    transport = bus.live_transport()
    body = command_body("Tally", "cmd-held", {"n": 3})
    # One instance runs it (held by the gate); the other waits 0.3 s and says it is still running.
    first = bus.run(lambda: transport.gather("commands.Tally", body, timeout=5.0, quiet=5.0, max_count=1))
    assert b"still running" in first[0].data
    assert first[0].headers is not None and first[0].headers["Nats-Service-Error-Code"] == "503"
    gate.set()
    replies = bus.run(lambda: transport.gather("commands.Tally", body, timeout=5.0, quiet=5.0, max_count=2))
    assert [b'"payload":6' in reply.data for reply in replies] == [True, True]
    assert effects.count(db) == 1


@pytest.mark.parametrize("skew", [-3600.0, 3600.0], ids=["since-an-hour-early", "since-an-hour-late"])
def test_the_lease_runs_on_the_servers_clock_whatever_since_the_claiming_host_wrote(
    bus: Bus, db: Path, skew: float
) -> None:
    bucket = f"idem_{uuid.uuid4().hex[:8]}"
    store = KeyValueIdempotencyStore(bucket=bucket, lease=1.0, wait=0.2, poll=0.02)
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=store)
    pool.register(tally_handler(db))
    js = jetstream_for(bus)
    body = command_body("Tally", "cmd-orphan", {"n": 4})
    try:
        with pool:
            # A claim left by a process that died mid-handler, on a host whose clock is an hour off.
            record = json.loads(running_record("cmd-orphan", "a-dead-owner"))
            record["since"] += skew
            written = time.monotonic()
            bus.run(lambda: js.kv_put(bucket, record_key("cmd-orphan"), json.dumps(record).encode()))
            # Within the lease by the server's clock: still running, not taken over.
            early = bus.request("commands.Tally", body, timeout=5)
            assert early.headers is not None and early.headers["Nats-Service-Error-Code"] == "503"
            assert b"still running" in early.data
            assert effects.count(db, "invocations") == 0
            # Past the lease by the server's clock: taken over, and run once.
            store.wait = 10.0
            late = bus.request("commands.Tally", body, timeout=15)
            assert time.monotonic() - written > store.lease
        assert b'"payload":8' in late.data
        assert effects.count(db, "invocations") == 1
    finally:
        bus.run(lambda: js.delete_stream(f"KV_{bucket}"))


def test_an_existing_bucket_with_another_ttl_is_refused_at_start(bus: Bus) -> None:
    bucket = f"idem_{uuid.uuid4().hex[:8]}"
    first = WorkerPool(bus, service_id="ttl-a", idempotency=KeyValueIdempotencyStore(bucket=bucket, ttl=600.0))
    first.register(lambda cmd: 0, message_type=Tally)
    first.start().stop(5)
    second = WorkerPool(bus, service_id="ttl-b", idempotency=KeyValueIdempotencyStore(bucket=bucket, ttl=60.0))
    second.register(lambda cmd: 0, message_type=Tally)
    with pytest.raises(IncompatibleSettingsError) as info:
        second.start()
    assert (info.value.setting, info.value.existing, info.value.wanted) == ("ttl", 600.0, 60.0)
    assert f"key-value bucket {bucket}" in str(info.value)
    bus.run(lambda: jetstream_for(bus).delete_stream(f"KV_{bucket}"))


def test_store_failure_answers_busy_instead_of_running(bus: Bus, db: Path) -> None:
    bucket = f"idem_{uuid.uuid4().hex[:8]}"
    pool = WorkerPool(bus, service_id=f"idem-{uuid.uuid4().hex[:6]}", idempotency=KeyValueIdempotencyStore(bucket))
    pool.register(tally_handler(db))
    with pool:
        bus.run(lambda: jetstream_for(bus).delete_stream(f"KV_{bucket}"))  # the store goes away
        with pytest.raises(BusyError, match="cannot check whether command"):
            CommandBus(bus).execute(Tally(1))
    assert effects.count(db) == 0
