"""A forked child's first call opens the child's own connection within the call's timeout, never longer.

The child cannot use the parent's connection, so its first call connects. That
call keeps its own timeout: a server that does not answer costs it that timeout
(not ``connect_timeout``), every server refusing fails it at once with
``NotConnectedError`` naming why, and the child keeps trying in the background,
serving as soon as NATS is back.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any, Dict

import attrs
import pytest
from fork_support import run_forked, silent_server

from natsbus import Bus, Command, CommandBus, NatsServer, WorkerPool

pytestmark = [
    pytest.mark.timeout(60),
    # Python 3.12+ warns on any fork() from a process with threads: forking one is what is tested.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]


@attrs.frozen
class Shout(Command[str]):
    text: str


def _first_call(commands: CommandBus, timeout: float, out: Any) -> None:
    """In the forked child: time its first call; report what it raised or returned."""
    began = time.monotonic()
    report: Dict[str, Any] = {}
    try:
        report["result"] = commands.execute(Shout("hi"), timeout=timeout)
    except Exception as exc:
        report["error"] = type(exc).__name__
        report["text"] = str(exc)
    report["elapsed"] = time.monotonic() - began
    out.put(report)


def test_a_forked_childs_first_call_to_a_silent_server_ends_at_its_timeout_not_connect_timeout(
    server: NatsServer,
) -> None:
    parent = Bus(server.url, connect_timeout=8.0, reconnect_time_wait=0.2)
    commands = CommandBus(parent)
    port = server.port
    assert port is not None
    server.stop()
    try:
        with silent_server(port):  # where the server was, something accepts and never says a word
            report = run_forked(_first_call, commands, 0.5)
    finally:
        parent.close()
    assert report.get("error") == "NotConnectedError", report
    assert report["elapsed"] < 3.0, report  # its 0.5 s timeout, not the 8 s connect_timeout


def test_a_forked_childs_first_call_fails_at_once_naming_why_when_every_server_refuses(
    server: NatsServer,
) -> None:
    parent = Bus(server.url, reconnect_time_wait=0.2)
    commands = CommandBus(parent)
    server.stop()  # nothing listens: every try is refused at once
    try:
        report = run_forked(_first_call, commands, 5.0)
    finally:
        parent.close()
    assert report.get("error") == "NotConnectedError", report
    assert "Connection refused" in report["text"], report
    assert report["elapsed"] < 2.5, report  # refused at once: not the 5 s call timeout


def _calls_until_served(commands: CommandBus, tried: Any, ready: Any, out: Any) -> None:
    """In the forked child: a first call while NATS is down, then calls once the parent says it is back."""
    report: Dict[str, Any] = {}
    try:
        commands.execute(Shout("down"), timeout=1.0)
    except Exception as exc:
        report["first"] = type(exc).__name__
    tried.set()
    ready.wait(20)
    try:
        report["result"] = commands.execute(Shout("back"), timeout=10.0)
    except Exception as exc:
        report["error"] = repr(exc)
    out.put(report)


def test_a_forked_child_that_found_nats_down_serves_once_it_is_back_without_a_restart(
    server: NatsServer,
) -> None:
    parent = Bus(server.url, reconnect_time_wait=0.1)
    commands = CommandBus(parent)
    server.stop()
    ctx = multiprocessing.get_context("fork")
    out, tried, ready = ctx.Queue(), ctx.Event(), ctx.Event()
    child = ctx.Process(target=_calls_until_served, args=(commands, tried, ready, out))
    child.start()
    try:
        assert tried.wait(20)  # its first call found NATS down
        server.start()  # the same port
        worker_bus = Bus(server.url)
        pool = WorkerPool(worker_bus, service_id="fork-connect", max_workers=2)
        pool.register(lambda cmd: cmd.text.upper(), message_type=Shout)
        pool.start()
        try:
            ready.set()
            report: Dict[str, Any] = out.get(timeout=30)
        finally:
            pool.stop(drain_timeout=5)
            worker_bus.close()
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
        parent.close()
    assert report == {"first": "NotConnectedError", "result": "BACK"}


def test_a_fail_fast_bus_forked_while_nats_is_up_serves_its_first_call(server: NatsServer) -> None:
    # fail_fast_when_disconnected means no reconnect grace: the child's first connect is no outage.
    worker_bus = Bus(server.url)
    pool = WorkerPool(worker_bus, service_id="fork-connect-up", max_workers=2)
    pool.register(lambda cmd: cmd.text.upper(), message_type=Shout)
    pool.start()
    parent = Bus(server.url, fail_fast_when_disconnected=True)
    try:
        report = run_forked(_first_call, CommandBus(parent), 5.0)
    finally:
        parent.close()
        pool.stop(drain_timeout=5)
        worker_bus.close()
    assert report.get("result") == "HI", report
