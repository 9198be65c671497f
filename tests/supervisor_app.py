"""Targets for ``natsbus worker --processes`` tests (tests/test_supervisor.py).

``make_pool`` serves ``Who`` (which process answered) and ``Nap`` (a short
sleep, so requests are in flight); ``broken_factory`` fails in the child,
after the supervisor imported this module fine.
"""

from __future__ import annotations

import os
import time

import attrs

from natsbus import Bus, Command, Query, WorkerPool


@attrs.frozen
class Who(Query[int]):
    """The process id of the worker that answers."""


@attrs.frozen
class Nap(Command[int]):
    """Sleeps ``seconds``, then answers ``n`` (idempotent)."""

    n: int
    seconds: float = 0.02


def who(query: Who) -> int:
    return os.getpid()


def nap(cmd: Nap) -> int:
    time.sleep(cmd.seconds)
    return cmd.n


def make_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="supervised-app", max_workers=4)
    pool.register(who)
    pool.register(nap)
    return pool


def broken_factory(bus: Bus) -> WorkerPool:
    raise RuntimeError("no settings for this environment")


def flaky_factory(bus: Bus) -> WorkerPool:
    """``make_pool``, until the file named by SUPERVISOR_APP_BREAK exists: then it fails (exit 2)."""
    path = os.environ.get("SUPERVISOR_APP_BREAK", "")
    if path and os.path.exists(path):
        raise RuntimeError("broken on purpose")
    return make_pool(bus)
