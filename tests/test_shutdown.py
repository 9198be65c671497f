"""WorkerPool.stop(): one shutdown order, durable pulls included, against a real nats-server."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List

import attrs
import effects
import pytest
from durable_app import Apply, config_for
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, DurableConfig, WorkerPool, current_request, durable
from natsbus._consumer import DurableConsumer
from natsbus._transport.jetstream import jetstream_for

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Hold(Command[int]):
    n: int


@pytest.fixture()
def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "effects.sqlite"
    effects.create(path)
    return path


@pytest.fixture()
def config(bus: Bus, tag: str) -> Iterator[DurableConfig]:
    # A long pull and a long ack wait: nothing in these tests is redelivered
    # by JetStream's timer, only by what stop() does.
    config = config_for(tag, fetch_timeout=5.0, ack_wait=30.0)
    yield config
    js = jetstream_for(bus)
    for stream in (config.stream, config.dead_letter_stream, f"KV_{config.results_bucket}"):
        bus.run(lambda s=stream: js.delete_stream(s))


def applier(db: Path) -> Callable[[Apply], int]:
    def apply(cmd: Apply) -> int:
        ctx = current_request()
        assert ctx is not None
        return effects.record(db, ctx.message_id, cmd.n)

    return apply


def pull_waiting(bus: Bus, config: DurableConfig) -> bool:
    """Whether a pull request of the service's consumer is waiting at the server."""
    return any(consumer.num_waiting for consumer in durable.pending(bus, config).consumers)


def test_a_pool_stopped_mid_pull_leaves_later_commands_to_the_next_pool(
    bus: Bus, nats_url: str, config: DurableConfig, db: Path
) -> None:
    with Bus(nats_url) as bus_a:  # stays open: its loop would keep a forgotten pull loop alive
        pool_a = WorkerPool(bus_a, service_id="appliers", max_workers=2, durable=config, handlers=[applier(db)])
        pool_a.start()
        wait_until(lambda: pull_waiting(bus, config), what="pool A's pull waiting at the server")
        stopped = pool_a.stop(drain_timeout=0.2)  # shorter than the pull in flight
        command_id = CommandBus(bus).send(Apply(6), durable=config)
        pool_b = WorkerPool(
            bus, service_id="appliers", durable=attrs.evolve(config, fetch_timeout=0.5), handlers=[applier(db)]
        )
        with pool_b:
            assert CommandBus(bus).result(command_id, wait=10, durable=config) == 12
        assert effects.per_command(db) == {command_id: 1}
        assert stopped is True  # nothing ran on A: its idle pulling threads were not "abandoned"
        assert pool_a.durable is not None and pool_a.durable.executed == 0


def test_stop_counts_only_running_handlers_as_abandoned_not_idle_pulling_threads(
    bus: Bus, nats_url: str, config: DurableConfig, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    started = threading.Event()

    def hold(cmd: Hold) -> int:
        started.set()
        gate.wait(10)
        return cmd.n

    pool = WorkerPool(bus, service_id="appliers", max_workers=3, durable=config, handlers=[applier(db), hold])
    pool.start()
    try:
        future = CommandBus(bus, timeout=10).submit(Hold(1))
        assert started.wait(10)
        wait_until(lambda: pull_waiting(bus, config), what="the idle threads' pull waiting at the server")
        with caplog.at_level(logging.INFO, logger="natsbus.worker"):
            assert pool.stop(drain_timeout=0.05) is False
    finally:
        gate.set()
    assert future.result(10) == 1  # the abandoned handler's reply still goes out when it returns
    [message] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("worker pool appliers stopped")]
    assert message == ("worker pool appliers stopped: drained 0 request(s); 1 still running after 0.05s were abandoned")


def test_an_idle_durable_pool_stops_at_once_with_nothing_left(
    bus: Bus, config: DurableConfig, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WorkerPool(bus, service_id="appliers", max_workers=2, durable=config, handlers=[applier(db)])
    pool.start()
    wait_until(lambda: pull_waiting(bus, config), what="the pull waiting at the server")
    with caplog.at_level(logging.INFO, logger="natsbus.worker"):
        assert pool.stop(drain_timeout=0.05) is True
    assert [r.getMessage() for r in caplog.records if r.name == "natsbus.worker"] == [
        "worker pool appliers stopped: drained 0 request(s), none left"
    ]


class HeldPool:
    """Stands in for a WorkerPool whose threads never get to the durable commands handed to them."""

    def __init__(self, pool: WorkerPool) -> None:
        self.dispatcher = pool.dispatcher
        self.max_workers = 1
        self.queue_group = pool.queue_group
        self.service_id = pool.service_id
        self.jobs: List[Any] = []
        self.reserved = 0
        self.lock = threading.Lock()

    def reserve_workers(self, wanted: int) -> int:
        with self.lock:
            count = min(wanted, self.max_workers - self.reserved - len(self.jobs))
            self.reserved += count
            return count

    def release_workers(self, count: int) -> None:
        with self.lock:
            self.reserved -= count

    def run_reserved(self, job: Callable[[], None]) -> None:
        with self.lock:
            self.reserved -= 1
            self.jobs.append(job)


def test_a_command_pulled_and_never_started_is_handed_back_at_once(bus: Bus, config: DurableConfig, db: Path) -> None:
    template = WorkerPool(bus, service_id="appliers", durable=config, handlers=[applier(db)])
    held = HeldPool(template)
    consumer = DurableConsumer(held, config)
    consumer.prepare(bus)
    consumer.start()
    command_id = CommandBus(bus).send(Apply(4), durable=config)
    wait_until(lambda: len(held.jobs) == 1, what="the command pulled")
    consumer.stop(1.0)
    assert consumer.abandon_unstarted() == 1
    held.jobs[0]()  # a thread getting to it late: it does not run
    assert effects.count(db, "invocations") == 0
    # Handed back with a nak, not left to the 30 s ack wait: the next pool runs it now.
    with WorkerPool(
        bus, service_id="appliers", durable=attrs.evolve(config, fetch_timeout=0.5), handlers=[applier(db)]
    ):
        assert CommandBus(bus).result(command_id, wait=10, durable=config) == 8
    assert effects.per_command(db) == {command_id: 1}


# -- stop() twice -----------------------------------------------------------------------------


@attrs.frozen
class StopAgain(Command[bool]):
    pass


def test_a_second_stop_from_a_handler_reports_false_while_the_first_still_drains(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="stopper", max_workers=2)
    entered = threading.Event()

    @pool.register
    def stop_again(cmd: StopAgain) -> bool:
        entered.set()
        wait_until(lambda: not pool.running, what="the first stop() begun")
        return pool.stop(drain_timeout=5)  # cannot wait: the first one waits for this very request

    pool.start()
    future = CommandBus(bus, timeout=10).submit(StopAgain())
    assert entered.wait(10)
    first: List[bool] = []
    stopper = threading.Thread(target=lambda: first.append(pool.stop(drain_timeout=10)))
    stopper.start()
    assert future.result(10) is False  # the first stop() had not finished
    stopper.join(10)
    assert first == [True]
    assert pool.stop() is True  # once finished, its result


def test_a_second_stop_that_gives_up_waiting_for_the_first_reports_false(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="stopper", max_workers=2)
    gate = threading.Event()

    @pool.register
    def hold(cmd: Hold) -> int:
        gate.wait(10)
        return cmd.n

    pool.start()
    try:
        future = CommandBus(bus, timeout=10).submit(Hold(2))
        wait_until(lambda: pool.inflight == 1, what="the handler running")
        first: List[bool] = []
        stopper = threading.Thread(target=lambda: first.append(pool.stop(drain_timeout=10)))
        stopper.start()
        wait_until(lambda: not pool.running, what="the first stop() begun")
        assert pool.stop(drain_timeout=0.05) is False  # still draining when it gave up
    finally:
        gate.set()
    assert future.result(10) == 2
    stopper.join(10)
    assert first == [True]
    assert pool.stop(drain_timeout=0.05) is True
