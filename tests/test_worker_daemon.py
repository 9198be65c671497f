"""``natsbus worker`` as a real subprocess, sent real signals (issue: production worker)."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import attrs
import pytest
from daemon import WorkerProcess
from daemon_handlers import Hold
from waiting import wait_until
from worker_app import Add, Big, Fail, Remaining, Sleep, Slow

from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConflictError,
    DeadlineExceededError,
    HandlerError,
    InvalidRequestError,
    NatsServer,
    NotFoundError,
    QueryBus,
    RequestTimeoutError,
)

pytestmark = pytest.mark.timeout(90)


@attrs.frozen
class BoundAppPing(Command[str]):
    """bound_app's command, by wire name (importing bound_app would connect)."""


@pytest.fixture()
def workers() -> Iterator[List[WorkerProcess]]:
    started: List[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def _start(workers: List[WorkerProcess], url: str, *args: str, **env: str) -> WorkerProcess:
    worker = WorkerProcess(url, args=args, env=env)
    workers.append(worker)
    return worker.wait_ready()


def test_worker_serves_and_logs_one_line_at_start_and_stop(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]
) -> None:
    worker = _start(workers, nats_server.url, "--max-workers", "3")
    start_line = worker.wait_for("serving")
    assert "worker-app" in start_line and "commands.Add" in start_line and "3 threads" in start_line
    assert CommandBus(bus).execute(Add(2, 3)) == 5
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    assert "stopped: drained" in worker.output


def test_the_queue_group_option_is_the_one_subscribed_and_reported(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]
) -> None:
    worker = _start(workers, nats_server.url, "--queue-group", "blue")
    assert "(queue group blue)" in worker.wait_for("serving")
    [info] = bus.discover("worker-app")
    assert {endpoint.queue_group for endpoint in info.endpoints} == {"blue"}


def test_bad_target_exits_2(nats_server: NatsServer) -> None:
    for target, text in [
        ("no_such_module:x", "cannot load no_such_module:x"),
        ("worker_app:Add", "cannot build a WorkerPool from worker_app:Add"),
        ("worker_app:remaining", "neither a WorkerPool nor a factory returning one"),
    ]:
        worker = WorkerProcess(nats_server.url, target=target)
        assert worker.wait() == 2
        assert text in worker.output


def test_unreachable_server_exits_3() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = WorkerProcess(f"nats://127.0.0.1:{port}", args=["--connect-timeout", "1"])
    assert worker.wait() == 3
    assert f"nats://127.0.0.1:{port}" in worker.output


@pytest.mark.parametrize(
    ("files", "target", "expected"),
    [
        (
            {"app_syntax.py": "import os\ndef make_pool(:\n    pass\n"},
            "app_syntax:make_pool",
            "{tmp}/app_syntax.py:2: SyntaxError: invalid syntax",
        ),
        (
            {"app_runtime.py": "import os\n\nraise RuntimeError('no settings for this environment')\n"},
            "app_runtime:make_pool",
            "{tmp}/app_runtime.py:3: RuntimeError: no settings for this environment",
        ),
        (
            {"app_dependency.py": "import os\nimport no_such_dependency_xyz\n"},
            "app_dependency:make_pool",
            "{tmp}/app_dependency.py:2 imports 'no_such_dependency_xyz': "
            "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
        ),
        (  # the file that imports the missing module is named, not only the target
            {"app_outer.py": "import app_inner\n", "app_inner.py": "\n\nfrom no_such_dependency_xyz import thing\n"},
            "app_outer:make_pool",
            "{tmp}/app_inner.py:3 imports 'no_such_dependency_xyz': "
            "ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
        ),
    ],
)
def test_a_module_that_fails_to_import_exits_2_naming_the_file_and_line(
    tmp_path: Path, files: Dict[str, str], target: str, expected: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # No server needed: the target is loaded before anything connects.
    worker = WorkerProcess("nats://127.0.0.1:1", target=target, env={"PYTHONPATH": str(tmp_path)})
    assert worker.wait() == 2
    assert worker.lines == [f"natsbus worker: cannot load {target}: {expected.format(tmp=tmp_path)}"]


def test_a_server_url_that_is_not_nats_is_a_usage_error() -> None:
    worker = WorkerProcess("http://127.0.0.1:4222")
    assert worker.wait() == 2
    assert (
        "argument --server: server URL 'http://127.0.0.1:4222' has the scheme 'http'; "
        "NATS URLs start with nats://, tls://, ws:// or wss://"
    ) in worker.output


def test_connection_flags_for_a_pool_bound_at_import_are_refused(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]
) -> None:
    env = {"BOUND_APP_URL": nats_server.url}
    for flags, text in [
        (["--server", nats_server.url], "--server would be ignored"),
        (["--connect-timeout", "2"], "--connect-timeout would be ignored"),
    ]:
        worker = WorkerProcess(None, target="bound_app:pool", args=flags, env=env)
        assert worker.wait() == 2
        assert worker.lines == [
            f"natsbus worker: {text}: bound_app:pool is a WorkerPool already bound to a Bus; drop it"
        ]
    worker = WorkerProcess(None, target="bound_app:pool", args=["--max-workers", "2"], env=env)
    workers.append(worker)
    assert "bound-app" in worker.wait_for("serving") and "2 threads" in worker.output
    assert CommandBus(bus).execute(BoundAppPing()) == "pong"
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_a_signal_while_the_pool_starts_drains_it(nats_server: NatsServer) -> None:
    # SIGTERM arrives inside WorkerPool.start(), before it subscribes: handled, not fatal.
    worker = WorkerProcess(nats_server.url, target="signal_app:make_pool")
    assert worker.wait() == 0
    assert "signal 15: draining" in worker.output
    assert "stopped: drained 0 request(s), none left" in worker.output


def test_requests_still_running_at_the_drain_timeout_exit_1(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(nats_server.url, target="daemon_handlers:build_pool", args=["--drain-timeout", "0.2"])
    workers.append(worker)
    worker.wait_ready()
    release = tmp_path / "release"
    CommandBus(bus).submit(Hold(str(release)), timeout=30)
    worker.wait_for(f"holding {release}")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 1
    assert "1 still running after 0.2s were abandoned" in worker.output
    release.touch()


def test_sigterm_finishes_the_request_in_flight(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    worker = _start(workers, nats_server.url, WORKER_APP_LOG=str(log))
    result: List[object] = []
    caller = threading.Thread(target=lambda: result.append(CommandBus(bus).execute(Sleep(1.0, "inflight"))))
    caller.start()
    _wait_for_line(log, "started inflight")
    worker.signal(signal.SIGTERM)
    caller.join(10)
    assert result == ["slept"]
    assert worker.wait() == 0
    assert "drained 1 request(s), none left" in worker.output


def test_second_signal_stops_at_once(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    worker = _start(workers, nats_server.url, WORKER_APP_LOG=str(log))
    CommandBus(bus).submit(Sleep(30.0, "long"), timeout=60)
    _wait_for_line(log, "started long")
    worker.signal(signal.SIGTERM)
    worker.wait_for("draining")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 128 + signal.SIGTERM
    # At once: not after the drain, nor after Bus.close() waiting for the drain the signal cut short (5 s).
    assert time.monotonic() - started < 3


def test_full_worker_answers_busy_at_once(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    _start(workers, nats_server.url, "--max-pending", "0", WORKER_APP_THREADS="1", WORKER_APP_LOG=str(log))
    commands = CommandBus(bus)
    first = commands.submit(Sleep(1.0, "occupy"))
    _wait_for_line(log, "started occupy")
    started = time.monotonic()
    with pytest.raises(BusyError) as info:
        commands.execute(Add(1, 1), timeout=5)
    assert time.monotonic() - started < 2
    assert info.value.code == 503
    assert first.result(10) == "slept"


def test_request_whose_caller_gave_up_is_not_started(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], tmp_path: Path
) -> None:
    log = tmp_path / "handler.log"
    worker = _start(workers, nats_server.url, WORKER_APP_THREADS="1", WORKER_APP_LOG=str(log))
    commands = CommandBus(bus)
    first = commands.submit(Sleep(0.8, "first"))
    _wait_for_line(log, "started first")
    with pytest.raises(RequestTimeoutError):
        commands.execute(Sleep(0.0, "late"), timeout=0.2)  # queued behind "first"; gives up
    assert first.result(10) == "slept"
    assert commands.execute(Add(1, 2)) == 3  # the thread has moved past "late"
    worker.wait_for("not started: its caller already gave up")
    assert "started late" not in log.read_text()


def test_handler_can_read_its_remaining_time(nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]) -> None:
    _start(workers, nats_server.url)
    left = QueryBus(bus).ask(Remaining(), timeout=3.0)
    assert left is not None and 2.0 < left <= 3.0
    assert QueryBus(bus).ask(Remaining(), timeout=None) is None


def test_handler_over_its_time_limit_gets_the_caller_a_timeout_error(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]
) -> None:
    worker = _start(workers, nats_server.url)
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        CommandBus(bus).execute(Slow(3.0), timeout=10)
    assert time.monotonic() - started < 2.5
    assert str(info.value) == "Handler for Slow exceeded its time limit of 300ms"
    assert isinstance(info.value, TimeoutError) and info.value.code == 504
    worker.wait_for("overran its 300ms limit")
    assert CommandBus(bus).execute(Add(1, 1)) == 2


@pytest.mark.parametrize(
    ("code", "error"),
    [(400, InvalidRequestError), (404, NotFoundError), (409, ConflictError), (500, HandlerError)],
)
def test_typed_errors_cross_the_wire(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], code: int, error: type
) -> None:
    if not workers:
        _start(workers, nats_server.url)
    with pytest.raises(error) as info:
        CommandBus(bus).execute(Fail(code, f"failed with {code}"))
    assert str(info.value) == f"failed with {code}"
    assert info.value.code == code  # type: ignore[attr-defined]
    envelope = info.value.envelope  # type: ignore[attr-defined]
    assert envelope.error == f"failed with {code}" and envelope.success is False
    body = json.dumps(
        {
            "command_type": "Fail",
            "command_id": "cmd-h",
            "service_id": "t",
            "timestamp": "t",
            "payload": {"code": code, "text": "x"},
        }
    ).encode()
    reply = bus.request("commands.Fail", body, timeout=5)
    assert reply.headers == {"Nats-Service-Error": "x", "Nats-Service-Error-Code": str(code)}


def test_reply_over_max_payload_becomes_an_error_envelope(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess]
) -> None:
    _start(workers, nats_server.url)
    assert QueryBus(bus).ask(Big(1000)) == "x" * 1000
    with pytest.raises(HandlerError) as info:
        QueryBus(bus).ask(Big(bus.max_payload))
    assert f"over the server's max payload of {bus.max_payload} bytes" in str(info.value)


def test_rolling_restart_of_two_instances_costs_no_failed_call(
    nats_server: NatsServer, workers: List[WorkerProcess]
) -> None:
    url = nats_server.url
    _start(workers, url)
    _start(workers, url)
    failures: List[BaseException] = []
    calls = [0] * 8
    stop = threading.Event()

    with Bus(url) as client:
        commands = CommandBus(client, timeout=10)

        def caller(i: int) -> None:
            n = 0
            while not stop.is_set() and n < 100_000:
                try:
                    assert commands.execute(Add(i, n)) == i + n
                except BaseException as exc:
                    failures.append(exc)
                n += 1
                calls[i] = n

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            for index in (0, 1):  # restart each instance in turn, under load
                old = workers[index]
                before = sum(calls)
                old.signal(signal.SIGTERM)
                assert old.wait(30) == 0
                workers[index] = WorkerProcess(url)
                workers[index].wait_ready()
                wait_until(lambda before=before: sum(calls) > before + 200)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert failures == []
    assert sum(calls) > 400


def _wait_for_line(path: Path, text: str, timeout: float = 10.0) -> None:
    wait_until(lambda: path.exists() and text in path.read_text(), timeout)


# -- systemd: READY, STOPPING, WATCHDOG through $NOTIFY_SOCKET ---------------------


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(20)
    try:
        yield sock
    finally:
        sock.close()


def _notified(sock: socket.socket, timeout: Optional[float] = None) -> Optional[str]:
    """The next notification; None when none comes within ``timeout`` (given)."""
    if timeout is not None:
        sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        if timeout is None:
            raise
        return None


def test_worker_tells_systemd_ready_once_it_serves_and_stopping_when_it_drains(
    nats_server: NatsServer, bus: Bus, workers: List[WorkerProcess], notify_socket: socket.socket
) -> None:
    worker = WorkerProcess(nats_server.url, env={"NOTIFY_SOCKET": notify_socket.getsockname()})
    workers.append(worker)
    ready = _notified(notify_socket)
    assert ready is not None and ready.startswith("READY=1\nSTATUS=serving ") and "commands.Add" in ready
    assert CommandBus(bus).execute(Add(2, 3)) == 5  # served as soon as READY=1 came
    worker.wait_for("serving")
    assert _notified(notify_socket, 0.5) is None  # no WATCHDOG_USEC: no watchdog
    worker.signal(signal.SIGTERM)
    assert _notified(notify_socket) == "STOPPING=1\nSTATUS=draining"
    assert worker.wait() == 0


def test_worker_pets_the_systemd_watchdog_on_an_abstract_socket(
    nats_server: NatsServer, workers: List[WorkerProcess]
) -> None:
    name = f"natsbus-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(20)
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"}  # a WATCHDOG=1 every 0.2s
        worker = WorkerProcess(nats_server.url, env=env)
        workers.append(worker)
        assert (_notified(sock) or "").startswith("READY=1")
        started = time.monotonic()
        pets = [_notified(sock) for _ in range(5)]
        assert pets == ["WATCHDOG=1"] * 5
        assert time.monotonic() - started < 3
        worker.signal(signal.SIGTERM)
        while (message := _notified(sock)) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1\nSTATUS=draining"
        assert worker.wait() == 0


def test_a_watchdog_for_another_pid_is_not_petted(
    nats_server: NatsServer, workers: List[WorkerProcess], notify_socket: socket.socket
) -> None:
    env = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    worker = WorkerProcess(nats_server.url, env=env)
    workers.append(worker)
    assert (_notified(notify_socket) or "").startswith("READY=1")
    assert _notified(notify_socket, 0.6) is None
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_the_watchdog_stops_while_the_event_loop_is_stuck(bus: Bus, notify_socket: socket.socket) -> None:
    from natsbus import WorkerPool
    from natsbus.cli.systemd import Notifier

    environ = {"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"}
    notifier = Notifier(WorkerPool(bus, "stuck"), environ)
    notifier.serving()
    try:
        assert _notified(notify_socket) == "READY=1\nSTATUS=serving "
        assert _notified(notify_socket, 2) == "WATCHDOG=1"

        async def block() -> None:
            time.sleep(1.5)  # the loop thread does nothing else meanwhile

        blocker = threading.Thread(target=bus.run, args=(block,))
        blocker.start()
        time.sleep(0.3)  # the loop is blocked now; a pet already on its way may still arrive
        while _notified(notify_socket, 0.25) == "WATCHDOG=1" and blocker.is_alive():
            pass
        assert blocker.is_alive(), "no silence while the loop was stuck"
        blocker.join(5)
        assert _notified(notify_socket, 2) == "WATCHDOG=1"  # petting again once the loop answers
    finally:
        notifier.close()
