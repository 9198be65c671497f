"""A durable WorkerPool for ``natsbus worker durable_app:make_pool`` in the crash tests.

Its settings come from the environment, so the test and the worker
subprocess share one DurableConfig: DURABLE_TAG names the streams, bucket
and subjects; DURABLE_DB is the sqlite file the handler applies effects to;
while DURABLE_HOLD_FILE exists, command number DURABLE_HOLD_N stops right
after its commit.
"""

from __future__ import annotations

import os
import time

import attrs
import effects

from natsbus import Bus, Command, DurableConfig, WorkerPool, current_request


@attrs.frozen
class Apply(Command[int]):
    n: int


def config_for(tag: str, **overrides: object) -> DurableConfig:
    """The DurableConfig of a test, by its tag: names no other test uses."""
    settings: dict = dict(
        stream=f"CMDS_{tag}",
        subject_prefix=f"dcmd.{tag}",
        dead_letter_stream=f"DEAD_{tag}",
        dead_letter_prefix=f"ddead.{tag}",
        results_bucket=f"results_{tag}",
        ack_wait=2.0,
        backoff=(0.05,),
        max_deliveries=3,
        fetch_timeout=0.5,
        max_age=600.0,
        results_ttl=600.0,
        dead_letter_max_age=600.0,
    )
    settings.update(overrides)
    return DurableConfig(**settings)  # type: ignore[arg-type]


def apply(cmd: Apply) -> int:
    ctx = current_request()
    assert ctx is not None
    time.sleep(float(os.environ.get("DURABLE_WORK_SECONDS", "0")))  # simulated work, so a kill lands mid-batch
    result = effects.apply_once(os.environ["DURABLE_DB"], ctx.message_id, cmd.n)
    hold = os.environ.get("DURABLE_HOLD_FILE")
    if hold and cmd.n == int(os.environ.get("DURABLE_HOLD_N", "-1")):
        # Committed, reply not stored yet: the window where only apply_once prevents a second
        # effect. Held until the test kills the process (or deletes the file).
        deadline = time.monotonic() + 30
        while os.path.exists(hold) and time.monotonic() < deadline:
            time.sleep(0.01)  # nothing to wait on across processes but the file system
    return result


def make_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(
        bus,
        service_id="durable-app",
        max_workers=int(os.environ.get("DURABLE_THREADS", "4")),
        durable=config_for(os.environ["DURABLE_TAG"]),
    )
    pool.register(apply)
    return pool
