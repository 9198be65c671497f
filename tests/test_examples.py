"""The batch import and worker daemon examples, run as real processes."""

from __future__ import annotations

import configparser
import inspect
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator, List

import pytest
from daemon_handlers import Hold
from webserver import terminate, wait_for_output

from natsbus import Bus, CommandBus, NatsServer, RequestTimeoutError, WorkerPool

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = Path(__file__).resolve().parent

BATCH_API = "execute_many(messages, *, concurrency=64, return_exceptions=False, timeout=DEFAULT, progress=None)"


def test_command_bus_has_the_batch_api_the_import_example_uses() -> None:
    assert hasattr(CommandBus, "execute_many"), (
        f"CommandBus.execute_many is missing: examples/batch_import.py is written against CommandBus.{BATCH_API}"
    )
    params = inspect.signature(CommandBus.execute_many).parameters
    assert list(params)[:2] == ["self", "messages"]
    assert {"concurrency", "return_exceptions", "timeout", "progress"} <= set(params)


def test_batch_import_example(nats_server: NatsServer, user_pool: WorkerPool, tmp_path: Path) -> None:
    assert hasattr(CommandBus, "execute_many"), f"CommandBus.execute_many is missing; the example needs {BATCH_API}"
    rows = ["name,email"] + [f"user{i},user{i}@example.com" for i in range(19)]
    rows += ["again,user3@example.com", "nobody,not-an-email"]
    csv_path = tmp_path / "users.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch_import.py"), str(csv_path), "--concurrency", "8"],
        env={**os.environ, "NATS_URL": nats_server.url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "line 22: skipped: needs a name and an email, got 'nobody', 'not-an-email'",
        "user3@example.com: ConflictError: User already exists with email: user3@example.com",
        "imported 19 of 21 rows; 2 failed",
    ]
    assert "progress: 20/20 (100%)" in result.stderr
    route = user_pool.dispatcher.route_for("commands.CreateUserCommand")
    assert route is not None and (route.stats.num_requests, route.stats.num_errors) == (20, 1)


def test_batch_import_reports_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("who,where\nx,y\n")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch_import.py"), str(tmp_path / "bad.csv")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"cannot read {tmp_path / 'bad.csv'}: {tmp_path / 'bad.csv'}: missing column(s) email, name",
    )


# -- the worker daemon -------------------------------------------------------------


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    try:
        yield sock
    finally:
        sock.close()


def _start_daemon(url: str, tmp_path: Path, notify: socket.socket) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / "worker_daemon.py"), "daemon_handlers:build_pool"],
            env={
                **os.environ,
                "NATS_URL": url,
                "NOTIFY_SOCKET": notify.getsockname(),
                "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                "WORKER_DRAIN_TIMEOUT": "15",
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        ready = notify.recv(4096).decode()  # bounded by the socket's timeout
    except BaseException:
        terminate(proc)
        raise
    assert ready == "READY=1\nSTATUS=serving commands.Hold", log.read_text()
    return proc, log


def _hold_in_thread(bus: Bus, path: Path, timeout: float, results: List[object]) -> threading.Thread:
    def call() -> None:
        try:
            results.append(CommandBus(bus, timeout=timeout).execute(Hold(str(path))))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    return thread


@pytest.mark.slow
def test_worker_daemon_sigterm_drains_the_request_in_flight(
    nats_server: NatsServer, bus: Bus, tmp_path: Path, notify_socket: socket.socket
) -> None:
    proc, log = _start_daemon(nats_server.url, tmp_path, notify_socket)
    try:
        release = tmp_path / "release"
        results: List[object] = []
        caller = _hold_in_thread(bus, release, 20, results)
        wait_for_output(proc, log, "holding")
        proc.send_signal(signal.SIGTERM)
        wait_for_output(proc, log, "signal 15: draining")
        assert proc.poll() is None  # still running: the request is not done
        release.touch()
        caller.join(20)
        assert results == ["released"]
        assert proc.wait(20) == 0
        assert "stopped cleanly" in log.read_text()
    finally:
        terminate(proc)


@pytest.mark.slow
def test_worker_daemon_second_signal_stops_at_once(
    nats_server: NatsServer, bus: Bus, tmp_path: Path, notify_socket: socket.socket
) -> None:
    proc, log = _start_daemon(nats_server.url, tmp_path, notify_socket)
    try:
        results: List[object] = []
        caller = _hold_in_thread(bus, tmp_path / "never", 1.0, results)
        wait_for_output(proc, log, "holding")
        proc.send_signal(signal.SIGTERM)
        wait_for_output(proc, log, "signal 15: draining")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 128 + signal.SIGTERM
        assert "second signal: stopping at once" in log.read_text()
        caller.join(10)
        assert len(results) == 1 and isinstance(results[0], RequestTimeoutError)
    finally:
        terminate(proc)


def test_worker_daemon_exit_codes_for_bad_config_and_no_server(tmp_path: Path) -> None:
    def run(*args: str, url: str = "nats://127.0.0.1:1") -> int:
        env = {**os.environ, "NATS_URL": url, "WORKER_CONNECT_TIMEOUT": "0.3"}
        env.pop("NOTIFY_SOCKET", None)
        return subprocess.run(
            [sys.executable, str(EXAMPLES / "worker_daemon.py"), *args], env=env, capture_output=True, timeout=60
        ).returncode

    assert run("no_such_module:build_pool") == 78
    assert run(url="localhost:4222") == 78
    assert run() == 69


def test_systemd_unit_matches_the_daemon() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(EXAMPLES / "natsbus-worker.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["KillSignal"] == "SIGTERM"
    assert "examples/worker_daemon.py" in service["ExecStart"]
    assert service["RestartPreventExitStatus"] == "78"
    # configparser keeps the last of repeated keys; read every Environment= line.
    env = dict(
        line.split("=", 2)[1:]  # type: ignore[misc]
        for line in (EXAMPLES / "natsbus-worker.service").read_text().splitlines()
        if line.startswith("Environment=")
    )
    assert float(service["TimeoutStopSec"]) > float(env["WORKER_DRAIN_TIMEOUT"]), "systemd would SIGKILL a drain"
