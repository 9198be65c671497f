"""/readyz of a web process whose Bus was opened in a pre-fork master (gunicorn --preload)."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from fork_support import run_forked
from waiting import wait_until

from natsbus import NatsConfig, NatsServer
from natsbus.contrib._common import BusSettings, LazyBus

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]


def _probe_readiness(holder: LazyBus, out: Any) -> None:
    report: Dict[str, Any] = {}
    try:
        # Only /readyz is probed (a readinessProbe alone); no view runs before the pod is ready.
        wait_until(lambda: holder.readiness().ok, 5.0, "the worker's readiness")
        report["ready"] = True
    except AssertionError:
        report["ready"] = False
        report["last"] = holder.readiness().to_json()
    out.put(report)


def test_readyz_of_a_worker_forked_from_a_master_that_used_its_bus_becomes_ready(server: NatsServer) -> None:
    holder = LazyBus(lambda: BusSettings(NatsConfig(servers=server.url), 5.0, 5.0, "web"), owner="fork-test")
    holder.ports()  # the app used its Bus at import, in the master (docs/reliability.rst: supported)
    try:
        report = run_forked(_probe_readiness, holder)
    finally:
        holder.close()
    assert report == {"ready": True}, report
