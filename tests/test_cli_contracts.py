"""``natsbus ask --all``, ``natsbus schema`` and ``natsbus asyncapi`` against a real nats-server."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import attrs
import pytest
from jsonschema import Draft7Validator

from natsbus import Bus, NotFoundError, Query, WorkerPool
from natsbus.cli import main
from natsbus.demo import CreateUserCommand, User, UserCreated
from natsbus.schema import json_schema

ASYNCAPI_SCHEMA = Path(__file__).resolve().parent / "schemas" / "asyncapi-3.0.0" / "asyncapi.json"


@attrs.frozen
class Greeting:
    text: str


@attrs.frozen
class GreetEveryoneQuery(Query[Greeting]):
    name: str


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture()
def greeters(nats_url: str) -> Iterator[List[WorkerPool]]:
    with contextlib.ExitStack() as stack:
        pools = []
        for i in range(3):
            bus = stack.enter_context(Bus(nats_url))

            def greet(query: GreetEveryoneQuery, i: int = i) -> Greeting:
                if query.name == f"fail-on-{i}":
                    raise NotFoundError(f"greeter {i} does not know {query.name}")
                return Greeting(f"hello {query.name} from {i}")

            pool = WorkerPool(bus, service_id="greeters")
            pool.register(greet, message_type=GreetEveryoneQuery)
            stack.enter_context(pool)
            pools.append(pool)
        yield pools


def test_ask_all_prints_one_line_per_instance(capsys: Any, nats_url: str, greeters: List[WorkerPool]) -> None:
    status, out, err = run(
        capsys, "ask", "--all", "GreetEveryoneQuery", '{"name": "Ada"}', "--server", nats_url, "--timeout", "30",
        "--max-replies", "3",
    )  # fmt: skip
    assert (status, err) == (0, "natsbus ask --all: 3 instances answered, 0 with an error\n")
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["instance"] for line in lines) == sorted(pool.micro.id for pool in greeters)
    by_id = {pool.micro.id: i for i, pool in enumerate(greeters)}
    for line in lines:
        i = by_id[line["instance"]]
        assert line == {
            "instance": greeters[i].micro.id,
            "service": "greeters",
            "ok": True,
            "result": {"text": f"hello Ada from {i}"},
        }


def test_ask_all_reports_an_instances_error_and_exits_1(capsys: Any, nats_url: str, greeters: List[WorkerPool]) -> None:
    status, out, err = run(
        capsys, "ask", "--all", "GreetEveryoneQuery", '{"name": "fail-on-1"}', "--server", nats_url, "--timeout", "30",
        "--max-replies", "3",
    )  # fmt: skip
    assert (status, err) == (1, "natsbus ask --all: 3 instances answered, 1 with an error\n")
    (failed,) = [json.loads(line) for line in out.splitlines() if not json.loads(line)["ok"]]
    assert failed == {
        "instance": greeters[1].micro.id,
        "service": "greeters",
        "ok": False,
        "type": "NotFoundError",
        "error": "greeter 1 does not know fail-on-1",
    }


def test_ask_all_json_prints_one_list_and_errors_as_json(
    capsys: Any, nats_url: str, greeters: List[WorkerPool]
) -> None:
    status, out, err = run(
        capsys, "ask", "--all", "GreetEveryoneQuery", '{"name": "fail-on-2"}', "--server", nats_url, "--timeout", "30",
        "--max-replies", "3", "--json",
    )  # fmt: skip
    assert status == 1
    assert json.loads(err) == {"error": "3 instances answered, 1 with an error", "code": "error_reply"}
    rows = json.loads(out)  # one document
    assert sorted(row["instance"] for row in rows) == sorted(pool.micro.id for pool in greeters)
    assert [row["ok"] for row in rows].count(False) == 1


def test_ask_all_with_nobody_serving_exits_1(capsys: Any, nats_url: str) -> None:
    status, out, err = run(capsys, "ask", "--all", "NobodyGreetsQuery", "{}", "--server", nats_url, "--timeout", "30")
    assert (status, out) == (1, "")
    assert err == "natsbus ask --all: no instance serving NobodyGreetsQuery answered within 30s\n"


def test_ask_all_refuses_a_bad_option(capsys: Any, nats_url: str) -> None:
    status, out, err = run(capsys, "ask", "--all", "X", "{}", "--server", nats_url, "--max-replies", "0")
    assert (status, out, err) == (2, "", "natsbus ask --all: max_replies must be >= 1, got 0\n")


def test_schema_prints_a_services_schemas(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, "schema", "user-service", "--server", nats_url)
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert (document["service"], document["version"], document["instance"]) == (
        "user-service",
        "0.0.0",
        user_pool.micro.id,
    )
    assert document["endpoints"]["CreateUserCommand"] == {
        "subject": "commands.CreateUserCommand",
        "request_schema": json_schema(CreateUserCommand),
        "response_schema": json_schema(UserCreated),
    }
    assert document["endpoints"]["GetUserQuery"]["response_schema"] == json_schema(User)

    status, out, err = run(capsys, "schema", "user-service", "CreateUserCommand", "--server", nats_url)
    assert (status, err) == (0, "")
    assert json.loads(out) == document["endpoints"]["CreateUserCommand"]


def test_schema_of_an_unknown_type_or_service_exits_1(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, "schema", "user-service", "DeleteUserCommand", "--server", nats_url)
    assert (status, out) == (1, "")
    assert (
        err == "natsbus schema: user-service serves no DeleteUserCommand (it serves CreateUserCommand, GetUserQuery)\n"
    )
    status, out, err = run(capsys, "schema", "nobody-here", "--server", nats_url, "--timeout", "5")
    assert (status, out, err) == (1, "", "natsbus schema: no instance of nobody-here answered within 5s\n")


def test_asyncapi_writes_a_valid_asyncapi_3_document(capsys: Any, tmp_path: Path) -> None:
    validator = Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))
    status, out, err = run(capsys, "asyncapi", "natsbus.demo:build_pool")
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert [e.message for e in validator.iter_errors(document)] == []
    assert document["asyncapi"] == "3.0.0"
    assert sorted(document["operations"]) == ["CreateUserCommand", "GetUserQuery", "GetUserQueryScatter"]

    path = tmp_path / "user-service.asyncapi.json"
    status, out, err = run(capsys, "asyncapi", "natsbus.demo:build_pool", "-o", str(path))
    assert (status, out, err) == (0, "", "")
    assert json.loads(path.read_text()) == document


def test_asyncapi_of_something_that_is_no_pool_exits_2(capsys: Any) -> None:
    status, out, err = run(capsys, "asyncapi", "natsbus.demo:SERVICE_ID")
    assert (status, out) == (2, "")
    assert err == "natsbus asyncapi: natsbus.demo:SERVICE_ID is neither a WorkerPool nor a factory returning one\n"
    status, out, err = run(capsys, "asyncapi", "natsbus.nowhere:pool")
    assert status == 2
    assert err.startswith("natsbus asyncapi: cannot load a WorkerPool from natsbus.nowhere:pool: ")


def test_schema_and_asyncapi_json_print_one_line_and_errors_as_objects(
    capsys: Any, nats_url: str, user_pool: WorkerPool
) -> None:
    status, out, err = run(capsys, "schema", "user-service", "--server", nats_url)
    assert status == 0
    document = json.loads(out)
    status, out, err = run(capsys, "schema", "user-service", "--server", nats_url, "--json")
    assert (status, err, out.count("\n")) == (0, "", 1)
    assert json.loads(out) == document
    status, out, err = run(capsys, "schema", "user-service", "DeleteUserCommand", "--server", nats_url, "--json")
    assert (status, out) == (1, "")
    assert json.loads(err) == {
        "error": "user-service serves no DeleteUserCommand (it serves CreateUserCommand, GetUserQuery)",
        "code": "unknown_type",
    }
    status, out, err = run(capsys, "schema", "nobody-here", "--server", nats_url, "--timeout", "0.5", "--json")
    assert (status, out) == (1, "")
    assert json.loads(err) == {"error": "no instance of nobody-here answered within 0.5s", "code": "no_answer"}
    status, out, err = run(capsys, "schema", "user-service", "--server", "nats://127.0.0.1:1", "--json")
    assert (status, out, json.loads(err)["code"]) == (3, "", "connect")

    status, out, err = run(capsys, "asyncapi", "natsbus.demo:build_pool", "--json")
    assert (status, err, out.count("\n")) == (0, "", 1)
    assert json.loads(out)["asyncapi"] == "3.0.0"
    status, out, err = run(capsys, "asyncapi", "natsbus.demo:SERVICE_ID", "--json")
    assert (status, out) == (2, "")
    assert json.loads(err) == {
        "error": "natsbus.demo:SERVICE_ID is neither a WorkerPool nor a factory returning one",
        "code": "usage",
    }
