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
from web_errors import CASES, PROBLEM_JSON
from webserver import CLOSED, OPENED, gunicorn, stop, terminate, wait_for_output

from natsbus import (
    Bus,
    BusyError,
    CommandBus,
    ConfigError,
    MessageTypeError,
    NatsServer,
    NoHandlerError,
    Query,
    QueryBus,
    QueryCache,
    RetryPolicy,
    WorkerPool,
    current_request,
)
from natsbus.demo import (
    CreateUserCommand,
    CreateUserHandler,
    GetUserHandler,
    GetUserQuery,
    User,
    UserCreated,
    UserRepository,
)
from natsbus.middleware import ClientCall, ClientMiddleware, TraceContextMiddleware
from natsbus.testing import InMemoryBus

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
EXAMPLE = ROOT / "examples" / "django_app"


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
        "RETRY": RetryPolicy,
        "MIDDLEWARE": [TraceContextMiddleware(), "natsbus.middleware.LoggingMiddleware"],
        "QUERY_CACHE": 30,
        "ERROR_RESPONSES": True,
        "POOL": "no_such_module:build_pool",
    }
    with override_settings(NATSBUS=bad):
        errors = check_settings()
    assert [(e.id, e.msg) for e in errors] == [
        (
            "natsbus.E002",
            "NATSBUS['ERROR_RESPONSES'] is not a natsbus setting; "
            "in Django, add 'natsbus.contrib.django.ErrorResponseMiddleware' to MIDDLEWARE instead",
        ),
        ("natsbus.E002", "NATSBUS['TIMOUT'] is not a natsbus setting; did you mean NATSBUS['TIMEOUT']?"),
        ("natsbus.E003", "NATSBUS['QUERY_TIMEOUT'] must be a number of seconds > 0, or None for no limit; got -1"),
        ("natsbus.E003", "NATSBUS['SERVICE_ID'] must be a non-empty string, got ''"),
        ("natsbus.E003", "NATSBUS['RETRY'] is the class RetryPolicy; give an instance, e.g. RetryPolicy(attempts=3)"),
        (
            "natsbus.E003",
            "NATSBUS['MIDDLEWARE'][1] must be client middleware (a natsbus.middleware.ClientMiddleware, or a "
            "built-in such as TraceContextMiddleware()), got 'natsbus.middleware.LoggingMiddleware'",
        ),
        (
            "natsbus.E003",
            "NATSBUS['QUERY_CACHE'] must be a natsbus.QueryCache (e.g. QueryCache(ttl=30)) or None, got 30",
        ),
        (
            "natsbus.E003",
            "NATSBUS['OPTIONS'] has 'conect_timeout', which NatsConfig does not take; did you mean 'connect_timeout'?",
        ),
        # A bad OPTIONS entry does not hide a bad SERVERS value.
        ("natsbus.E003", "NATSBUS['SERVERS']: server URL 'b:4222' has no scheme; expected e.g. nats://host:4222"),
        (
            "natsbus.E004",
            "NATSBUS['POOL'] = 'no_such_module:build_pool' does not import: No module named 'no_such_module'",
        ),
    ]
    with override_settings(NATSBUS={"SERVERS": ["nats://a:4222", "b:4222"]}):
        assert [e.msg for e in check_settings()] == [
            "NATSBUS['SERVERS']: server URL 'b:4222' has no scheme; expected e.g. nats://host:4222"
        ]
    with override_settings(NATSBUS="nats://x:4222"):
        assert [(e.id, e.msg) for e in check_settings()] == [("natsbus.E001", "NATSBUS must be a dict, got str")]
    good = {
        "POOL": "natsbus.demo:build_pool",
        "OPTIONS": {"connect_timeout": 2},
        "RETRY": RetryPolicy(attempts=2),
        "MIDDLEWARE": [TraceContextMiddleware()],
        "QUERY_CACHE": QueryCache(ttl=5),
    }
    with override_settings(NATSBUS=good):
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


@pytest.fixture()
def web(memory: InMemoryBus) -> Iterator[Any]:
    """A Django test client for tests/django_urls.py, with ErrorResponseMiddleware."""
    from django.test import Client, override_settings

    with override_settings(
        ROOT_URLCONF="django_urls",
        MIDDLEWARE=["natsbus.contrib.django.ErrorResponseMiddleware"],
        ALLOWED_HOSTS=["testserver"],
        DEBUG=False,
    ):
        yield Client()


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_response_middleware_answers_each_natsbus_error_with_a_problem(
    web: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, status, body, retry_after = CASES[name]
    with caplog.at_level(logging.WARNING, logger="natsbus.contrib"):
        response = web.get(f"/raise/{name}")
    assert (response.status_code, response["Content-Type"], response.json()) == (status, PROBLEM_JSON, body)
    assert response.get("Retry-After") == retry_after
    assert b"s3cret" not in response.content
    natsbus_log = [(r.levelname, r.exc_info is not None) for r in caplog.records if r.name == "natsbus.contrib"]
    assert natsbus_log == ([("ERROR", True)] if status == 500 else [("WARNING", False)] if status > 500 else [])


def test_error_response_middleware_lets_other_errors_through(web: Any) -> None:
    with pytest.raises(LookupError, match="not a natsbus error"):
        web.get("/other")  # the test client re-raises what Django would answer with its 500


def test_error_response_middleware_over_real_handler_errors(web: Any, memory: InMemoryBus) -> None:
    missing = web.get("/users/user-nobody")
    assert (missing.status_code, missing.json()["detail"]) == (404, "User not found: user-nobody")
    from natsbus.contrib.django import get_command_bus

    created = get_command_bus().execute(CreateUserCommand("Ann", "ann@example.com"))
    assert web.get(f"/users/{created.user_id}").json()["name"] == "Ann"


def test_without_the_middleware_django_answers_500_as_before(django_setup: None, memory: InMemoryBus) -> None:
    from django.test import Client, override_settings

    with override_settings(ROOT_URLCONF="django_urls", MIDDLEWARE=[], ALLOWED_HOSTS=["testserver"]):
        response = Client(raise_request_exception=False).get("/raise/not_found")
    assert (response.status_code, response["Content-Type"]) == (500, "text/html; charset=utf-8")


def test_retry_middleware_and_query_cache_settings_reach_the_buses(django_setup: None) -> None:
    from django.test import override_settings

    from natsbus.contrib.django import get_query_bus

    class Recorder(ClientMiddleware):
        def __init__(self) -> None:
            self.seen: List[str] = []

        def before(self, call: ClientCall) -> None:
            self.seen.append(call.subject)

    traces: List[str] = []

    def get_user(query: GetUserQuery) -> User:
        request = current_request()
        assert request is not None
        traces.append(request.headers.get("traceparent", ""))
        if len(traces) == 1:
            raise BusyError("Service busy")  # the first try; the retry policy tries again
        return User(id=query.user_id, name="N", email="n@example.com", created_at="2025-01-01T00:00:00Z")

    recorder, cache, policy = Recorder(), QueryCache(ttl=60), RetryPolicy(attempts=2, backoff=0)
    settings = {
        "IN_MEMORY": InMemoryBus([get_user]),
        "SERVICE_ID": "web",
        "RETRY": policy,
        "MIDDLEWARE": [recorder, TraceContextMiddleware()],
        "QUERY_CACHE": cache,
    }
    with override_settings(NATSBUS=settings):
        queries = get_query_bus()
        assert queries.ask(GetUserQuery("u-7")).id == "u-7"  # busy, retried, answered
        assert queries.ask(GetUserQuery("u-7")).id == "u-7"  # from the cache
        assert isinstance(queries, QueryBus)
        assert (queries.retry, queries.cache, queries.service_id) == (policy, cache, "web")
    assert len(traces) == 2 and all(t.startswith("00-") for t in traces)
    assert recorder.seen == ["queries.GetUserQuery"]
    assert cache.hits == 1


def test_retry_middleware_and_query_cache_settings_over_nats(django_setup: None, nats_url: str) -> None:
    from django.test import override_settings

    from natsbus.contrib import django as natsbus_django

    policy, cache, tracing = RetryPolicy(attempts=2), QueryCache(ttl=60), TraceContextMiddleware()
    settings = {"SERVERS": nats_url, "RETRY": policy, "MIDDLEWARE": [tracing], "QUERY_CACHE": cache}
    try:
        with override_settings(NATSBUS=settings):
            commands, queries = natsbus_django.get_command_bus(), natsbus_django.get_query_bus()
            assert isinstance(commands, CommandBus) and isinstance(queries, QueryBus)
            assert (commands.retry, commands.middleware) == (policy, (tracing,))
            assert (queries.retry, queries.middleware, queries.cache) == (policy, (tracing,), cache)
    finally:
        natsbus_django.close_bus()


# -- the example project: gunicorn, the worker command, sqlite --------------------


@attrs.frozen
class SignupStats:
    total: int
    linked: int
    users: int


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


def test_manage_py_check_passes_for_the_example(tmp_path: Path) -> None:
    result = _manage({"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": ""}, "check")
    assert (result.returncode, result.stdout.strip()) == (0, "System check identified no issues (0 silenced).")
    result = _manage({"DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"), "NATS_URL": "localhost"}, "check")
    assert result.returncode == 1
    assert "natsbus.E003" in result.stderr and "NATS_URL" in result.stderr


def test_the_example_readme_gives_the_run_steps_the_next_test_runs() -> None:
    steps = [
        line.strip().split("#")[0].strip()
        for line in (EXAMPLE / "README.rst").read_text().splitlines()
        if line.startswith("    python manage.py") or line.startswith("    gunicorn")
    ]
    assert steps == [
        "python manage.py check",
        "python manage.py migrate",
        "python manage.py natsbus_worker &",
        "gunicorn -c gunicorn.conf.py",
    ]


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
def test_example_project_under_gunicorn(nats_server: NatsServer, bus: Bus, tmp_path: Path) -> None:
    """The run steps of examples/django_app/README.rst: migrate, the worker, gunicorn; nothing else serves."""
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
        serving = wait_for_output(worker, worker_log, "serving ")
        assert "commands.CreateUserCommand" in serving and "queries.GetUserQuery" in serving
        stats = QueryBus(bus).with_timeout(10)
        with gunicorn("mysite.wsgi:application", cwd=EXAMPLE, env=env, log_path=tmp_path / "gunicorn.log") as server:
            # Direct sends from views, served by the project's own worker.
            status, created = server.call("POST", "/users", {"name": "Alice", "email": "alice@example.com"})
            assert status == 201, server.log()
            status, user = server.call("GET", f"/users/{created['user_id']}")
            assert (status, user["email"]) == (200, "alice@example.com")

            # natsbus errors as problems (ErrorResponseMiddleware in the example's settings).
            status, headers, problem = server.request("POST", "/users", {"name": "Alice", "email": "alice@example.com"})
            assert (status, headers["content-type"], problem) == (
                409,
                PROBLEM_JSON,
                {
                    "type": "about:blank",
                    "title": "Conflict",
                    "status": 409,
                    "detail": "User already exists with email: alice@example.com",
                    "error": "conflict",
                },
            )
            assert server.call("GET", "/users/user-nobody") == (
                404,
                {
                    "type": "about:blank",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "User not found: user-nobody",
                    "error": "not_found",
                },
            )
            for path in ("/users", "/signups"):
                status, bad = server.call("POST", path, {})
                assert (status, bad["error"], bad["detail"]) == (
                    400,
                    "invalid_request",
                    "name must be a non-empty string; email must be an email address",
                )
            assert stats.ask(SignupStatsQuery()) == SignupStats(total=0, linked=0, users=1)  # nothing saved or sent

            # After the commit: the user exists and the signup row holds its id.
            status, signup = server.call("POST", "/signups", {"name": "Bob", "email": "bob@example.com"})
            assert status == 201 and signup["user_id"].startswith("user-"), server.log()
            assert server.call("GET", f"/users/{signup['user_id']}")[1]["name"] == "Bob"
            # A rollback: the row is gone and the command never reached the service.
            assert server.call("POST", "/signups", {"name": "Cy", "email": "cy@example.com", "rollback": True}) == (
                200,
                {"rolled_back": True},
            )
            assert stats.ask(SignupStatsQuery()) == SignupStats(total=1, linked=1, users=2)

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
            assert stats.ask(SignupStatsQuery()) == SignupStats(total=17, linked=17, users=18)

            # The worker stops (draining): no service, so 503 with Retry-After.
            assert terminate(worker) == 0
            assert "natsbus worker stopped" in worker_log.read_text()
            status, headers, problem = server.request("GET", f"/users/{created['user_id']}")
            assert (status, headers["retry-after"], problem["error"]) == (503, "5", "no_handler"), server.log()
            opened = server.pids(OPENED)
        assert stop(server) == 0
        assert server.proc.pid not in opened and opened, server.log()
        assert sorted(server.pids(CLOSED)) == sorted(opened), server.log()
    finally:
        terminate(worker)
