"""``natsbus worker --processes N``: a supervisor and its worker processes, real signals, a real server."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import attrs
import pytest
from daemon import WorkerProcess
from daemon_handlers import Hold
from supervisor_app import Nap, Who
from waiting import wait_until
from worker_app import Sleep

from natsbus import Bus, CommandBus, NatsServer, Query, QueryBus, RequestTimeoutError
from natsbus.cli.supervisor import RestartPolicy, Supervisor, describe_exit
from natsbus.cli.worker import process_count

pytestmark = pytest.mark.timeout(60)

_SERVES = re.compile(r"supervisor: worker (\d+) \(pid (\d+)\) serves")


class Supervised(WorkerProcess):
    """``natsbus worker TARGET --processes N`` and what its log says about the children."""

    def serving(self) -> List[Tuple[int, int]]:
        """(slot, pid) of every child that said it serves, in order."""
        return [(int(m[1]), int(m[2])) for line in list(self.lines) if (m := _SERVES.search(line))]

    def pids(self) -> Set[int]:
        """The pid now serving in each slot."""
        return set(dict(self.serving()).values())

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


@pytest.fixture()
def supervisors() -> Iterator[List[Supervised]]:
    started: List[Supervised] = []
    yield started
    for supervisor in started:
        if supervisor.proc.poll() is None:
            supervisor.signal(signal.SIGTERM)
            try:
                supervisor.proc.wait(20)
            except Exception:
                pass
        supervisor.kill()


def _start(
    supervisors: List[Supervised], url: str, *args: str, target: str = "supervisor_app:make_pool", **env: str
) -> Supervised:
    supervisor = Supervised(url, target=target, args=["--processes", "2", *args], env=env)
    supervisors.append(supervisor)
    supervisor.wait_for("2 workers serving")
    return supervisor


def _load(
    client: Bus, caller: int, stop: threading.Event, failures: List[Tuple[int, float, BaseException]], calls: List[int]
) -> None:
    """One caller thread: short commands back to back until ``stop``; failures with the caller and start time."""
    commands = CommandBus(client, timeout=1.5)
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            assert commands.execute(Nap(n)) == n
        except BaseException as exc:
            failures.append((caller, started, exc))
        n += 1
        calls.append(n)


@contextlib.contextmanager
def _under_load(url: str) -> Iterator[Tuple[List[int], List[Tuple[int, float, BaseException]]]]:
    """Four caller threads (:func:`_load`) until the block ends: the calls made, the failures seen."""
    stop = threading.Event()
    failures: List[Tuple[int, float, BaseException]] = []
    calls: List[int] = []
    with Bus(url) as client:
        callers = [threading.Thread(target=_load, args=(client, i, stop, failures, calls)) for i in range(4)]
        for caller in callers:
            caller.start()
        try:
            yield calls, failures
        finally:
            stop.set()
            for caller in callers:
                caller.join(10)


# -- options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [("0", "argument --processes: must be >= 1 or auto, got 0"), ("x", "'x' is neither a number nor auto")],
)
def test_processes_that_is_not_a_positive_count_or_auto_is_a_usage_error(value: str, text: str) -> None:
    worker = WorkerProcess("nats://127.0.0.1:1", target="supervisor_app:make_pool", args=["--processes", value])
    assert worker.wait() == 2
    assert text in worker.output


def test_reload_dir_without_reload_is_a_usage_error(tmp_path: Path) -> None:
    worker = WorkerProcess(
        "nats://127.0.0.1:1", target="supervisor_app:make_pool", args=["--reload-dir", str(tmp_path)]
    )
    assert worker.wait() == 2
    assert worker.lines == ["natsbus worker: --reload-dir would be ignored without --reload; add --reload"]


def test_health_host_without_health_port_is_a_usage_error_with_processes_too() -> None:
    worker = WorkerProcess(
        "nats://127.0.0.1:1", target="supervisor_app:make_pool", args=["--processes", "2", "--health-host", "0.0.0.0"]
    )
    assert worker.wait() == 2
    assert worker.lines == [
        "natsbus worker: --health-host would be ignored without --health-port; add --health-port PORT"
    ]


def test_processes_auto_is_the_number_of_usable_cpus() -> None:
    assert process_count("auto") == len(os.sched_getaffinity(0))
    assert process_count("3") == 3


def test_restart_delay_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(first_delay=0.5, max_delay=3.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_child_exit_is_described_by_its_code_or_signal_name() -> None:
    assert describe_exit(2) == "exited with 2"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


def test_a_target_that_does_not_import_exits_2_before_any_child_starts() -> None:
    worker = WorkerProcess("nats://127.0.0.1:1", target="no_such_module:x", args=["--processes", "2"])
    assert worker.wait() == 2
    assert worker.lines == ["natsbus worker: cannot load no_such_module:x: No module named 'no_such_module'"]


def test_reload_without_watchfiles_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "watchfiles").mkdir()
    (tmp_path / "watchfiles" / "__init__.py").write_text("raise ImportError('not installed')\n")
    worker = WorkerProcess(
        "nats://127.0.0.1:1", target="supervisor_app:make_pool", args=["--reload"], env={"PYTHONPATH": str(tmp_path)}
    )
    assert worker.wait() == 2
    assert worker.lines == [
        "natsbus worker: --reload needs watchfiles, which the 'reload' extra installs: pip install 'natsbus[reload]'"
    ]


# -- start-up -------------------------------------------------------------------------


def test_two_processes_are_two_micro_instances_of_the_service(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised]
) -> None:
    supervisor = _start(supervisors, nats_server.url)
    instances = bus.discover("supervised-app")
    assert len(instances) == 2 and len({info.id for info in instances}) == 2
    answered = {QueryBus(bus).ask(Who()) for _ in range(40)}
    assert answered <= supervisor.pids() and len(supervisor.pids()) == 2
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


def test_a_child_that_fails_to_start_stops_the_supervisor_with_its_status(nats_server: NatsServer) -> None:
    worker = Supervised(nats_server.url, target="supervisor_app:broken_factory", args=["--processes", "2"])
    assert worker.wait(20) == 2
    assert "cannot build a WorkerPool from supervisor_app:broken_factory: no settings" in worker.output
    assert "restarting" not in worker.output


def test_no_server_exits_3_without_restarting() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Supervised(f"nats://127.0.0.1:{port}", args=["--processes", "2", "--connect-timeout", "1"])
    assert worker.wait(20) == 3
    assert "restarting" not in worker.output


# -- restarts ---------------------------------------------------------------------------


def test_a_killed_child_is_restarted_and_only_its_requests_fail(
    nats_server: NatsServer, supervisors: List[Supervised]
) -> None:
    supervisor = _start(supervisors, nats_server.url)
    [(slot, victim), _] = supervisor.serving()
    with _under_load(nats_server.url) as (calls, failures):
        wait_until(lambda: len(calls) > 100, what="calls before the kill")
        os.kill(victim, signal.SIGKILL)
        supervisor.wait_for(f"worker {slot} (pid {victim}) was killed by SIGKILL; restarting it in 0.5s")
        noticed_at = time.monotonic()
        wait_until(lambda: len(supervisor.serving()) == 3, what="the restarted child serving")
        served = len(calls)
        wait_until(lambda: len(calls) > served + 100, what="calls after the restart")
    # Only requests that child held fail: each sent before the supervisor saw it die (the server
    # routes to it until its connection closes), a timeout, at most one per caller.
    assert all(started < noticed_at and isinstance(exc, RequestTimeoutError) for _, started, exc in failures)
    assert len({caller for caller, _, _ in failures}) == len(failures) <= 4
    assert len(supervisor.pids()) == 2 and victim not in supervisor.pids()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


# -- drain ------------------------------------------------------------------------------------


def test_sigterm_drains_every_child_and_the_request_in_flight_completes(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    supervisor = _start(supervisors, nats_server.url, target="worker_app:make_pool", WORKER_APP_LOG=str(log))
    reply = CommandBus(bus).submit(Sleep(1.0, "inflight"), timeout=10)
    wait_until(lambda: log.exists() and "started inflight" in log.read_text(), what="the handler started")
    supervisor.signal(signal.SIGTERM)
    assert reply.result(10) == "slept"
    assert supervisor.wait() == 0
    assert supervisor.count("stopped: drained") == 2
    assert "supervisor: stopped: 2 worker(s) drained" in supervisor.output


def test_a_child_that_cannot_drain_in_time_makes_the_supervisor_exit_1(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised], tmp_path: Path
) -> None:
    supervisor = _start(supervisors, nats_server.url, "--drain-timeout", "0.2", target="daemon_handlers:build_pool")
    release = tmp_path / "release"
    CommandBus(bus).submit(Hold(str(release)), timeout=30)
    supervisor.wait_for(f"holding {release}")
    supervisor.signal(signal.SIGTERM)
    try:
        assert supervisor.wait() == 1
    finally:
        release.touch()
    assert "1 still running after 0.2s were abandoned" in supervisor.output
    assert "the worst with status 1" in supervisor.output


def test_a_second_signal_stops_every_child_at_once(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    supervisor = _start(supervisors, nats_server.url, target="worker_app:make_pool", WORKER_APP_LOG=str(log))
    CommandBus(bus).submit(Sleep(30.0, "long"), timeout=60)
    wait_until(lambda: log.exists() and "started long" in log.read_text(), what="the handler started")
    supervisor.signal(signal.SIGTERM)
    supervisor.wait_for("draining 2 worker(s)")
    started = time.monotonic()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait(10) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 8


# -- reload ------------------------------------------------------------------------------------


def test_sighup_replaces_every_child_with_no_failed_call_under_load(
    nats_server: NatsServer, supervisors: List[Supervised]
) -> None:
    supervisor = _start(supervisors, nats_server.url)
    before = supervisor.pids()
    with _under_load(nats_server.url) as (calls, failures):
        wait_until(lambda: len(calls) > 100, what="calls before the reload")
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for("reload done: 2 workers serving")
        done = len(calls)
        wait_until(lambda: len(calls) > done + 50, what="calls after the reload")
    assert failures == []
    after = supervisor.pids()
    assert len(after) == 2 and not after & before
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


@attrs.frozen
class Version(Query[str]):
    """reload_app's query, by wire name."""


RELOAD_APP = """
import attrs
from natsbus import Query, WorkerPool


@attrs.frozen
class Version(Query[str]):
    pass


def version(query: Version) -> str:
    return {version!r}


def make_pool(bus):
    pool = WorkerPool(bus, service_id="reload-app")
    pool.register(version)
    return pool
"""


def test_reload_replaces_the_children_when_a_python_file_changes_and_keeps_them_when_it_breaks(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised], tmp_path: Path
) -> None:
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP.format(version="one"))
    supervisor = Supervised(
        nats_server.url,
        target="reload_app:make_pool",
        args=["--reload", "--reload-dir", str(tmp_path)],
        env={"PYTHONPATH": str(tmp_path)},
    )
    supervisors.append(supervisor)
    supervisor.wait_for("supervisor: 1 worker serving")
    assert QueryBus(bus).ask(Version(), timeout=5) == "one"
    app.write_text("def make_pool(:\n")  # saved half-edited: the new worker cannot start
    supervisor.wait_for("reload stopped; the running workers keep serving the code they run")
    assert "SyntaxError" in supervisor.output
    assert QueryBus(bus).ask(Version(), timeout=5) == "one"
    app.write_text(RELOAD_APP.format(version="two"))
    supervisor.wait_for("reload done: 1 worker serving")
    assert QueryBus(bus).ask(Version(), timeout=5) == "two"
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


# -- systemd -------------------------------------------------------------------------------------


def test_the_supervisor_tells_systemd_ready_once_every_child_serves_and_stopping_when_they_drain(
    nats_server: NatsServer, bus: Bus, supervisors: List[Supervised], tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.settimeout(40)
        supervisor = Supervised(
            nats_server.url,
            target="supervisor_app:make_pool",
            args=["--processes", "2"],
            env={"NOTIFY_SOCKET": str(tmp_path / "notify")},
        )
        supervisors.append(supervisor)
        assert notify_socket.recv(4096) == b"READY=1\nSTATUS=2 worker processes serving"
        supervisor.wait_for("supervisor: 2 workers serving")  # logged before READY=1 was sent
        assert len(supervisor.pids()) == 2
        assert len(bus.discover("supervised-app")) == 2
        supervisor.signal(signal.SIGTERM)
        assert notify_socket.recv(4096) == b"STOPPING=1\nSTATUS=draining"  # the children said nothing
        assert supervisor.wait() == 0


def test_the_supervisor_pets_the_systemd_watchdog(
    nats_server: NatsServer, supervisors: List[Supervised], tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.settimeout(40)
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"}  # every 0.2 s
        supervisor = Supervised(nats_server.url, target="supervisor_app:make_pool", args=["--processes", "2"], env=env)
        supervisors.append(supervisor)
        # While the children start, only WATCHDOG=1 (how many depends on how fast they start), then READY=1.
        while (message := notify_socket.recv(4096)) == b"WATCHDOG=1":
            pass
        assert message.startswith(b"READY=1")
        # And while they serve, the supervisor's loop keeps petting it (every 0.2 s).
        assert [notify_socket.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait() == 0


# -- manage.py natsbus_worker --processes -----------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_app"


@contextlib.contextmanager
def manage_py_worker(url: str, tmp_path: Path, *args: str) -> Iterator[Tuple[subprocess.Popen[bytes], Path]]:
    """``manage.py natsbus_worker ARGS`` in the Django example, its output in a log file; killed if left running."""
    env = {**os.environ, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": url}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-u", "manage.py", "natsbus_worker", *args],
            cwd=EXAMPLE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker, log
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_manage_py_natsbus_worker_runs_two_processes_and_drains_them(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    here = str(Path(__file__).resolve().parent)
    args = ("--processes", "2", "--pythonpath", here, "--pool", "supervisor_app:make_pool")
    with manage_py_worker(nats_server.url, tmp_path, *args) as (worker, log):
        wait_until(lambda: "supervisor: 2 workers serving" in log.read_text(), 40, "2 workers serving")
        assert len(bus.discover("supervised-app")) == 2
        assert len({QueryBus(bus).ask(Who()) for _ in range(40)}) == 2
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert log.read_text().count("stopped: drained") == 2
        assert log.read_text().endswith("natsbus worker stopped\n")


def test_manage_py_natsbus_worker_reload_replaces_the_worker_when_a_python_file_changes(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    app = tmp_path / "reload_app.py"
    app.write_text(RELOAD_APP.format(version="one"))
    args = ("--reload", "--reload-dir", str(tmp_path), "--pythonpath", str(tmp_path), "--pool", "reload_app:make_pool")
    with manage_py_worker(nats_server.url, tmp_path, *args) as (worker, log):
        wait_until(lambda: "supervisor: 1 worker serving" in log.read_text(), 40, "the worker serving")
        assert QueryBus(bus).ask(Version(), timeout=5) == "one"
        app.write_text(RELOAD_APP.format(version="two"))
        wait_until(lambda: "reload done: 1 worker serving" in log.read_text(), 40, "the reload")
        assert QueryBus(bus).ask(Version(), timeout=5) == "two"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0


# -- health probes with --processes ------------------------------------------------------------------


def _probe(address: Tuple[str, int], path: str) -> Tuple[int, Dict[str, Any]]:
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_the_supervisor_answers_readyz_and_livez_from_its_children(
    nats_server: NatsServer, supervisors: List[Supervised]
) -> None:
    supervisor = _start(supervisors, nats_server.url, "--health-port", "0")
    announced = supervisor.wait_for("health probes on http://127.0.0.1:")
    address = ("127.0.0.1", int(re.search(r"127\.0\.0\.1:(\d+)/livez", announced)[1]))  # type: ignore[index]
    _, body = wait_until(lambda: (answer := _probe(address, "/readyz"))[0] == 200 and answer)
    assert body["status"] == "ok" and body["checks"]["ready"] == 2
    workers = body["checks"]["workers"]
    assert {int(w["pid"]) for w in workers.values()} == supervisor.pids()
    assert {w["checks"]["pool"] for w in workers.values()} == {"serving"}  # each child's own readiness
    assert _probe(address, "/livez")[0] == 200
    [(slot, victim), _] = supervisor.serving()
    os.kill(victim, signal.SIGKILL)
    _, body = wait_until(lambda: (answer := _probe(address, "/readyz"))[0] == 503 and answer)
    assert body["reason"].startswith(f"worker {slot}: ")  # restarting in ..., or starting
    assert body["checks"]["ready"] == 1
    assert _probe(address, "/livez")[0] == 200  # the supervisor restarts it: still alive
    wait_until(lambda: _probe(address, "/readyz")[0] == 200, what="ready again")
    assert victim not in supervisor.pids()
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0


# -- the supervisor in this process: its policy made short ----------------------------------------


def test_a_child_whose_event_loop_stops_answering_is_killed_and_restarted(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    tests = str(Path(__file__).resolve().parent)
    supervisor = Supervisor(
        [sys.executable, "-m", "natsbus", "worker", "supervisor_app:make_pool", "--server", nats_server.url],
        1,
        drain_timeout=5.0,
        env={**os.environ, "PYTHONPATH": tests},
        policy=RestartPolicy(unresponsive_after=1.0),
    )
    pids: List[int] = []
    problems: List[BaseException] = []

    def serving_pid() -> Optional[int]:
        worker = supervisor.snapshot.workers.get(0)
        return worker.pid if worker is not None and worker.state == "serving" else None

    def freeze_then_stop() -> None:
        try:
            pids.append(wait_until(serving_pid, 30, "the first worker serving"))
            os.kill(pids[0], signal.SIGSTOP)  # its event loop (and everything else) stops answering
            pids.append(wait_until(lambda: (pid := serving_pid()) != pids[0] and pid, 30, "its replacement"))
        except BaseException as exc:
            problems.append(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's handler: drain, run() returns

    helper = threading.Thread(target=freeze_then_stop)
    helper.start()
    with caplog.at_level(logging.INFO, logger="natsbus.cli"):
        status = supervisor.run()
    helper.join(10)
    assert problems == []
    assert status == 0
    assert len(pids) == 2 and pids[0] != pids[1]
    assert f"worker 0 (pid {pids[0]}): its event loop has not answered for " in caplog.text
    assert f"worker 0 (pid {pids[0]}) was killed by SIGKILL; restarting it in 0.5s" in caplog.text


def test_a_child_that_keeps_failing_to_start_after_a_crash_makes_the_supervisor_give_up(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    supervisor = Supervisor(
        [sys.executable, "-m", "natsbus", "worker", "supervisor_app:flaky_factory", "--server", nats_server.url],
        1,
        drain_timeout=5.0,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent), "SUPERVISOR_APP_BREAK": str(broken)},
        policy=RestartPolicy(first_delay=0.1, give_up_after=2),
    )
    problems: List[BaseException] = []

    def break_then_kill() -> None:
        try:
            worker = wait_until(
                lambda: (w := supervisor.snapshot.workers.get(0)) is not None and w.state == "serving" and w,
                30,
                "the worker serving",
            )
            broken.touch()  # from now on the factory raises: exit 2 before serving
            os.kill(worker.pid, signal.SIGKILL)
        except BaseException as exc:
            problems.append(exc)
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=break_then_kill)
    helper.start()
    with caplog.at_level(logging.INFO, logger="natsbus.cli"):
        status = supervisor.run()
    helper.join(10)
    assert problems == []
    assert status == 2
    assert caplog.text.count("exited with 2 before it served; restarting it in") == 1
    assert "exited with 2 before it served, 2 times in a row: giving up" in caplog.text
