"""Closing a forked child's Bus while its connection is being opened (a silent server)."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict

import pytest
from fork_support import run_forked, silent_server

from natsbus import Bus, NatsServer, NotConnectedError

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]


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
    try:
        with silent_server(port):
            report = run_forked(_open_then_close, parent)
    finally:
        parent.close()
    assert "error" not in report, report
    assert report["first_call"] == "NotConnectedError", report
    assert report["threads"] == [], report
    assert report["close_seconds"] <= 2.0, report
