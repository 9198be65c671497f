"""The worker pool's work queue (pure logic, real threads): nothing lost, no needless wake-ups."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import attrs

from natsbus import Command
from natsbus._workqueue import Jobs, Work
from natsbus.dispatch import Dispatcher


@attrs.frozen
class Ping(Command[int]):
    n: int


class _CountingLock:
    """A parking lock that counts how often it is released (a wake-up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.wakes = 0

    def acquire(self) -> bool:
        return self._lock.acquire()

    def release(self) -> None:
        self.wakes += 1
        self._lock.release()


def _park_all(jobs: Jobs, count: int) -> List[Any]:
    """``count`` consumers parked in ``jobs.get``; returns [(thread, lock, got)]."""
    consumers = []
    for _ in range(count):
        lock = _CountingLock()
        got: List[Any] = []
        thread = threading.Thread(target=lambda lk=lock, g=got: g.append(jobs.get(lk)), daemon=True)
        thread.start()
        consumers.append((thread, lock, got))
    deadline = time.monotonic() + 5
    while len(jobs._parked) < count:  # each has looked, found nothing and parked
        assert time.monotonic() < deadline, "the consumers never parked"
        time.sleep(0.001)
    return consumers


def test_one_item_wakes_exactly_one_parked_worker() -> None:
    jobs = Jobs()
    consumers = _park_all(jobs, 6)
    jobs.put("job")
    woken = [c for c in consumers if c[1].wakes]
    assert len(woken) == 1
    woken[0][0].join(5)
    assert woken[0][2] == ["job"]
    assert sum(c[1].wakes for c in consumers) == 1  # nobody else was woken to find nothing
    assert len(jobs._parked) == 5


def test_a_burst_wakes_one_worker_per_item_and_loses_nothing() -> None:
    jobs = Jobs()
    consumers = _park_all(jobs, 4)
    for i in range(4):
        jobs.put(i)
    for thread, _, _ in consumers:
        thread.join(5)
    assert sorted(g[0] for _, _, g in consumers) == [0, 1, 2, 3]
    assert [c[1].wakes for c in consumers] == [1, 1, 1, 1]


def test_many_producers_and_consumers_take_every_item_once() -> None:
    jobs = Jobs()
    taken: List[int] = []
    stop = object()

    def consume() -> None:
        park = threading.Lock()
        park.acquire()
        while True:
            item = jobs.get(park)
            if item is stop:
                return
            taken.append(item)

    consumers = [threading.Thread(target=consume) for _ in range(8)]
    for thread in consumers:
        thread.start()

    def produce(base: int) -> None:
        for i in range(5000):
            jobs.put(base + i)

    producers = [threading.Thread(target=produce, args=(n * 5000,)) for n in range(4)]
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    for _ in consumers:
        jobs.put(stop)
    for thread in consumers:
        thread.join(10)
        assert not thread.is_alive(), "a consumer missed its wake-up"
    assert sorted(taken) == list(range(20000))


def test_a_put_racing_a_worker_that_is_parking_still_wakes_it() -> None:
    # A worker has found nothing queued (under the mutex) and is about to
    # park when the item arrives: the put must not miss it.
    jobs = Jobs()
    park = _CountingLock()
    jobs._mutex.acquire()  # the worker, between "nothing queued" and "parked"
    putter = threading.Thread(target=jobs.put, args=("job",))
    putter.start()
    putter.join(0.2)  # the put has run as far as it can
    jobs._parked.append(park)  # the worker parks...
    jobs._mutex.release()
    putter.join(5)
    assert park.wakes == 1, "the item was queued next to a parked worker and nobody woke it"


def test_a_work_item_is_a_slotted_object_and_a_durable_job_has_no_route() -> None:
    route = Dispatcher("svc").register(lambda cmd: cmd.n, message_type=Ping)
    request = Work(route, "_INBOX.x", b"{}", None, 1.0)
    job = Work(None, "", b"", None, 0.0, job=lambda: None)
    assert not hasattr(request, "__dict__")  # one allocation per request, as the tuple it replaced
    assert (request.job, request.describe()) == (None, "commands.Ping")
    assert (job.route, job.describe()) == (None, "a durable command")
