"""InMemoryBus.close() fails waiting calls at once and works from a handler (review finding)."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import attrs
import pytest

from natsbus import BusClosedError, Command
from natsbus.testing import InMemoryBus

pytestmark = pytest.mark.timeout(30)


@attrs.frozen
class Slow(Command[int]):
    n: int


def test_close_fails_a_call_in_flight_at_once_instead_of_waiting_for_its_handler() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(cmd: Slow) -> int:
        started.set()
        release.wait(10)
        return cmd.n

    memory = InMemoryBus([slow], eager=False, max_workers=1)
    outcome: List[Any] = []

    def call() -> None:
        try:
            outcome.append(memory.commands.execute(Slow(1), timeout=None))
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert started.wait(5)
    memory.close()  # returns while the handler still runs (it waits for `release`)
    caller.join(5)
    assert not caller.is_alive()
    release.set()
    assert len(outcome) == 1 and isinstance(outcome[0], BusClosedError)


def test_close_from_a_handler_in_threaded_mode_closes_the_bus() -> None:
    holder: Dict[str, InMemoryBus] = {}

    def closer(cmd: Slow) -> int:
        holder["memory"].close()
        return 1

    memory = InMemoryBus([closer], eager=False, max_workers=2)
    holder["memory"] = memory
    with pytest.raises(BusClosedError):  # its own call is failed by the close
        memory.commands.execute(Slow(1), timeout=5)
    assert memory.closed
    with pytest.raises(BusClosedError):
        memory.commands.execute(Slow(2), timeout=5)
