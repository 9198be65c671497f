"""natsbus.health: /livez and /readyz over real HTTP, against a real nats-server, the worker CLI, Flask and Django."""

from __future__ import annotations

import http.client
import json
import logging
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs
import pytest
from daemon import WorkerProcess
from daemon_handlers import Hold
from flask import Flask
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, ConfigError, ConnectionState, LifecycleError, NatsServer, WorkerPool
from natsbus.contrib.flask import NatsBus
from natsbus.health import Health, HealthServer, bus_liveness, bus_readiness, pool_liveness, pool_readiness
from natsbus.testing import InMemoryBus

pytestmark = pytest.mark.timeout(90)

Answer = Tuple[int, Dict[str, str], Any]


def _get(address: Tuple[str, int], path: str, method: str = "GET") -> Answer:
    """``(status, headers, body)``: the body parsed as JSON, ``b""`` when empty (HEAD)."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.headers), json.loads(data) if data else data
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def listening() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


# -- Health and HealthServer -------------------------------------------------------


def test_health_to_json_has_the_documented_keys() -> None:
    assert Health(True).to_json() == {"status": "ok", "reason": "", "checks": {}}
    assert Health(False, "draining", {"pool": "draining"}).to_json() == {
        "status": "unavailable",
        "reason": "draining",
        "checks": {"pool": "draining"},
    }


def test_health_refuses_an_ok_that_is_not_a_bool() -> None:
    with pytest.raises(TypeError, match="'ok' must be <class 'bool'>"):
        Health("yes")  # type: ignore[arg-type]


def test_probes_answer_200_when_ok_and_503_with_the_reason_when_not() -> None:
    with HealthServer(lambda: Health(True, checks={"loop": "ok"}), lambda: Health(False, "draining")) as server:
        status, headers, body = _get(server.address, "/livez")
        assert (status, body) == (200, {"status": "ok", "reason": "", "checks": {"loop": "ok"}})
        assert headers["Content-Type"] == "application/json"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Server"] == "natsbus-health"  # no Python version
        status, _, body = _get(server.address, "/readyz")
        assert (status, body) == (503, {"status": "unavailable", "reason": "draining", "checks": {}})
        assert _get(server.address, "/readyz?verbose")[0] == 503  # a query string does not change the path


def test_unknown_paths_get_404_other_methods_405_and_head_the_headers_only() -> None:
    with HealthServer(lambda: Health(True), lambda: Health(True)) as server:
        status, _, body = _get(server.address, "/healthz")
        assert (status, body) == (404, {"error": "not found", "paths": ["/livez", "/readyz"]})
        status, headers, body = _get(server.address, "/readyz", "POST")
        assert (status, headers["Allow"], body["error"]) == (405, "GET, HEAD", "method not allowed")
        assert _get(server.address, "/livez", "DELETE")[0] == 405
        status, headers, body = _get(server.address, "/livez", "HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) == len(b'{"status": "ok", "reason": "", "checks": {}}\n')


def test_a_check_that_raises_answers_503_with_the_error_type_only(caplog: pytest.LogCaptureFixture) -> None:
    def leaky() -> Health:
        raise RuntimeError("cannot reach nats://user:hunter2@nats:4222")

    caplog.set_level(logging.WARNING, "natsbus.health")
    with HealthServer(leaky, lambda: "not a Health") as server:  # type: ignore[arg-type, return-value]
        status, _, body = _get(server.address, "/livez")
        assert (status, body) == (
            503,
            {"status": "unavailable", "reason": "check failed: RuntimeError", "checks": {"error": "RuntimeError"}},
        )
        status, _, body = _get(server.address, "/readyz")
        assert (status, body["reason"]) == (503, "check failed: not a Health")
    with HealthServer(lambda: Health(True, checks={(1, 2): "a tuple key"}), leaky) as server:
        status, _, body = _get(server.address, "/livez")
        assert (status, body["reason"]) == (503, "check failed: details not JSON")
    assert "hunter2" not in caplog.text
    assert "the /livez check raised RuntimeError" in caplog.text


def test_requests_are_logged_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "natsbus.health")
    with HealthServer(lambda: Health(True), lambda: Health(True)) as server:
        _get(server.address, "/livez")
        assert [r.getMessage() for r in caplog.records if "livez" in r.getMessage()] == [
            f"health probes on http://127.0.0.1:{server.address[1]}/livez and /readyz"
        ]
        caplog.set_level(logging.DEBUG, "natsbus.health")
        _get(server.address, "/livez")
    assert re.search(r'"GET /livez HTTP/1.1" 200', caplog.text)


def test_port_0_reports_the_real_port_and_close_frees_it_and_is_safe_twice() -> None:
    server = HealthServer(lambda: Health(True), lambda: Health(True))
    with pytest.raises(LifecycleError, match="not started"):
        _ = server.address
    server.start()
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    with pytest.raises(LifecycleError, match="already started"):
        server.start()
    server.close()
    server.close()
    with pytest.raises(LifecycleError, match="closed"):
        server.start()
    with HealthServer(lambda: Health(True), lambda: Health(True), port=port) as again:  # the port is free again
        assert again.address == ("127.0.0.1", port)


def test_a_port_in_use_or_out_of_range_is_a_config_error(listening: int) -> None:
    server = HealthServer(lambda: Health(True), lambda: Health(True), port=listening)
    with pytest.raises(ConfigError, match=rf"^cannot serve health probes on 127\.0\.0\.1:{listening}: Address already"):
        server.start()
    with pytest.raises(ConfigError, match="from 0 to 65535, got 70000"):
        HealthServer(lambda: Health(True), lambda: Health(True), port=70000)


# -- the pool's checks against a real server -----------------------------------------


@attrs.frozen
class Echo(Command[str]):
    text: str


@attrs.frozen
class Block(Command[str]):
    pass


def test_readyz_is_503_while_nats_is_stopped_and_200_once_it_is_back(server: NatsServer) -> None:
    bus = Bus(server.url, reconnect_time_wait=0.2, max_reconnect_attempts=-1)
    pool = WorkerPool(bus, service_id="health-outage")
    pool.register(_echo)
    probes = HealthServer(lambda: pool_liveness(pool), lambda: pool_readiness(pool))
    try:
        with probes:
            status, _, body = _get(probes.address, "/readyz")
            assert (status, body["reason"], body["checks"]["pool"]) == (503, "not serving yet", "not serving yet")
            pool.start()
            status, _, body = _get(probes.address, "/readyz")
            assert (status, body) == (
                200,
                {
                    "status": "ok",
                    "reason": "",
                    "checks": {"service": "health-outage", "pool": "serving", "connection": "connected", "inflight": 0},
                },
            )
            server.stop()
            wait_until(lambda: not bus.is_connected, 10, "the bus saw the server go")
            status, _, body = _get(probes.address, "/readyz")
            assert (status, body["reason"]) == (503, "not connected (reconnecting)")
            assert _get(probes.address, "/livez")[:3:2] == (
                200,
                {"status": "ok", "reason": "", "checks": {"loop": "ok"}},
            )
            server.start()  # the same port
            assert bus.wait_connected(10)
            assert _get(probes.address, "/readyz")[0] == 200
            assert CommandBus(bus).execute(Echo("back")) == "back"
    finally:
        pool.stop(5.0)
        bus.close()


def _echo(cmd: Echo) -> str:
    return cmd.text


def test_readyz_says_draining_while_a_slow_handler_keeps_the_drain_open(bus: Bus) -> None:
    started, release = threading.Event(), threading.Event()

    def block(cmd: Block) -> str:
        started.set()
        release.wait(20)
        return "done"

    pool = WorkerPool(bus, service_id="health-drain")
    pool.register(block)
    pool.start()
    results: List[Any] = []
    caller = threading.Thread(target=lambda: results.append(CommandBus(bus).execute(Block(), timeout=20)))
    stopper = threading.Thread(target=lambda: results.append(pool.stop(20)))
    with HealthServer(lambda: pool_liveness(pool), lambda: pool_readiness(pool)) as probes:
        try:
            assert _get(probes.address, "/readyz")[0] == 200
            caller.start()
            assert started.wait(10)
            stopper.start()
            wait_until(lambda: not pool.running, 10, "the drain started")
            status, _, body = _get(probes.address, "/readyz")
            assert (status, body["reason"], body["checks"]["pool"], body["checks"]["inflight"]) == (
                503,
                "draining",
                "draining",
                1,
            )
            assert _get(probes.address, "/livez")[0] == 200  # draining is alive
        finally:
            release.set()
            caller.join(10)
            stopper.join(10)
        assert sorted(map(str, results)) == ["True", "done"]
        status, _, body = _get(probes.address, "/readyz")
        assert (status, body["reason"]) == (503, "stopped")


def test_livez_fails_while_the_event_loop_is_stuck_and_once_the_bus_is_closed(nats_url: str) -> None:
    bus = Bus(nats_url)
    stuck, unstick = threading.Event(), threading.Event()

    async def block() -> None:
        stuck.set()
        unstick.wait(10)  # blocks the loop thread itself, as a bug in a callback would

    blocker = threading.Thread(target=bus.run, args=(block,))
    try:
        assert bus_liveness(bus) == Health(True, checks={"loop": "ok"})
        blocker.start()
        assert stuck.wait(10)
        assert bus_liveness(bus, timeout=0.2) == Health(
            False, "event loop not responding", {"loop": "no answer within 0.2s"}
        )
    finally:
        unstick.set()
        blocker.join(10)
    assert pool_liveness(WorkerPool(bus)) == Health(True, checks={"loop": "ok"})
    bus.close()
    assert pool_liveness(WorkerPool(bus)) == Health(False, "bus closed", {"loop": "closed"})
    assert pool_liveness(WorkerPool()) == Health(True, checks={"loop": "no bus yet"})


def test_bus_readiness_names_the_connection_state(nats_url: str) -> None:
    bus = Bus(nats_url)
    assert bus_readiness(bus) == Health(True, checks={"connection": "connected"})
    bus.close()
    assert bus_readiness(bus) == Health(False, "not connected (closed)", {"connection": ConnectionState.CLOSED.value})


# -- natsbus worker --health-port ----------------------------------------------------


@pytest.fixture()
def workers() -> Iterator[List[WorkerProcess]]:
    started: List[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.mark.slow
def test_worker_serves_probes_from_before_it_subscribes_says_draining_and_stops_after_the_drain(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(nats_server.url, "daemon_handlers:build_pool", ["--health-port", "0"])
    workers.append(worker)
    announced = worker.wait_for("health probes on http://127.0.0.1:")
    port = int(re.search(r":(\d+)/livez", announced).group(1))  # type: ignore[union-attr]
    serving = worker.wait_for("serving commands.Hold")
    assert worker.lines.index(announced) < worker.lines.index(serving)  # listening before it subscribed
    address = ("127.0.0.1", port)
    assert _get(address, "/livez")[:3:2] == (200, {"status": "ok", "reason": "", "checks": {"loop": "ok"}})
    status, _, body = _get(address, "/readyz")
    assert (status, body["checks"]["service"], body["checks"]["connection"]) == (200, "daemon-test", "connected")
    assert _get(address, "/metrics")[0] == 404

    release = tmp_path / "release"
    results: List[str] = []
    caller = threading.Thread(target=lambda: results.append(CommandBus(bus).execute(Hold(str(release)), timeout=30)))
    caller.start()
    try:
        worker.wait_for("holding")
        worker.signal(signal.SIGTERM)
        worker.wait_for("signal 15: draining")
        # The handler holds until `release` exists: the drain is open all along.
        wait_until(lambda: _get(address, "/readyz")[0] == 503, 10, "/readyz turned 503")
        status, _, body = _get(address, "/readyz")
        assert (status, body["reason"]) == (503, "draining")
        assert _get(address, "/livez")[0] == 200
    finally:
        release.touch()
        caller.join(30)
    assert results == ["released"]
    assert worker.wait() == 0
    with pytest.raises(ConnectionRefusedError):  # the probes stopped with the process's drain
        _get(address, "/livez")


@pytest.mark.slow
def test_worker_health_port_in_use_is_a_usage_error_before_subscribing(
    nats_server: NatsServer, workers: List[WorkerProcess], listening: int
) -> None:
    worker = WorkerProcess(nats_server.url, "daemon_handlers:build_pool", ["--health-port", str(listening)])
    workers.append(worker)
    assert worker.wait() == 2
    assert f"natsbus worker: cannot serve health probes on 127.0.0.1:{listening}: Address already in use" in (
        worker.output
    )
    assert "serving" not in worker.output


def test_worker_refuses_a_health_host_without_a_health_port(capsys: pytest.CaptureFixture[str]) -> None:
    from natsbus.cli.main import main

    assert (
        main(["worker", "daemon_handlers:build_pool", "--health-host", "0.0.0.0", "--server", "nats://127.0.0.1:1"])
        == 2
    )
    assert "--health-host would be ignored without --health-port" in capsys.readouterr().err


# -- Flask and Django ------------------------------------------------------------------


def _flask_app(servers: Optional[str] = None, memory: Optional[InMemoryBus] = None) -> Tuple[Flask, NatsBus]:
    app = Flask("health-test")
    app.config["NATSBUS_SERVERS"] = servers
    app.config["NATSBUS_IN_MEMORY"] = memory
    app.config["NATSBUS_OPTIONS"] = {"connect_timeout": 2.0}
    cqrs = NatsBus(app)
    app.register_blueprint(cqrs.health_blueprint())
    return app, cqrs


def test_flask_probes_answer_as_the_worker_does_and_livez_opens_no_connection(nats_url: str) -> None:
    app, cqrs = _flask_app(nats_url)
    client = app.test_client()
    try:
        response = client.get("/livez")
        assert (response.status_code, response.json) == (
            200,
            {"status": "ok", "reason": "", "checks": {"loop": "not opened"}},
        )
        assert not app.extensions["natsbus"].opened
        response = client.get("/readyz")
        assert (response.status_code, response.json) == (
            200,
            {"status": "ok", "reason": "", "checks": {"connection": "connected"}},
        )
        assert response.headers["Cache-Control"] == "no-store"
        assert client.get("/livez").json["checks"] == {"loop": "ok"}
        assert client.post("/readyz").status_code == 405
        assert client.head("/readyz").status_code == 200
    finally:
        cqrs.close(app)


def test_flask_readyz_is_503_when_nats_cannot_be_reached_and_200_for_the_in_memory_bus() -> None:
    app, _ = _flask_app(f"nats://127.0.0.1:{_free_port()}")
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.json) == (
        503,
        {"status": "unavailable", "reason": "not connected (ConnectError)", "checks": {"connection": "not opened"}},
    )
    app, _ = _flask_app(memory=InMemoryBus())
    response = app.test_client().get("/readyz")
    assert (response.status_code, response.json["checks"]) == (200, {"connection": "in-memory"})
    assert app.test_client().get("/livez").json["checks"] == {"loop": "in-memory"}


def test_django_views_answer_as_the_worker_does_and_livez_opens_no_connection(
    django_setup: None, server: NatsServer
) -> None:
    from django.test import Client, override_settings

    from natsbus.contrib.django import close_bus, get_bus, process_bus

    with override_settings(ROOT_URLCONF="health_urls", NATSBUS={"SERVERS": server.url}):
        try:
            client = Client()
            response = client.get("/livez")
            assert (response.status_code, response.json()) == (
                200,
                {"status": "ok", "reason": "", "checks": {"loop": "not opened"}},
            )
            assert not process_bus.opened
            response = client.get("/readyz")
            assert (response.status_code, response.json()) == (
                200,
                {"status": "ok", "reason": "", "checks": {"connection": "connected"}},
            )
            assert response["Cache-Control"] == "no-store"
            assert client.post("/readyz").status_code == 405
            bus = get_bus()
            server.stop()
            wait_until(lambda: not bus.is_connected, 10, "the bus saw the server go")
            response = client.get("/readyz")
            assert (response.status_code, response.json()["reason"]) == (503, "not connected (reconnecting)")
            assert client.get("/livez").status_code == 200
        finally:
            close_bus()


@pytest.mark.slow
def test_django_natsbus_worker_takes_the_health_options(
    tmp_path: Path, listening: int, nats_server: NatsServer
) -> None:
    import os
    import subprocess
    import sys

    example = Path(__file__).resolve().parent.parent / "examples" / "django_app"
    env = {**os.environ, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": nats_server.url}
    result = subprocess.run(
        [sys.executable, "manage.py", "natsbus_worker", "--health-port", str(listening)],
        cwd=example,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"CommandError: cannot serve health probes on 127.0.0.1:{listening}: Address already in use" in (
        result.stderr
    )
    assert "serving" not in result.stderr
