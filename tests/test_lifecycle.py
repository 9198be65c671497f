"""Lifecycle: interpreter exit without close() is clean, and no natsbus thread outlives close()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Iterator, List

import attrs
import pytest

from natsbus import Bus, BusClosedError, Command, CommandBus, WorkerPool

#: What must never show on the stderr of a process that exits with buses open.
NOISE = ("Task was destroyed", "Event loop is closed", "unclosed", "Exception ignored", "Traceback", "Error")


@attrs.frozen
class Tally(Command[int]):
    n: int


@pytest.fixture()
def tally(bus: Bus) -> Iterator[List[int]]:
    seen: List[int] = []
    lock = threading.Lock()
    pool = WorkerPool(bus, service_id="tally", max_workers=4)

    @pool.register
    def count(cmd: Tally) -> int:
        with lock:
            seen.append(cmd.n)
        return cmd.n

    pool.start()
    try:
        yield seen
    finally:
        pool.stop(drain_timeout=5)


EXIT_SCRIPT = """
    import atexit, sys, threading, time
    import attrs

    # Registered before natsbus is imported, so it runs after natsbus's own
    # exit hook (atexit is last in, first out): what is left by then?
    atexit.register(lambda: print("left:", sorted(t.name for t in threading.enumerate()
                                                  if t.name.startswith("natsbus-")), flush=True))

    from natsbus import Bus, Command, CommandBus, NatsBusError, WorkerPool

    @attrs.frozen
    class Tally(Command[int]):
        n: int

    @attrs.frozen
    class Nap(Command[str]):
        seconds: float

    url = sys.argv[1]
    serving = Bus(url)
    pool = WorkerPool(serving, service_id="napper", max_workers=2)

    @pool.register
    def nap(cmd: Nap) -> str:
        time.sleep(cmd.seconds)
        return "rested"

    pool.start()
    client = Bus(url)
    commands = CommandBus(client, timeout=30)
    assert commands.execute(Nap(0)) == "rested"
    assert commands.execute(Tally(-1)) == -1
    # Sent and never waited for: only a flush at exit gets them out.
    for n in range(500):
        commands.submit(Tally(n))
    # A call still waiting on another (daemon) thread when the main one ends:
    # the exit hook's close() fails it with BusClosedError.
    def wait_on_a_nap():
        try:
            commands.execute(Nap(0.5))
        except NatsBusError:
            pass

    threading.Thread(target=wait_on_a_nap, daemon=True).start()
    print("main done", flush=True)
"""


@pytest.mark.timeout(30)
def test_interpreter_exit_without_close_is_clean_and_flushes(nats_url: str, tally: List[int], tmp_path: Path) -> None:
    script = tmp_path / "exit_without_close.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", str(script), nats_url],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 15
    assert done.stdout.splitlines() == ["main done", "left: []"], done.stdout + done.stderr
    assert [line for line in done.stderr.splitlines() if any(word in line for word in NOISE)] == [], done.stderr
    # The exit hook closed the buses, flushing the 500 requests first.
    deadline = time.monotonic() + 10
    while len(tally) < 501 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(tally) == list(range(-1, 500))


def _natsbus_threads() -> List[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("natsbus-") and t.is_alive())


def test_no_natsbus_thread_outlives_close_completer_and_pools_included(nats_url: str) -> None:
    before = _natsbus_threads()
    bus = Bus(nats_url)
    pool = WorkerPool(bus, service_id="lifecycle", max_workers=3)

    @pool.register(time_limit=5.0)  # a watchdog thread too
    def count(cmd: Tally) -> int:
        return cmd.n

    pool.start()
    commands = CommandBus(bus)
    assert commands.submit(Tally(7)).result(5) == 7  # starts the completer thread
    assert commands.execute(Tally(8)) == 8
    assert len(_natsbus_threads()) == len(before) + 1 + 1 + 3 + 1  # loop, completer, workers, watchdog
    bus.close()  # the pool is still running: close() stops it first
    assert _natsbus_threads() == before
    assert not pool.running
    with pytest.raises(BusClosedError):
        commands.execute(Tally(9))


def test_close_from_a_handler_stops_its_own_pool(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    serving = Bus(nats_url)
    pool = WorkerPool(serving, service_id="closer", max_workers=2)

    @pool.register
    def close_my_bus(cmd: Tally) -> int:
        serving.close(timeout=0.5)  # waits for in-flight requests, itself included: 0.5 s
        return cmd.n

    pool.start()
    with Bus(nats_url) as client:
        started = time.monotonic()
        future = CommandBus(client, timeout=1.0).submit(Tally(1))
        deadline = time.monotonic() + 10
        while not serving.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert serving.closed
        future.exception(5)  # settles: its reply could not be sent, so it times out
        assert time.monotonic() - started < 5
    assert not pool.running
    assert _natsbus_threads() == []
    assert [r.getMessage() for r in caplog.records if "failed" in r.getMessage()] == []
