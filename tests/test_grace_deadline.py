"""A call that waited for the connection tells the worker how long it will still wait (review finding)."""

from __future__ import annotations

import concurrent.futures
import time
from typing import List, Optional

import attrs
import pytest
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, NatsServer, WorkerPool, current_request

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Probe(Command[float]):
    n: int


def test_the_deadline_header_counts_the_time_spent_waiting_for_the_connection() -> None:
    server = NatsServer(jetstream=False)
    server.start()
    seen: List[Optional[float]] = []
    bus = Bus(server.url, reconnect_time_wait=0.05)
    pool = WorkerPool(bus, service_id="probe", max_workers=1)

    @pool.register
    def probe(cmd: Probe) -> float:
        request = current_request()
        assert request is not None
        seen.append(request.remaining())
        return 0.0

    pool.start()
    try:
        server.stop()
        wait_until(lambda: not bus.is_connected, what="the Bus noticed the outage", timeout=5)
        commands = CommandBus(bus, timeout=4.0)
        with concurrent.futures.ThreadPoolExecutor(1) as caller:
            sent_at = time.monotonic()
            answer = caller.submit(commands.execute, Probe(1), reconnect_grace=3.0)
            time.sleep(1.5)  # the outage lasts a while: the caller spends 1.5 s of its 4 s waiting
            server.start()
            answer.result(10)
            caller_left_at_most = 4.0 - (time.monotonic() - sent_at)
    finally:
        pool.stop(2)
        bus.close()
        server.close()
    assert seen and seen[0] is not None
    assert seen[0] <= caller_left_at_most + 0.1  # before the fix: the whole 4 s
