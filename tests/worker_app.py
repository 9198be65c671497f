"""A WorkerPool factory that the daemon tests run with ``natsbus worker worker_app:make_pool``.

Handlers append ``started <tag>`` lines to the file named by WORKER_APP_LOG,
so tests can see from outside what ran.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import attrs

from natsbus import Bus, Command, Query, WorkerPool, current_request
from natsbus.errors import error_class_for_code


@attrs.frozen
class Add(Command[int]):
    a: int
    b: int


@attrs.frozen
class Sleep(Command[str]):
    seconds: float
    tag: str = ""


@attrs.frozen
class Slow(Command[str]):
    seconds: float


@attrs.frozen
class Fail(Command[None]):
    code: int
    text: str


@attrs.frozen
class Remaining(Query[Optional[float]]):
    pass


@attrs.frozen
class Big(Query[str]):
    size: int


def _record(line: str) -> None:
    path = os.environ.get("WORKER_APP_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def add(cmd: Add) -> int:
    return cmd.a + cmd.b


def sleep(cmd: Sleep) -> str:
    _record(f"started {cmd.tag}")
    time.sleep(cmd.seconds)
    _record(f"finished {cmd.tag}")
    return "slept"


def slow(cmd: Slow) -> str:
    time.sleep(cmd.seconds)
    return "done"


def fail(cmd: Fail) -> None:
    if cmd.code in (400, 404, 409, 503, 504):
        raise error_class_for_code(cmd.code)(cmd.text)
    raise RuntimeError(cmd.text)


def remaining(query: Remaining) -> Optional[float]:
    ctx = current_request()
    return ctx.remaining() if ctx else None


def big(query: Big) -> str:
    return "x" * query.size


def make_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="worker-app", max_workers=int(os.environ.get("WORKER_APP_THREADS", "4")))
    pool.register(add)
    pool.register(sleep)
    pool.register(slow, time_limit=0.3)
    pool.register(fail)
    pool.register(remaining)
    pool.register(big)
    return pool
