"""A pool for `natsbus worker` in the tests: a handler that holds until a file exists."""

from __future__ import annotations

import os
import time

import attrs

from natsbus import Bus, Command, WorkerPool


@attrs.frozen
class Hold(Command[str]):
    """Runs until the file ``path`` exists (at most 20 s), so a test controls when it ends."""

    path: str


def hold(cmd: Hold) -> str:
    print(f"holding {cmd.path}", flush=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(cmd.path) and time.monotonic() < deadline:
        time.sleep(0.01)  # another process creates the file; nothing to wait on but the file system
    return "released" if os.path.exists(cmd.path) else "gave up"


def build_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="daemon-test", max_workers=2)
    pool.register(hold)
    return pool
