"""A WorkerPool bound to a Bus when its module is imported (the URL from BOUND_APP_URL)."""

from __future__ import annotations

import os

import attrs

from natsbus import Bus, Command, WorkerPool


@attrs.frozen
class BoundAppPing(Command[str]):
    pass


def ping(cmd: BoundAppPing) -> str:
    return "pong"


pool = WorkerPool(Bus(os.environ["BOUND_APP_URL"]), service_id="bound-app")
pool.register(ping)
