"""A scatter-gather handler that raises SystemExit: the asker is answered and the pool stops (review finding)."""

from __future__ import annotations

import attrs
import pytest
from waiting import wait_until

from natsbus import Bus, HandlerError, Query, QueryBus, WorkerPool

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Quit(Query[int]):
    n: int


def quit_handler(query: Quit) -> int:
    raise SystemExit(3)


def test_a_scatter_handler_raising_system_exit_answers_the_asker_and_stops_the_pool(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="scatter-quitter", max_workers=1, handlers=[quit_handler])
    pool.start()
    try:
        results = QueryBus(bus).ask_all(Quit(1), timeout=5.0, max_replies=1)
        assert len(results) == 1 and results[0].instance_id == pool.micro.id
        assert isinstance(results[0].error, HandlerError)
        assert "raised SystemExit" in str(results[0].error)
        wait_until(lambda: not pool.running, what="the pool stopped", timeout=10)
    finally:
        pool.stop(2)
