"""A command whose handler records every run and holds the later ones until released.

For the batch CLI's interruption tests: the test decides when the held
requests may finish, and counts on the worker side what actually ran.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any, Callable, Dict, Iterator, List

import attrs

from natsbus import Bus, Command, MemoryIdempotencyStore, WorkerPool, current_request


@attrs.frozen
class BatchStep(Command[Dict[str, Any]]):
    n: int


class Steps:
    """The BatchStep handler: records each run's command_id; ``n >= hold_from`` waits for :attr:`release`."""

    def __init__(self, hold_from: int) -> None:
        self.hold_from = hold_from
        self.release = threading.Event()
        self.changed = threading.Condition()
        self.runs: List[str] = []
        self.held = 0

    def handle(self, cmd: BatchStep) -> Dict[str, Any]:
        request = current_request()
        assert request is not None
        hold = cmd.n >= self.hold_from
        with self.changed:
            self.runs.append(request.message_id)
            self.held += hold
            self.changed.notify_all()
        if hold:
            self.release.wait(30)
        return {"n": cmd.n, "id": request.message_id}

    def wait_for(self, condition: Callable[[Steps], bool], timeout: float = 30.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: condition(self), timeout), "the handlers never got there"

    def counts(self) -> Counter[str]:
        with self.changed:
            return Counter(self.runs)


def serving(bus: Bus, steps: Steps, workers: int = 4) -> Iterator[WorkerPool]:
    """An idempotent pool serving ``steps`` while the generator is suspended."""
    pool = WorkerPool(
        bus, service_id=f"batch-{uuid.uuid4().hex[:6]}", max_workers=workers, idempotency=MemoryIdempotencyStore()
    )
    pool.register(steps)
    with pool:
        try:
            yield pool
        finally:
            steps.release.set()
