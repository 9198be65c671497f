"""submit(), execute_many() and ask_many() against a real nats-server."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Iterator, List, Optional, Tuple

import attrs
import pytest

from natsbus import (
    Bus,
    Command,
    CommandBus,
    ConflictError,
    NoHandlerError,
    Query,
    QueryBus,
    RequestTimeoutError,
    WorkerPool,
)


@attrs.frozen
class Square(Command[int]):
    n: int


@attrs.frozen
class Twice(Query[int]):
    n: int


@attrs.frozen
class Unserved(Command[int]):
    n: int


@pytest.fixture()
def math_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = WorkerPool(bus, service_id="math", max_workers=4)

    @pool.register
    def square(cmd: Square) -> int:
        if cmd.n < 0:
            raise ConflictError(f"negative: {cmd.n}")
        if cmd.n == 999:
            threading.Event().wait(2.0)  # outlives a short timeout
        return cmd.n * cmd.n

    @pool.register
    def twice(query: Twice) -> int:
        return query.n * 2

    with pool:
        yield pool


def test_submit_returns_a_concurrent_future(bus: Bus, math_pool: WorkerPool) -> None:
    commands = CommandBus(bus)
    futures = [commands.submit(Square(i)) for i in range(20)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(10) for f in futures] == [i * i for i in range(20)]


def test_submit_future_fails_with_the_execute_errors(bus: Bus, math_pool: WorkerPool) -> None:
    commands = CommandBus(bus)
    with pytest.raises(ConflictError, match="negative: -1"):
        commands.submit(Square(-1)).result(10)
    with pytest.raises(NoHandlerError):
        commands.submit(Unserved(1)).result(10)
    timed_out = commands.submit(Square(999), timeout=0.1)
    with pytest.raises(RequestTimeoutError, match=r"^Command request timeout after 100ms$"):
        timed_out.result(10)


def test_submit_callbacks_do_not_run_on_the_loop_thread(bus: Bus, math_pool: WorkerPool) -> None:
    seen: List[str] = []
    done = threading.Event()
    future = CommandBus(bus).submit(Square(3))

    def callback(f: concurrent.futures.Future[int]) -> None:
        seen.append(threading.current_thread().name)
        done.set()

    future.add_done_callback(callback)
    assert done.wait(10)
    assert future.result() == 9
    assert seen and seen[0] != "natsbus-loop"


def test_execute_many_returns_results_in_input_order(bus: Bus, math_pool: WorkerPool) -> None:
    progress: List[Tuple[int, Optional[int]]] = []
    results = CommandBus(bus).execute_many(
        [Square(i) for i in range(500)], concurrency=16, progress=lambda d, t: progress.append((d, t))
    )
    assert results == [i * i for i in range(500)]
    assert progress[-1] == (500, 500)
    assert [d for d, _ in progress] == list(range(1, 501))


def test_execute_many_consumes_generators_lazily(bus: Bus, math_pool: WorkerPool) -> None:
    produced = 0

    def gen() -> Iterator[Square]:
        nonlocal produced
        for i in range(100):
            produced += 1
            yield Square(i)

    seen_totals: List[Optional[int]] = []
    results = CommandBus(bus).execute_many(gen(), concurrency=8, progress=lambda d, t: seen_totals.append(t))
    assert results == [i * i for i in range(100)]
    assert produced == 100 and set(seen_totals) == {None}


def test_execute_many_raises_the_first_failure(bus: Bus, math_pool: WorkerPool) -> None:
    with pytest.raises(ConflictError, match="negative: -5"):
        CommandBus(bus).execute_many([Square(1), Square(-5), Square(2)], concurrency=1)


def test_execute_many_can_collect_failures(bus: Bus, math_pool: WorkerPool) -> None:
    results = CommandBus(bus, timeout=0.3).execute_many(
        [Square(2), Square(-1), Unserved(0), Square(999), Square(3)], concurrency=5, return_exceptions=True
    )
    assert results[0] == 4 and results[4] == 9
    assert isinstance(results[1], ConflictError)
    assert isinstance(results[2], NoHandlerError)
    assert isinstance(results[3], RequestTimeoutError)
    assert str(results[3]) == "Command request timeout after 300ms"


def test_execute_many_bounds_the_requests_in_flight(bus: Bus) -> None:
    running = 0
    peak = 0
    lock = threading.Lock()
    pool = WorkerPool(bus, service_id="peak", max_workers=16)

    @pool.register
    def square(cmd: Square) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.005)
        with lock:
            running -= 1
        return cmd.n * cmd.n

    with pool:
        results = CommandBus(bus).execute_many([Square(i) for i in range(100)], concurrency=3)
    assert results == [i * i for i in range(100)]
    assert 1 <= peak <= 3


def test_ask_many(bus: Bus, math_pool: WorkerPool) -> None:
    assert QueryBus(bus).ask_many([Twice(i) for i in range(50)]) == [i * 2 for i in range(50)]


def test_execute_many_with_nothing_returns_nothing(bus: Bus) -> None:
    assert CommandBus(bus).execute_many([]) == []


def test_a_future_watched_after_the_completer_stopped_fails_at_once() -> None:
    from natsbus import BusClosedError
    from natsbus._transport import PendingReply
    from natsbus.bus import Completer

    completer = Completer()
    completer.stop(5)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    pending = PendingReply("commands.X", b"1", {})
    completer.watch(pending, None, lambda reply: 1, future, lambda: TimeoutError())
    with pytest.raises(BusClosedError):
        future.result(timeout=1)
