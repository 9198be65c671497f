"""natsbus.contrib.flask: in-process with Flask's test client, and the example app under gunicorn."""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from flask import Flask
from web_errors import CASES, PROBLEM_JSON
from webserver import CLOSED, OPENED, gunicorn, stop

from natsbus import (
    Bus,
    BusyError,
    CommandBus,
    ConfigError,
    NatsServer,
    NotFoundError,
    QueryBus,
    QueryCache,
    RetryPolicy,
    WorkerPool,
    current_request,
)
from natsbus.contrib.flask import NatsBus
from natsbus.demo import CreateUserHandler, GetUserHandler, GetUserQuery, User, UserRepository
from natsbus.middleware import ClientCall, ClientMiddleware, TraceContextMiddleware
from natsbus.testing import InMemoryBus

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "flask_app"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("natsbus_flask_example", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def make_app(example: ModuleType) -> Iterator[Any]:
    apps: List[Flask] = []

    def make(config: Dict[str, Any]) -> Flask:
        app: Flask = example.create_app(config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        example.cqrs.close(app)


def in_memory_user_service() -> InMemoryBus:
    repository = UserRepository()
    return InMemoryBus([CreateUserHandler(repository), GetUserHandler(repository)])


def test_views_run_on_an_in_memory_bus_with_problem_responses(make_app: Any) -> None:
    memory = in_memory_user_service()
    client = make_app({"NATSBUS_IN_MEMORY": memory}).test_client()
    created = client.post("/users", json={"name": "Alice", "email": "alice@example.com"})
    assert created.status_code == 201
    user_id = created.get_json()["user_id"]
    assert client.get(f"/users/{user_id}").get_json() == {
        "id": user_id,
        "name": "Alice",
        "email": "alice@example.com",
        "created_at": created.get_json()["created_at"],
    }
    duplicate = client.post("/users", json={"name": "Alice", "email": "alice@example.com"})
    assert (duplicate.status_code, duplicate.content_type, duplicate.get_json()) == (
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
    missing = client.get("/users/user-nobody")
    assert (missing.status_code, missing.get_json()["detail"]) == (404, "User not found: user-nobody")
    assert len(memory.sent) == 4


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({}, "name must be a non-empty string; email must be an email address"),
        ({"name": " ", "email": "bob@example.com"}, "name must be a non-empty string"),
        ({"name": "Bob", "email": 5}, "email must be an email address"),
        (["Bob"], "expected a JSON object with a name and an email"),
    ],
)
def test_the_example_answers_bad_input_with_400_and_sends_nothing(make_app: Any, body: Any, detail: str) -> None:
    memory = in_memory_user_service()
    response = make_app({"NATSBUS_IN_MEMORY": memory}).test_client().post("/users", json=body)
    assert (response.status_code, response.get_json()["error"], response.get_json()["detail"]) == (
        400,
        "invalid_request",
        detail,
    )
    assert memory.sent == []


def test_views_over_nats_in_process(make_app: Any, nats_url: str, user_pool: WorkerPool) -> None:
    client = make_app({"NATSBUS_SERVERS": nats_url}).test_client()
    created = client.post("/users", json={"name": "Bob", "email": "bob@example.com"})
    assert created.status_code == 201
    assert client.get(f"/users/{created.get_json()['user_id']}").get_json()["name"] == "Bob"


def test_init_app_does_not_connect_and_the_first_request_does(make_app: Any, example: ModuleType) -> None:
    app = make_app({"NATSBUS_SERVERS": "nats://127.0.0.1:9", "NATSBUS_OPTIONS": {"connect_timeout": 0.2}})
    assert not app.extensions["natsbus"].opened  # built, not connected
    response = app.test_client().get("/users/u-1")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "5")
    assert response.get_json()["error"] == "not_connected"
    assert "127.0.0.1:9" not in response.get_data(as_text=True)  # in the log, not in the answer


def test_one_bus_per_app_shared_by_threads(make_app: Any, nats_url: str, example: ModuleType) -> None:
    app = make_app({"NATSBUS_SERVERS": nats_url})
    seen: List[Bus] = []
    lock = threading.Lock()

    def use() -> None:
        with app.app_context():
            bus = example.cqrs.bus
        with lock:
            seen.append(bus)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 8 and all(b is seen[0] for b in seen)
    assert seen[0].is_connected
    example.cqrs.close(app)
    assert seen[0].closed
    with app.app_context():
        assert example.cqrs.bus is not seen[0]  # reopened on next use


def test_init_app_reports_every_config_problem_at_once(make_app: Any, example: ModuleType) -> None:
    bad = {
        "NATSBUS_TIMOUT": 2,
        "NATSBUS_QUERY_TIMEOUT": "3",
        "NATSBUS_SERVERS": "localhost:4222",
        "NATSBUS_OPTIONS": {"conect_timeout": 1},
        "NATSBUS_MIDDLEWARE": [TraceContextMiddleware],
        "NATSBUS_ERROR_RESPONSES": "yes",
    }
    with pytest.raises(ConfigError) as caught:
        make_app(bad)
    assert str(caught.value) == (
        "6 problems in the NATSBUS_* config of Flask app 'natsbus_flask_example':\n"
        "- NATSBUS_TIMOUT is not a natsbus setting; did you mean NATSBUS_TIMEOUT?\n"
        "- NATSBUS_QUERY_TIMEOUT must be a number of seconds > 0, or None for no limit; got '3'\n"
        "- NATSBUS_MIDDLEWARE[0] is the class TraceContextMiddleware; give an instance: TraceContextMiddleware()\n"
        "- NATSBUS_OPTIONS has 'conect_timeout', which NatsConfig does not take; did you mean 'connect_timeout'?\n"
        "- NATSBUS_SERVERS: server URL 'localhost:4222' has no scheme; expected e.g. nats://host:4222\n"
        "- NATSBUS_ERROR_RESPONSES must be True or False, got 'yes'"
    )
    app = Flask("later")
    app.config.update(NATSBUS_TIMOUT=2)  # problems() is the same list, for an app not initialised yet
    assert NatsBus().problems(app) == ["NATSBUS_TIMOUT is not a natsbus setting; did you mean NATSBUS_TIMEOUT?"]


def test_config_broken_after_init_app_fails_the_first_use(make_app: Any, example: ModuleType) -> None:
    app = make_app({"NATSBUS_SERVERS": "nats://127.0.0.1:9"})
    app.config["NATSBUS_TIMEOUT"] = -1  # after init_app: checked again when the Bus opens
    with app.app_context(), pytest.raises(ConfigError, match=r"NATSBUS_TIMEOUT must be a number of seconds > 0"):
        example.cqrs.commands  # noqa: B018
    assert not app.extensions["natsbus"].opened


def test_nats_url_is_read_when_the_bus_opens_not_at_init_app(
    monkeypatch: pytest.MonkeyPatch, make_app: Any, example: ModuleType, nats_url: str, user_pool: WorkerPool
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:9")  # what a pre-fork master might see
    app = make_app({"NATSBUS_SERVERS": None})
    monkeypatch.setenv("NATS_URL", nats_url)  # what the worker process sees
    created = app.test_client().post("/users", json={"name": "Eve", "email": "eve@example.com"})
    assert created.status_code == 201
    with app.app_context():
        assert example.cqrs.bus.connected_url == nats_url


def test_an_app_without_init_app_says_so() -> None:
    with Flask("bare").app_context(), pytest.raises(RuntimeError, match=r"call NatsBus\.init_app"):
        NatsBus().commands  # noqa: B018


def _raising_app(**init: Any) -> Flask:
    """An app whose ``/raise/<name>`` view raises the natsbus error of that web case."""
    app = Flask("raising")
    if "config" in init:
        app.config.update(init.pop("config"))
    NatsBus(app, **init)

    @app.get("/raise/<name>")
    def raise_it(name: str) -> Any:
        raise CASES[name][0]()

    return app


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_natsbus_error_is_a_problem_response(name: str, caplog: pytest.LogCaptureFixture) -> None:
    _, status, body, retry_after = CASES[name]
    client = _raising_app(config={"NATSBUS_ERROR_RESPONSES": True}).test_client()
    with caplog.at_level(logging.WARNING, logger="natsbus.contrib"):
        response = client.get(f"/raise/{name}")
    assert (response.status_code, response.content_type, response.get_json()) == (status, PROBLEM_JSON, body)
    assert response.headers.get("Retry-After") == retry_after
    assert "s3cret" not in response.get_data(as_text=True)
    logged = [(r.levelname, r.exc_info is not None) for r in caplog.records]
    assert logged == ([("ERROR", True)] if status == 500 else [("WARNING", False)] if status > 500 else [])
    if status >= 500:
        assert "GET /raise/" in caplog.text  # the text the answer leaves out is in the log


def test_error_responses_by_init_app_argument_and_off_by_default() -> None:
    on = _raising_app(error_responses=True).test_client().get("/raise/not_found")
    assert (on.status_code, on.get_json()["error"]) == (404, "not_found")
    off = _raising_app().test_client().get("/raise/not_found")
    assert (off.status_code, off.content_type) == (500, "text/html; charset=utf-8")  # Flask's own page


def test_an_own_error_handler_wins_for_its_class() -> None:
    app = _raising_app(error_responses=True)

    @app.errorhandler(NotFoundError)
    def not_found(exc: NotFoundError) -> Any:
        return {"missing": exc.message}, 410

    client = app.test_client()
    assert client.get("/raise/not_found").get_json() == {"missing": "User not found: u-1"}
    assert client.get("/raise/conflict").get_json()["error"] == "conflict"


def _threaded_service(release: threading.Event) -> Tuple[InMemoryBus, Dict[str, int]]:
    calls: Dict[str, int] = Counter()

    def get_user(query: GetUserQuery) -> User:
        calls[query.user_id] += 1
        if query.user_id == "busy-once" and calls[query.user_id] == 1:
            raise BusyError("Service busy")
        if query.user_id == "slow":
            release.wait(30)
        if query.user_id == "crash":
            raise KeyError("secret-column")
        return User(id=query.user_id, name="N", email="n@example.com", created_at="2025-01-01T00:00:00Z")

    return InMemoryBus([get_user], eager=False), calls


def test_real_errors_from_handlers_become_problem_responses(make_app: Any) -> None:
    release = threading.Event()
    memory, _ = _threaded_service(release)
    client = make_app({"NATSBUS_IN_MEMORY": memory, "NATSBUS_QUERY_TIMEOUT": 0.2, "NATSBUS_RETRY": None}).test_client()
    try:
        slow = client.get("/users/slow")  # the handler waits; the call times out
        crash = client.get("/users/crash")
        unserved = client.post("/users", json={"name": "Al", "email": "al@example.com"})  # nobody serves commands
    finally:
        release.set()
        memory.close()
    assert (slow.status_code, slow.get_json()["error"]) == (504, "timeout")
    assert (crash.status_code, crash.get_json()["error"]) == (500, "handler_error")
    assert "secret-column" not in crash.get_data(as_text=True)
    assert (unserved.status_code, unserved.get_json()["error"], unserved.headers["Retry-After"]) == (
        503,
        "no_handler",
        "5",
    )


def test_retry_middleware_and_query_cache_settings_reach_the_buses(make_app: Any, example: ModuleType) -> None:
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
    app = make_app(
        {
            "NATSBUS_IN_MEMORY": InMemoryBus([get_user]),
            "NATSBUS_RETRY": policy,
            "NATSBUS_MIDDLEWARE": [recorder, TraceContextMiddleware()],
            "NATSBUS_QUERY_CACHE": cache,
        }
    )
    client = app.test_client()
    assert client.get("/users/u-7").status_code == 200  # busy, retried, answered
    assert client.get("/users/u-7").get_json()["id"] == "u-7"  # from the cache
    assert len(traces) == 2 and all(t.startswith("00-") for t in traces)  # a traceparent reached the handler
    assert recorder.seen == ["queries.GetUserQuery"]  # middleware around the call (not the cache hit)
    assert (cache.hits, len(cache)) == (1, 1)
    with app.app_context():
        commands, queries = example.cqrs.commands, example.cqrs.queries
    assert (commands.retry, queries.retry, queries.cache) == (policy, policy, cache)
    assert commands.middleware[-2:] == (recorder, app.config["NATSBUS_MIDDLEWARE"][1])


def test_retry_middleware_and_query_cache_settings_over_nats(make_app: Any, nats_url: str, example: ModuleType) -> None:
    policy, cache, tracing = RetryPolicy(attempts=2), QueryCache(ttl=60), TraceContextMiddleware()
    app = make_app(
        {
            "NATSBUS_SERVERS": nats_url,
            "NATSBUS_RETRY": policy,
            "NATSBUS_MIDDLEWARE": [tracing],
            "NATSBUS_QUERY_CACHE": cache,
        }
    )
    with app.app_context():
        commands, queries = example.cqrs.commands, example.cqrs.queries
    assert isinstance(commands, CommandBus) and isinstance(queries, QueryBus)
    assert (commands.retry, commands.middleware, commands.service_id) == (policy, (tracing,), "flask-example")
    assert (queries.retry, queries.middleware, queries.cache) == (policy, (tracing,), cache)


# -- the example app under gunicorn ------------------------------------------------


def _create(server: Any, i: int) -> Tuple[int, Any]:
    return server.call("POST", "/users", {"name": f"user{i}", "email": f"user{i}@example.com"})


@pytest.mark.slow
def test_example_app_under_gunicorn(nats_server: NatsServer, user_pool: WorkerPool, tmp_path: Path) -> None:
    env = {"NATS_URL": nats_server.url}
    with gunicorn("app:app", cwd=EXAMPLE, env=env, log_path=tmp_path / "gunicorn.log") as server:
        status, created = server.call("POST", "/users", {"name": "Alice", "email": "alice@example.com"})
        assert status == 201, server.log()
        status, user = server.call("GET", f"/users/{created['user_id']}")
        assert (status, user["name"], user["email"]) == (200, "Alice", "alice@example.com")
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
        assert server.call("POST", "/users", {})[1]["detail"] == (
            "name must be a non-empty string; email must be an email address"
        )
        assert server.call("POST", "/users", {"email": 5})[0] == 400

        # 32 requests from 16 threads: all served, by the workers (never the master).
        results: List[Tuple[int, Any]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            for j in (2 * i, 2 * i + 1):
                answer = _create(server, j)
                with lock:
                    results.append(answer)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(status for status, _ in results) == [201] * 32
        served_by = Counter(body["pid"] for _, body in results)
        assert server.proc.pid not in served_by
        opened = server.pids(OPENED)
        assert server.proc.pid not in opened, "the master opened a Bus"
        assert set(served_by) <= set(opened)
        assert len(opened) == len(set(opened)), "a worker opened more than one Bus"

        # No service: 503 with Retry-After (after the example's retries of NoHandlerError).
        user_pool.stop()
        status, headers, problem = server.request("GET", f"/users/{created['user_id']}")
        assert (status, headers["retry-after"], problem["error"]) == (503, "5", "no_handler"), server.log()
        assert "natsbus: GET /users/" in server.log() and "answered 503 (no_handler)" in server.log()
    assert stop(server) == 0
    # Each worker that opened a Bus closed it on the way out.
    assert sorted(server.pids(CLOSED)) == sorted(opened), server.log()
    requests = user_pool.dispatcher.route_for("commands.CreateUserCommand")
    assert requests is not None and requests.stats.num_requests == 2 + 32  # bad input never reached it


def test_the_web_integrations_do_not_import_the_test_kit_at_load() -> None:
    import subprocess
    import sys

    code = (
        "import sys, natsbus.contrib.flask, natsbus.contrib._common\n"
        "print(sorted(m for m in ('natsbus.testing', 'natsbus.worker') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
