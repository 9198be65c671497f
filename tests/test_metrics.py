"""Metrics: pool.stats() in-process, and the Prometheus collector (the prometheus extra)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from natsbus import (
    Bus,
    CommandBus,
    ConfigError,
    ConflictError,
    NotFoundError,
    PrometheusCollector,
    QueryBus,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, GetUserQuery, build_pool


def _traffic(bus: Bus) -> None:
    """Two creates (one a duplicate) and one query for a missing user: 3 requests, 2 errors."""
    commands = CommandBus(bus)
    commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    with pytest.raises(ConflictError):
        commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    with pytest.raises(NotFoundError, match="User not found"):
        QueryBus(bus).ask(GetUserQuery("user-missing"))


def test_pool_stats_are_the_numbers_stats_reports(bus: Bus, user_pool: WorkerPool) -> None:
    _traffic(bus)
    local = user_pool.stats()
    (remote,) = bus.stats("user-service", user_pool.micro.id)
    assert local == remote  # every field but the round-trip time
    create = local.endpoint("CreateUserCommand")
    assert create is not None
    assert (create.num_requests, create.num_errors) == (2, 1)
    assert create.last_error == "User already exists with email: alice@example.com"


def test_pool_stats_work_before_start(bus: Bus) -> None:
    pool = build_pool(bus)
    assert [(e.name, e.num_requests) for e in pool.stats().endpoints] == [
        ("CreateUserCommand", 0),
        ("GetUserQuery", 0),
    ]


def test_prometheus_collector_exports_the_counters(bus: Bus, user_pool: WorkerPool) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(user_pool))
    _traffic(bus)
    create = {"service": "user-service", "endpoint": "CreateUserCommand", "subject": "commands.CreateUserCommand"}
    get = {"service": "user-service", "endpoint": "GetUserQuery", "subject": "queries.GetUserQuery"}
    value = registry.get_sample_value
    assert value("natsbus_requests_total", create) == 2
    assert value("natsbus_request_errors_total", create) == 1
    assert value("natsbus_requests_total", get) == 1
    assert value("natsbus_request_errors_total", get) == 1
    stats = user_pool.stats().endpoint("CreateUserCommand")
    assert stats is not None
    assert value("natsbus_request_processing_seconds_total", create) == stats.processing_time / 1e9
    # A worker counts a request done after sending its reply, so the caller
    # can see the reply a moment before the count drops.
    deadline = time.monotonic() + 5
    while user_pool.inflight and time.monotonic() < deadline:
        time.sleep(0.001)
    assert value("natsbus_inflight_requests", {"service": "user-service"}) == 0
    assert value("natsbus_busy_refusals_total", {"service": "user-service"}) == 0


def test_one_collector_serves_several_pools_and_a_second_is_refused(bus: Bus, user_pool: WorkerPool) -> None:
    other = WorkerPool(bus, service_id="audit")

    @other.register
    def audit(cmd: CreateUserCommand) -> None:
        return None

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(user_pool, other))
    labels = {"service": "audit", "endpoint": "CreateUserCommand", "subject": "commands.CreateUserCommand"}
    assert registry.get_sample_value("natsbus_requests_total", labels) == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(other))


def test_metrics_are_served_over_http(bus: Bus, user_pool: WorkerPool) -> None:
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(user_pool))
    _traffic(bus)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    line = (
        'natsbus_requests_total{endpoint="CreateUserCommand",service="user-service",'
        'subject="commands.CreateUserCommand"} 2.0'
    )
    assert line in text.splitlines()


def test_collector_without_the_extra_says_what_to_install(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, user_pool: WorkerPool
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'natsbus\[prometheus\]'"):
        PrometheusCollector(user_pool)


def test_collector_needs_a_pool() -> None:
    with pytest.raises(ConfigError, match="at least one WorkerPool"):
        PrometheusCollector()


def test_importing_natsbus_does_not_import_prometheus_client() -> None:
    code = "import sys, natsbus, natsbus.metrics; print('prometheus_client' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr
