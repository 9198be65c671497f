"""The batch import example and the systemd unit, run as real processes."""

from __future__ import annotations

import configparser
import inspect
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

from webserver import terminate

from natsbus import Bus, CommandBus, NatsServer, WorkerPool

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


# -- the systemd unit ---------------------------------------------------------------

UNIT = EXAMPLES / "natsbus-worker.service"


def _unit() -> configparser.SectionProxy:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    return unit["Service"]


def _exec_start(service: configparser.SectionProxy) -> List[str]:
    """ExecStart's command line, with `natsbus` as this interpreter's `-m natsbus`."""
    program, *args = shlex.split(service["ExecStart"])
    assert program.endswith("/bin/natsbus") and args[0] == "worker", service["ExecStart"]
    return [sys.executable, "-m", "natsbus", *args]


def test_systemd_unit_runs_natsbus_worker() -> None:
    service = _unit()
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a usage error: restarting would not help
    args = _exec_start(service)
    assert args[3:5] == ["worker", "natsbus.demo:build_pool"]
    drain_timeout = float(args[args.index("--drain-timeout") + 1])
    assert float(service["TimeoutStopSec"]) > drain_timeout, "systemd would SIGKILL a drain"
    assert float(service["WatchdogSec"]) > 0


def test_systemd_unit_command_line_notifies_ready_watchdog_and_stopping(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """ExecStart as systemd would run it: NOTIFY_SOCKET and WATCHDOG_USEC (WatchdogSec) set."""
    service = _unit()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(30)
    watchdog_usec = 400_000  # WatchdogSec=30 would take 15s per WATCHDOG=1; the same code path
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "NOTIFY_SOCKET": notify.getsockname(),
        "WATCHDOG_USEC": str(watchdog_usec),
    }
    log = tmp_path / "worker.log"
    with notify, open(log, "wb") as out:
        proc = subprocess.Popen(_exec_start(service), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            ready = notify.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=serving commands.CreateUserCommand"), log.read_text()
            [info] = bus.discover("user-service")  # serving once READY=1 came
            assert "commands.CreateUserCommand" in [endpoint.subject for endpoint in info.endpoints]
            assert notify.recv(4096) == b"WATCHDOG=1"
            proc.send_signal(signal.SIGTERM)
            while (message := notify.recv(4096)) == b"WATCHDOG=1":
                pass
            assert message == b"STOPPING=1\nSTATUS=draining"
            assert proc.wait(30) == 0, log.read_text()
        finally:
            terminate(proc)
