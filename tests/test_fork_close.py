"""Closing a forked child's Bus while its connection is being opened (a silent server)."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from typing import Any, Dict, Iterator

import pytest

from natsbus import Bus, NatsServer, NotConnectedError

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]


@pytest.fixture()
def server() -> Iterator[NatsServer]:
    with NatsServer(jetstream=False) as srv:
        yield srv


def _open_then_close(bus: Bus, out: Any) -> None:
    report: Dict[str, Any] = {}
    try:
        try:  # the first call: its timeout passes while the child's connection is still opening
            bus.request("fork.close.nobody", b"", timeout=0.3)
        except NotConnectedError:
            report["first_call"] = "NotConnectedError"
        began = time.monotonic()
        bus.close(2.0)
        report["close_seconds"] = round(time.monotonic() - began, 1)
        report["threads"] = sorted(t.name for t in threading.enumerate() if t.name.startswith("natsbus"))
    except BaseException as exc:
        report["error"] = repr(exc)
    out.put(report)


def test_closing_a_childs_bus_while_it_opens_is_prompt_and_leaves_no_thread(server: NatsServer) -> None:
    parent = Bus(server.url, connect_timeout=8.0)
    port = server.port
    server.stop()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        silent.bind(("127.0.0.1", port))
        silent.listen(16)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_open_then_close, args=(parent, out))
        child.start()
        try:
            report = out.get(timeout=30)
            child.join(10)
        finally:
            if child.is_alive():
                child.kill()
    finally:
        silent.close()
        parent.close()
    assert "error" not in report, report
    assert report["first_call"] == "NotConnectedError", report
    assert report["threads"] == [], report
    assert report["close_seconds"] <= 2.0, report
