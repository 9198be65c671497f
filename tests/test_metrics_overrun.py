"""An overrunning handler that then fails is one request with one error, not two."""

from __future__ import annotations

import threading

import attrs
import pytest
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, DeadlineExceededError, WorkerPool

pytestmark = pytest.mark.timeout(30)


@attrs.frozen
class LateFail(Command[str]):
    n: int


def test_an_overrun_whose_handler_then_fails_counts_one_request_and_one_error(bus: Bus, nats_url: str) -> None:
    release = threading.Event()

    def handler(cmd: LateFail) -> str:
        release.wait(10)
        raise ValueError("failed late")

    pool = WorkerPool(bus, service_id="late-fail")
    pool.register(handler, message_type=LateFail, time_limit=0.05)
    with pool, Bus(nats_url) as client:
        with pytest.raises(DeadlineExceededError):
            CommandBus(client, timeout=10).execute(LateFail(1))
        release.set()
        wait_until(lambda: pool.inflight == 0, what="the overrunning handler returned")
        ((_, stats),) = pool.dispatcher.snapshot()
    # One request, answered once (with the timeout error): errors must not exceed requests.
    assert (stats.num_requests, stats.num_errors, stats.overruns) == (1, 1, 1)
