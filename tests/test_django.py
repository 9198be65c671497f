"""natsbus.contrib.django: in-process (settings, checks, on-commit) and the example project under gunicorn."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import attrs
import pytest
from daemon_handlers import Hold
from webserver import CLOSED, OPENED, gunicorn, stop, terminate, wait_for_output

from natsbus import (
    Bus,
    CommandBus,
    ConfigError,
    MessageTypeError,
    NatsServer,
    NoHandlerError,
    Query,
    QueryBus,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, CreateUserHandler, GetUserHandler, GetUserQuery, UserCreated, UserRepository
from natsbus.testing import InMemoryBus

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLE = ROOT / "examples" / "django_app"


@pytest.fixture(scope="module")
def django_setup() -> None:
    """Django configured in this process: an in-memory sqlite and the natsbus app."""
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="tests-only-not-a-secret",
            INSTALLED_APPS=["natsbus.contrib.django"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            NATSBUS={"SERVICE_ID": "tests"},
            USE_TZ=True,
        )
        django.setup()


@pytest.fixture()
def memory(django_setup: None) -> Iterator[InMemoryBus]:
    """The in-memory user-service, installed as NATSBUS['IN_MEMORY'] for the test."""
    from django.test import override_settings

    repository = UserRepository()
    bus = InMemoryBus([CreateUserHandler(repository), GetUserHandler(repository)])
    with override_settings(NATSBUS={"IN_MEMORY": bus}):
        yield bus


def test_checks_report_every_bad_setting(django_setup: None) -> None:
    from django.test import override_settings

    from natsbus.contrib.django.checks import check_settings

    bad = {
        "SERVERS": ["nats://a:4222", "b:4222"],
        "TIMOUT": 5,
        "QUERY_TIMEOUT": -1,
        "SERVICE_ID": "",
        "OPTIONS": {"conect_timeout": 1},
        "POOL": "no_such_module:build_pool",
    }
    with override_settings(NATSBUS=bad):
        errors = check_settings()
    assert [(e.id, e.msg) for e in errors] == [
        (
            "natsbus.E002",
            "NATSBUS['TIMOUT'] is not a natsbus setting; "
            "known: IN_MEMORY, OPTIONS, POOL, QUERY_TIMEOUT, SERVERS, SERVICE_ID, TIMEOUT",
        ),
        ("natsbus.E003", "NATSBUS['QUERY_TIMEOUT'] must be a number of seconds > 0, or None for no limit; got -1"),
        ("natsbus.E003", "NATSBUS['SERVICE_ID'] must be a non-empty string, got ''"),
        ("natsbus.E003", errors[3].msg),
        (
            "natsbus.E004",
            "NATSBUS['POOL'] = 'no_such_module:build_pool' does not import: No module named 'no_such_module'",
        ),
    ]
    assert errors[3].msg.startswith("NATSBUS['OPTIONS'] has 'conect_timeout', which NatsConfig does not take")
    with override_settings(NATSBUS={"SERVERS": ["nats://a:4222", "b:4222"]}):
        assert [e.msg for e in check_settings()] == [
            "NATSBUS['SERVERS']: server URL 'b:4222' has no scheme; expected e.g. nats://host:4222"
        ]
    with override_settings(NATSBUS="nats://x:4222"):
        assert [(e.id, e.msg) for e in check_settings()] == [("natsbus.E001", "NATSBUS must be a dict, got str")]
    with override_settings(NATSBUS={"POOL": "natsbus.demo:build_pool", "OPTIONS": {"connect_timeout": 2}}):
        assert check_settings() == []


def test_manage_py_check_fails_on_bad_settings(django_setup: None) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test import override_settings

    with override_settings(NATSBUS={"TIMEOUT": "5s"}), pytest.raises(SystemCheckError, match=r"natsbus\.E003"):
        call_command("check")


def test_execute_on_commit_sends_only_after_the_commit(memory: InMemoryBus) -> None:
    from django.db import transaction

    from natsbus.contrib.django import execute_on_commit

    results: List[UserCreated] = []
    with transaction.atomic():
        execute_on_commit(CreateUserCommand("Ann", "ann@example.com"), on_result=results.append)
        with transaction.atomic():  # a savepoint: still waits for the outer commit
            execute_on_commit(CreateUserCommand("Ben", "ben@example.com"))
        assert memory.sent == []
    assert memory.sent == [CreateUserCommand("Ann", "ann@example.com"), CreateUserCommand("Ben", "ben@example.com")]
    assert len(results) == 1 and isinstance(results[0], UserCreated)


def test_execute_on_commit_never_sends_after_a_rollback(memory: InMemoryBus) -> None:
    from django.db import transaction

    from natsbus.contrib.django import execute_on_commit

    with pytest.raises(ZeroDivisionError), transaction.atomic():
        execute_on_commit(CreateUserCommand("Ann", "ann@example.com"))
        1 / 0  # noqa: B018
    with transaction.atomic():
        try:
            with transaction.atomic():  # a rolled-back savepoint drops its callbacks only
                execute_on_commit(CreateUserCommand("Ben", "ben@example.com"))
                raise KeyError("x")
        except KeyError:
            pass
        execute_on_commit(CreateUserCommand("Cid", "cid@example.com"))
    assert memory.sent == [CreateUserCommand("Cid", "cid@example.com")]


def test_execute_on_commit_outside_a_transaction_sends_at_once(memory: InMemoryBus) -> None:
    from natsbus.contrib.django import execute_on_commit

    execute_on_commit(CreateUserCommand("Ann", "ann@example.com"))
    assert memory.sent == [CreateUserCommand("Ann", "ann@example.com")]


def test_execute_on_commit_failures_are_logged_or_raised(memory: InMemoryBus, caplog: pytest.LogCaptureFixture) -> None:
    from django.db import transaction

    from natsbus.contrib.django import execute_on_commit

    @attrs.frozen
    class Unserved:
        x: int

    with caplog.at_level(logging.ERROR), transaction.atomic():
        execute_on_commit(Unserved(1))  # robust: the commit stands, the failure is logged
    assert "execute_on_commit(Unserved)" in caplog.text
    assert "No handler available for commands.Unserved" in caplog.text
    with pytest.raises(NoHandlerError), transaction.atomic():
        execute_on_commit(Unserved(2), robust=False)


def test_execute_on_commit_checks_the_message_at_once(memory: InMemoryBus) -> None:
    from natsbus.contrib.django import execute_on_commit

    with pytest.raises(ConfigError, match="GetUserQuery is a query"):
        execute_on_commit(GetUserQuery("u"))
    with pytest.raises(MessageTypeError):
        execute_on_commit({"name": "x"})
    assert memory.sent == []


def test_the_process_bus_follows_setting_changes(django_setup: None, nats_url: str, user_pool: WorkerPool) -> None:
    from django.test import override_settings

    from natsbus.contrib import django as natsbus_django

    with override_settings(NATSBUS={"SERVERS": nats_url, "SERVICE_ID": "web"}):
        bus = natsbus_django.get_bus()
        assert natsbus_django.get_bus() is bus and bus.is_connected
        created = natsbus_django.get_command_bus().execute(CreateUserCommand("Dee", "dee@example.com"))
        assert natsbus_django.get_query_bus().ask(GetUserQuery(created.user_id)).name == "Dee"
        with override_settings(NATSBUS={"IN_MEMORY": InMemoryBus()}):
            assert bus.closed  # the change closed it
            with pytest.raises(ConfigError, match="in-memory bus"):
                natsbus_django.get_bus()
    natsbus_django.close_bus()


# -- the example project: gunicorn, the worker command, sqlite --------------------


@attrs.frozen
class SignupStats:
    total: int
    linked: int


@attrs.frozen
class SignupStatsQuery(Query[SignupStats]):
    """The example's query, defined here as another service would: by wire name only."""


def _manage(env: Dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _create_count(pool: WorkerPool) -> int:
    route = pool.dispatcher.route_for("commands.CreateUserCommand")
    assert route is not None
    return route.stats.num_requests


def test_manage_py_check_passes_for_the_example(tmp_path: Path) -> None:
    result = _manage({"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": ""}, "check")
    assert (result.returncode, result.stdout.strip()) == (0, "System check identified no issues (0 silenced).")
    result = _manage({"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": "localhost"}, "check")
    assert result.returncode == 1
    assert "natsbus.E003" in result.stderr and "NATS_URL" in result.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_natsbus_worker_refuses_bad_options_and_targets_with_exit_2_and_no_server_with_3(tmp_path: Path) -> None:
    env = {"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": ""}
    result = _manage(env, "natsbus_worker", "--server", "http://127.0.0.1:4222")
    assert result.returncode == 2
    assert "argument --server: server URL 'http://127.0.0.1:4222' has the scheme 'http'" in result.stderr
    result = _manage(env, "natsbus_worker", "--pool", "no_such_module:make_pool")
    assert (result.returncode, result.stderr) == (
        2,
        "CommandError: cannot load no_such_module:make_pool: No module named 'no_such_module'\n",
    )
    (tmp_path / "broken_pool.py").write_text("import os\nraise RuntimeError('settings missing')\n")
    result = _manage(env, "natsbus_worker", "--pythonpath", str(tmp_path), "--pool", "broken_pool:build")
    assert (result.returncode, result.stderr) == (
        2,
        f"CommandError: cannot load broken_pool:build: {tmp_path}/broken_pool.py:2: RuntimeError: settings missing\n",
    )
    port = _closed_port()
    result = _manage(env, "natsbus_worker", "--server", f"nats://127.0.0.1:{port}", "--connect-timeout", "1")
    assert result.returncode == 3
    assert f"nats://127.0.0.1:{port}" in result.stderr


@pytest.mark.slow
def test_natsbus_worker_takes_the_worker_options_and_drains_a_signal_that_comes_while_it_starts(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    env = {"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": ""}  # only --server says where
    result = _manage(
        env,
        "natsbus_worker",
        "--pythonpath",
        str(TESTS),
        "--pool",
        "signal_app:make_pool",  # SIGTERM inside WorkerPool.start(), before it subscribes
        "--server",
        nats_server.url,
        "--connect-timeout",
        "3",
        "--max-workers",
        "3",
        "--max-pending",
        "7",
        "--queue-group",
        "signal-group",
    )
    assert result.returncode == 0, result.stderr
    assert "serving commands.SignalAppPing with 3 threads, 7 pending at most (queue group signal-group)" in (
        result.stderr
    )
    assert "signal 15: draining" in result.stderr
    assert result.stdout == "natsbus worker stopped\n"


@pytest.mark.slow
def test_natsbus_worker_exits_1_when_the_drain_timeout_abandons_requests(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    env = {"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": nats_server.url}
    log = tmp_path / "worker.log"
    release = tmp_path / "release"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                *(sys.executable, "-u", "manage.py", "natsbus_worker", "--pythonpath", str(TESTS)),
                *("--pool", "daemon_handlers:build_pool", "--drain-timeout", "0.2"),
            ],
            cwd=EXAMPLE,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_output(worker, log, "serving commands.Hold")
        CommandBus(bus).submit(Hold(str(release)), timeout=30)
        wait_for_output(worker, log, f"holding {release}")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 1
        text = log.read_text()
        assert "1 still running after 0.2s were abandoned" in text
        assert "CommandError: stopped without draining" in text
    finally:
        release.touch()
        terminate(worker)


@pytest.mark.slow
def test_example_project_under_gunicorn(
    nats_server: NatsServer, user_pool: WorkerPool, bus: Bus, tmp_path: Path
) -> None:
    env = {"NATS_URL": nats_server.url, "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    migrated = _manage(env, "migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stderr
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-u", "manage.py", "natsbus_worker", "--drain-timeout", "5"],
            cwd=EXAMPLE,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with gunicorn("mysite.wsgi:application", cwd=EXAMPLE, env=env, log_path=tmp_path / "gunicorn.log") as server:
            # Direct sends from views.
            status, created = server.call("POST", "/users", {"name": "Alice", "email": "alice@example.com"})
            assert status == 201, server.log()
            status, user = server.call("GET", f"/users/{created['user_id']}")
            assert (status, user["email"]) == (200, "alice@example.com")
            assert server.call("POST", "/users", {"name": "Alice", "email": "alice@example.com"}) == (
                409,
                {"error": "User already exists with email: alice@example.com", "type": "ConflictError"},
            )
            assert server.call("GET", "/users/user-nobody")[0] == 404

            # After the commit: the user exists and the signup row holds its id.
            status, signup = server.call("POST", "/signups", {"name": "Bob", "email": "bob@example.com"})
            assert status == 201 and signup["user_id"].startswith("user-"), server.log()
            assert server.call("GET", f"/users/{signup['user_id']}")[1]["name"] == "Bob"
            # A rollback: the row is gone and the command never reached the service.
            sent_before = _create_count(user_pool)
            assert server.call("POST", "/signups", {"name": "Cy", "email": "cy@example.com", "rollback": True}) == (
                200,
                {"rolled_back": True},
            )
            assert _create_count(user_pool) == sent_before

            # 16 signups from 8 threads over 2 worker processes.
            results: List[Tuple[int, Any]] = []
            lock = threading.Lock()

            def client(i: int) -> None:
                for j in (2 * i, 2 * i + 1):
                    answer = server.call("POST", "/signups", {"name": f"u{j}", "email": f"u{j}@example.com"})
                    with lock:
                        results.append(answer)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert sorted(status for status, _ in results) == [201] * 16, server.log()
            assert all(body["user_id"] for _, body in results)

            # The worker command serves an ORM-backed query on the same database.
            wait_for_output(worker, worker_log, "serving queries.SignupStatsQuery")
            assert QueryBus(bus).ask(SignupStatsQuery()) == SignupStats(total=17, linked=17)
            opened = server.pids(OPENED)
        assert stop(server) == 0
        assert server.proc.pid not in opened and opened, server.log()
        assert sorted(server.pids(CLOSED)) == sorted(opened), server.log()
        assert terminate(worker) == 0
        assert "natsbus worker stopped" in worker_log.read_text()
    finally:
        terminate(worker)
