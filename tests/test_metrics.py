"""Metrics: pool.stats() in-process, and the Prometheus collector (the prometheus extra)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any, Dict, Iterator, List

import attrs
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_until

from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    DeadlineExceededError,
    NoHandlerError,
    NotFoundError,
    PrometheusCollector,
    Query,
    QueryBus,
    RequestTimeoutError,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, GetUserQuery, build_pool
from natsbus.envelope import create_request_envelope
from natsbus.metrics import DURATION_BUCKETS, ClientMetrics, ClientSeries


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
    wait_until(lambda: user_pool.inflight == 0, what="the last request counted done")
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
    with pytest.raises(ConfigError, match="at least one WorkerPool or ClientMetrics"):
        PrometheusCollector()
    with pytest.raises(ConfigError, match="observes WorkerPool and ClientMetrics objects, not 'pool'"):
        PrometheusCollector("pool")  # type: ignore[arg-type]


def test_importing_natsbus_does_not_import_prometheus_client() -> None:
    code = "import sys, natsbus, natsbus.metrics; print('prometheus_client' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr


# -- the duration histogram and the expired, overrun and refused counters -------------


@attrs.frozen
class Hold(Command[str]):
    """Its handler waits for the test's release (a request that is in flight for as long as needed)."""

    n: int


@attrs.frozen
class Nap(Command[str]):
    """Its handler takes at least 30 ms."""

    n: int


@attrs.frozen
class Look(Query[str]):
    n: int


class Gate:
    """A handler that tells when it entered and returns once released."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, message: Any) -> str:
        self.entered.release()
        assert self.release.wait(30)
        return "done"

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=30)


@pytest.fixture()
def gate() -> Iterator[Gate]:
    gate = Gate()
    try:
        yield gate
    finally:
        gate.release.set()  # no handler thread left waiting


def _scrape(*sources: Any) -> Dict[str, Any]:
    """The collector's text exposition, parsed back by prometheus_client's parser: {name: family}."""
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(*sources))
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _samples(family: Any, suffix: str, **labels: str) -> Dict[str, float]:
    """``{le: value}`` of a histogram's ``_bucket`` samples, or ``{"": value}`` for other samples, per labels."""
    found: Dict[str, float] = {}
    for sample in family.samples:
        if sample.name == family.name + suffix and all(sample.labels.get(k) == v for k, v in labels.items()):
            found[sample.labels.get("le", "")] = sample.value
    return found


def test_duration_histogram_puts_each_request_in_its_bucket(bus: Bus, nats_url: str) -> None:
    pool = WorkerPool(bus, service_id="napper", max_workers=2)

    @pool.register
    def nap(cmd: Nap) -> str:
        time.sleep(0.03)  # the handler's work: 30 ms at least (no synchronisation here)
        return "rested"

    @pool.register
    def look(query: Look) -> str:
        return "seen"

    with pool, Bus(nats_url) as client:
        commands, queries = CommandBus(client, timeout=10), QueryBus(client, timeout=10)
        assert [commands.execute(Nap(i)) for i in range(3)] == ["rested"] * 3
        assert [queries.ask(Look(i)) for i in range(5)] == ["seen"] * 5
        wait_until(lambda: pool.inflight == 0, what="the last request counted done")
        families = _scrape(pool)
    duration = families["natsbus_request_duration_seconds"]
    assert duration.type == "histogram"
    nap_labels = {"service": "napper", "endpoint": "Nap", "subject": "commands.Nap"}
    buckets = _samples(duration, "_bucket", **nap_labels)
    assert list(buckets) == [*(str(float(b)) for b in DURATION_BUCKETS), "+Inf"]
    assert buckets["0.025"] == 0  # none under 25 ms: each took 30 ms at least
    assert buckets["+Inf"] == 3
    assert _samples(duration, "_count", **nap_labels) == {"": 3}
    (total,) = _samples(duration, "_sum", **nap_labels).values()
    assert total >= 0.09
    look_labels = {"service": "napper", "endpoint": "Look", "subject": "queries.Look"}
    assert _samples(duration, "_count", **look_labels) == {"": 5}
    assert list(_samples(duration, "_bucket", **look_labels).values()) == sorted(
        _samples(duration, "_bucket", **look_labels).values()
    )  # cumulative
    snapshot = {route.name: stats for route, stats in pool.dispatcher.snapshot()}
    assert total == snapshot["Nap"].processing_time_ns / 1e9  # the _sum is the $SRV.STATS processing time
    assert sum(snapshot["Look"].durations) == snapshot["Look"].num_requests == 5


def test_expired_requests_are_counted(bus: Bus, nats_url: str, gate: Gate) -> None:
    pool = WorkerPool(bus, service_id="slowpoke", max_workers=1)
    pool.register(gate, message_type=Hold)
    with pool, Bus(nats_url) as client:
        commands = CommandBus(client, timeout=30)
        first = commands.submit(Hold(1))
        gate.wait_entered()  # the only thread is busy
        # Queued behind it with a 100 ms deadline; its caller waits 500 ms, so
        # by the time the wait ends the deadline has surely passed on the worker.
        late = create_request_envelope("Hold", "cmd-late", "test", {"n": 2}).to_bytes()
        with pytest.raises(RequestTimeoutError):
            client.request("commands.Hold", late, timeout=0.5, headers={"Natsbus-Timeout-Ms": "100"})
        gate.release.set()
        assert first.result(30) == "done"
        wait_until(lambda: pool.expired == 1, what="the late request refused unstarted")
        families = _scrape(pool)
    labels = {"service": "slowpoke", "endpoint": "Hold", "subject": "commands.Hold"}
    assert _samples(families["natsbus_requests_expired"], "_total", **labels) == {"": 1}
    assert _samples(families["natsbus_requests"], "_total", **labels) == {"": 2}
    assert _samples(families["natsbus_requests_overrun"], "_total", **labels) == {"": 0}
    assert _samples(families["natsbus_requests_refused"], "_total", **labels) == {"": 0}


def test_overruns_are_counted(bus: Bus, nats_url: str, gate: Gate) -> None:
    pool = WorkerPool(bus, service_id="overrunner")
    pool.register(gate, message_type=Hold, time_limit=0.05)
    with pool, Bus(nats_url) as client:
        with pytest.raises(DeadlineExceededError, match="exceeded its time limit of 50ms"):
            CommandBus(client, timeout=30).execute(Hold(1))
        gate.release.set()  # the handler returns late; its result is dropped
        wait_until(lambda: pool.inflight == 0, what="the overrunning handler returned")
        families = _scrape(pool)
    labels = {"service": "overrunner", "endpoint": "Hold", "subject": "commands.Hold"}
    assert _samples(families["natsbus_requests_overrun"], "_total", **labels) == {"": 1}
    assert _samples(families["natsbus_request_errors"], "_total", **labels) == {"": 1}
    # The histogram has the handler's real duration, past the limit.
    assert _samples(families["natsbus_request_duration_seconds"], "_bucket", **labels)["0.05"] == 0
    assert pool.overruns == 1


def test_busy_refusals_are_counted_per_endpoint_and_left_out_of_the_histogram(
    bus: Bus, nats_url: str, gate: Gate
) -> None:
    pool = WorkerPool(bus, service_id="narrow", max_workers=1, max_pending=0)
    pool.register(gate, message_type=Hold)
    with pool, Bus(nats_url) as client:
        commands = CommandBus(client, timeout=30)
        first = commands.submit(Hold(1))
        gate.wait_entered()
        with pytest.raises(BusyError):
            commands.execute(Hold(2))
        gate.release.set()
        assert first.result(30) == "done"
        wait_until(lambda: pool.inflight == 0, what="the held request counted done")
        families = _scrape(pool)
    labels = {"service": "narrow", "endpoint": "Hold", "subject": "commands.Hold"}
    assert _samples(families["natsbus_requests_refused"], "_total", **labels) == {"": 1}
    assert _samples(families["natsbus_busy_refusals"], "_total", service="narrow") == {"": 1}
    assert _samples(families["natsbus_requests"], "_total", **labels) == {"": 2}
    assert _samples(families["natsbus_request_duration_seconds"], "_count", **labels) == {"": 1}


# -- the client side ------------------------------------------------------------------


def test_client_metrics_count_calls_by_subject_and_outcome(bus: Bus, user_pool: WorkerPool, gate: Gate) -> None:
    metrics = ClientMetrics()
    commands = CommandBus(bus, middleware=[metrics])
    queries = QueryBus(bus, middleware=[metrics])
    commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    with pytest.raises(ConflictError):
        commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    with pytest.raises(NotFoundError):
        queries.ask(GetUserQuery("user-missing"))
    with pytest.raises(NoHandlerError):
        queries.ask(Look(1))
    holder = WorkerPool(bus, service_id="holder")
    holder.register(gate, message_type=Hold)
    with holder:
        with pytest.raises(RequestTimeoutError):
            commands.execute(Hold(1), timeout=0.2)
        gate.release.set()  # the pool drains at once
    families = _scrape(metrics)
    calls = families["natsbus_client_requests"]
    outcomes = {(s.labels["subject"], s.labels["outcome"]): s.value for s in calls.samples}
    assert outcomes == {
        ("commands.CreateUserCommand", "ConflictError"): 1,
        ("commands.CreateUserCommand", "ok"): 1,
        ("commands.Hold", "RequestTimeoutError"): 1,
        ("queries.GetUserQuery", "NotFoundError"): 1,
        ("queries.Look", "NoHandlerError"): 1,
    }
    duration = families["natsbus_client_request_duration_seconds"]
    timeout_labels = {"subject": "commands.Hold", "outcome": "RequestTimeoutError"}
    buckets = _samples(duration, "_bucket", **timeout_labels)
    assert (buckets["0.1"], buckets["+Inf"]) == (0, 1)  # it waited its 0.2 s timeout
    (waited,) = _samples(duration, "_sum", **timeout_labels).values()
    assert waited >= 0.2
    series = {(s.subject, s.outcome): s for s in metrics.snapshot()}
    ok = series["commands.CreateUserCommand", "ok"]
    assert isinstance(ok, ClientSeries) and ok.calls == sum(ok.durations) == 1


def test_client_metrics_from_several_buses_add_up(bus: Bus, user_pool: WorkerPool) -> None:
    first, second = ClientMetrics(), ClientMetrics()
    for metrics in (first, second):
        with pytest.raises(NotFoundError):
            QueryBus(bus, middleware=[metrics]).ask(GetUserQuery("user-missing"))
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(user_pool, first, second))
    labels = {"subject": "queries.GetUserQuery", "outcome": "NotFoundError"}
    assert registry.get_sample_value("natsbus_client_requests_total", labels) == 2
    assert registry.get_sample_value("natsbus_client_request_duration_seconds_count", labels) == 2
    worker = {"service": "user-service", "endpoint": "GetUserQuery", "subject": "queries.GetUserQuery"}
    assert registry.get_sample_value("natsbus_requests_total", worker) == 2


def test_a_collector_of_client_metrics_alone_exports_only_client_families() -> None:
    names: List[str] = [family.name for family in PrometheusCollector(ClientMetrics()).describe()]
    assert names == ["natsbus_client_requests", "natsbus_client_request_duration_seconds"]
