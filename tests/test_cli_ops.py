"""The ops commands (ls, ping, info, stats, execute, ask) against a real nats-server."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from typing import Any, Iterator, List, Tuple

import attrs
import pytest
from micro_support import NatsPyService, running_nats_py_service

from natsbus import Bus, Command, NatsServer, WorkerPool
from natsbus.cli import main

NATS_PY_SERVICE_WARNINGS = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")


@attrs.frozen
class PayCommand(Command[None]):
    amount: int


@pytest.fixture()
def nats_py_service(nats_url: str) -> Iterator[NatsPyService]:
    yield from running_nats_py_service(nats_url)


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> Tuple[int, str, str]:
    status = main([*argv, "--server", url])
    out, err = capsys.readouterr()
    return status, out, err


def rows(out: str) -> List[List[str]]:
    """The table's lines, each split on runs of spaces."""
    return [line.split() for line in out.splitlines() if line.strip()]


def test_ls_lists_every_instance(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "ls")
    assert (status, err) == (0, "")
    lines = rows(out)
    assert lines[0] == ["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"]
    assert ["user-service", "0.0.0", user_pool.micro.id, "2"] in lines[1:]


def test_ls_with_nothing_running_says_so(capsys: Any) -> None:
    with NatsServer() as empty:  # its own server: nothing else can be running there
        status, out, err = run(capsys, empty.url, "ls")
    assert (status, out, err) == (0, "", "no services answered\n")


def test_ping_shows_each_instance_with_its_round_trip_time(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "ping", "user-service")
    assert (status, err) == (0, "")
    header, row, summary = rows(out)
    assert header == ["NAME", "ID", "VERSION", "RTT"]
    assert row[:3] == ["user-service", user_pool.micro.id, "0.0.0"]
    assert row[3].endswith(("ns", "us", "ms", "s"))
    assert summary == ["1", "instance", "answered"]


def test_ping_fails_when_nobody_answers(capsys: Any, nats_url: str) -> None:
    status, out, err = run(capsys, nats_url, "ping", "nobody-here", "--timeout", "5")
    assert (status, out, err) == (1, "", "no instance of nobody-here answered within 5s\n")


def test_info_shows_the_endpoints(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "info", "user-service")
    assert (status, err) == (0, "")
    assert rows(out) == [
        ["user-service", "0.0.0,", "instance", user_pool.micro.id],
        ["description:", "-"],
        ["ENDPOINT", "SUBJECT", "QUEUE", "GROUP"],
        ["CreateUserCommand", "commands.CreateUserCommand", "user-service"],
        ["GetUserQuery", "queries.GetUserQuery", "user-service"],
        ["1", "instance", "answered"],
    ]


def test_info_shows_description_and_metadata(capsys: Any, bus: Bus, nats_url: str) -> None:
    pool = WorkerPool(bus, service_id="billing", description="Invoices", metadata={"region": "eu"})

    @pool.register
    def pay(cmd: PayCommand) -> None:
        return None

    with pool:
        status, out, _ = run(capsys, nats_url, "info", "billing", pool.micro.id)
    assert status == 0
    assert "  description: Invoices\n  metadata: region=eu\n" in out


def test_stats_shows_counters_after_traffic(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    create = '{"name": "Alice", "email": "alice@example.com"}'
    assert run(capsys, nats_url, "execute", "CreateUserCommand", create)[0] == 0
    assert run(capsys, nats_url, "execute", "CreateUserCommand", create)[0] == 1
    status, out, err = run(capsys, nats_url, "stats", "user-service")
    assert (status, err) == (0, "")
    lines = rows(out)
    assert lines[0][:4] == ["user-service", "0.0.0,", "instance", user_pool.micro.id + ","]
    assert lines[1] == ["ENDPOINT", "REQUESTS", "ERRORS", "AVERAGE", "TOTAL", "LAST", "ERROR"]
    create_row, get_row = lines[2], lines[3]
    assert create_row[:3] == ["CreateUserCommand", "2", "1"]
    assert " ".join(create_row[5:]) == "User already exists with email: alice@example.com"
    assert get_row == ["GetUserQuery", "0", "0", "0ns", "0ns", "-"]


def test_execute_prints_the_response_envelope(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", '{"name": "Bo", "email": "bo@x.org"}')
    assert (status, err) == (0, "")
    response = json.loads(out)
    assert sorted(response) == ["command_id", "error", "payload", "success", "timestamp"]
    assert response["success"] is True and response["error"] is None
    assert response["command_id"].startswith("cmd-")
    assert sorted(response["payload"]) == ["created_at", "user_id"]

    status, out, err = run(
        capsys, nats_url, "ask", "GetUserQuery", json.dumps({"user_id": response["payload"]["user_id"]})
    )
    assert (status, err) == (0, "")
    found = json.loads(out)
    assert found["query_id"].startswith("qry-")
    assert (found["payload"]["name"], found["payload"]["email"]) == ("Bo", "bo@x.org")


def test_execute_exits_1_on_an_error_reply(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    create = '{"name": "Bo", "email": "bo@x.org"}'
    assert run(capsys, nats_url, "execute", "CreateUserCommand", create)[0] == 0
    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", create)
    assert status == 1
    assert json.loads(out)["error"] == "User already exists with email: bo@x.org"
    assert err == "natsbus execute: error 409: User already exists with email: bo@x.org\n"

    status, out, err = run(capsys, nats_url, "ask", "GetUserQuery", '{"user_id": "user-missing"}')
    assert status == 1
    assert json.loads(out)["success"] is False
    assert err == "natsbus ask: error 404: User not found: user-missing\n"

    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", '{"email": "x@y"}')
    assert status == 1
    assert err == "natsbus execute: error 400: Invalid request format: expected 'name' field\n"


def test_execute_exits_1_when_nobody_handles_the_type(capsys: Any, nats_url: str) -> None:
    status, out, err = run(capsys, nats_url, "execute", "DeleteUserCommand", "{}")
    assert (status, out) == (1, "")
    assert err == "natsbus execute: No handler available for commands.DeleteUserCommand\n"


def test_ask_exits_1_on_timeout(capsys: Any, bus: Bus, nats_url: str) -> None:
    transport = bus.live_transport()

    async def silent() -> Any:  # subscribes, never answers
        sub = await transport.subscribe("queries.SlowQuery", "", lambda *message: None)
        await transport.flush()
        return sub

    sub = bus.run(silent)
    try:
        status, out, err = run(capsys, nats_url, "ask", "SlowQuery", "{}", "--timeout", "0.3")
    finally:
        bus.run(lambda: transport.unsubscribe([sub]))
    assert (status, out, err) == (1, "", "natsbus ask: Query request timeout after 300ms\n")


def test_execute_refuses_a_payload_that_is_not_json(capsys: Any, nats_url: str) -> None:
    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", "{name: Alice}")
    assert (status, out) == (2, "")
    assert err.startswith("natsbus execute: the payload is not valid JSON: ")


def test_execute_reads_the_payload_from_stdin(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, nats_url: str, user_pool: WorkerPool
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"name": "Cy", "email": "cy@x.org"}'))
    status, out, _ = run(capsys, nats_url, "execute", "CreateUserCommand", "-")
    assert status == 0
    assert json.loads(out)["success"] is True


@NATS_PY_SERVICE_WARNINGS
def test_ops_commands_work_against_a_nats_py_micro_service(
    capsys: Any, nats_url: str, nats_py_service: NatsPyService
) -> None:
    status, out, _ = run(capsys, nats_url, "ls")
    assert status == 0
    assert ["echo-py", "1.2.3", nats_py_service.id, "1"] in rows(out)

    status, out, _ = run(capsys, nats_url, "info", "echo-py")
    assert status == 0
    assert ["EchoCommand", "commands.EchoCommand", "q"] in rows(out)

    status, out, _ = run(capsys, nats_url, "execute", "EchoCommand", '{"text": "hi"}')
    assert status == 0
    assert json.loads(out)["payload"] == {"text": "hi"}

    status, out, err = run(capsys, nats_url, "execute", "EchoCommand", '{"fail": true}')
    assert (status, out, err) == (1, "", "natsbus execute: error 400: told to fail\n")

    status, out, _ = run(capsys, nats_url, "stats", "echo-py")
    assert status == 0
    assert rows(out)[2][:2] == ["EchoCommand", "2"]


def test_the_natsbus_command_runs_as_a_process(nats_url: str, user_pool: WorkerPool) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "natsbus", "ping", "user-service", user_pool.micro.id, "--server", nats_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert user_pool.micro.id in proc.stdout


def test_a_bad_type_name_is_a_usage_error_found_before_connecting(capsys: Any) -> None:
    status = main(["execute", "bad type!", "{}", "--server", "nats://127.0.0.1:1"])  # nothing listens there
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err == (
        "natsbus execute: message type name 'bad type!' is not a valid NATS subject token "
        "(it may not be empty or contain spaces, '.', '*' or '>')\n"
    )


def test_no_server_exits_3(capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{s.getsockname()[1]}"
    for argv in (["execute", "PayCommand", "{}"], ["ask", "GetUserQuery", "{}"], ["ls"], ["durable", "pending"]):
        status = main([*argv, "--server", url, "--connect-timeout", "1"])
        out, err = capsys.readouterr()
        assert (status, out) == (3, ""), argv
        assert url in err


def test_a_server_url_that_is_not_nats_is_a_usage_error(capsys: Any) -> None:
    for argv in (["execute", "PayCommand", "{}"], ["ls"], ["durable", "dead"]):
        with pytest.raises(SystemExit) as info:
            main([*argv, "--server", "http://127.0.0.1:4222"])
        assert info.value.code == 2
        assert "argument --server: server URL 'http://127.0.0.1:4222' has the scheme 'http'" in capsys.readouterr().err


# -- --json, ls NAME, stats totals, the other-kind hint ----------------------------

INFO_KEYS = ["description", "endpoints", "id", "metadata", "name", "version"]
ENDPOINT_KEYS = ["metadata", "name", "queue_group", "subject"]
TOTALS_KEYS = ["average_processing_time", "num_errors", "num_requests", "processing_time"]


def error_object(err: str) -> Any:
    """The one JSON error object a ``--json`` command writes on standard error."""
    (line,) = err.splitlines()
    return json.loads(line)


@pytest.fixture()
def billing_pool(nats_url: str) -> Iterator[WorkerPool]:
    with Bus(nats_url) as other:
        pool = WorkerPool(other, service_id="billing", version="2.0.0", metadata={"region": "eu"})

        @pool.register
        def pay(cmd: PayCommand) -> None:
            return None

        with pool:
            yield pool


def test_ls_json_lists_every_instance_with_stable_keys(
    capsys: Any, nats_url: str, user_pool: WorkerPool, billing_pool: WorkerPool
) -> None:
    status, out, err = run(capsys, nats_url, "ls", "--json")
    assert (status, err) == (0, "")
    services = {s["id"]: s for s in json.loads(out)}
    user, billing = services[user_pool.micro.id], services[billing_pool.micro.id]
    assert sorted(user) == INFO_KEYS
    assert (user["name"], user["version"], user["description"], user["metadata"]) == (
        "user-service",
        "0.0.0",
        "",
        {},
    )
    assert [sorted(e) for e in user["endpoints"]] == [ENDPOINT_KEYS, ENDPOINT_KEYS]
    assert [(e["name"], e["subject"], e["queue_group"]) for e in user["endpoints"]] == [
        ("CreateUserCommand", "commands.CreateUserCommand", "user-service"),
        ("GetUserQuery", "queries.GetUserQuery", "user-service"),
    ]
    assert (billing["name"], billing["version"], billing["metadata"]) == ("billing", "2.0.0", {"region": "eu"})


def test_ls_name_lists_only_that_services_instances(
    capsys: Any, nats_url: str, user_pool: WorkerPool, billing_pool: WorkerPool
) -> None:
    status, out, err = run(capsys, nats_url, "ls", "billing")
    assert (status, err) == (0, "")
    assert rows(out) == [
        ["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"],
        ["billing", "2.0.0", billing_pool.micro.id, "1"],
    ]

    status, out, err = run(capsys, nats_url, "ls", "billing", "-j")
    assert (status, err) == (0, "")
    assert [s["id"] for s in json.loads(out)] == [billing_pool.micro.id]

    status, out, err = run(capsys, nats_url, "ls", "shop", "--timeout", "5")
    assert (status, out, err) == (0, "", "no instance of shop answered\n")  # nothing running is no failure
    status, out, err = run(capsys, nats_url, "ls", "shop", "--json", "--timeout", "5")
    assert (status, json.loads(out), err) == (0, [], "")


def test_ping_and_info_json(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "ping", "user-service", "--json")
    assert (status, err) == (0, "")
    (ping,) = json.loads(out)
    assert sorted(ping) == ["id", "metadata", "name", "rtt_ns", "version"]
    assert (ping["name"], ping["id"], ping["version"]) == ("user-service", user_pool.micro.id, "0.0.0")
    assert isinstance(ping["rtt_ns"], int) and ping["rtt_ns"] > 0

    status, out, err = run(capsys, nats_url, "info", "user-service", user_pool.micro.id, "--json")
    assert (status, err) == (0, "")
    (info,) = json.loads(out)
    assert sorted(info) == INFO_KEYS
    assert [e["subject"] for e in info["endpoints"]] == ["commands.CreateUserCommand", "queries.GetUserQuery"]


def test_json_when_nobody_answers_is_an_empty_list_and_an_error_object(capsys: Any, nats_url: str) -> None:
    for command in ("ping", "info", "stats"):
        status, out, err = run(capsys, nats_url, command, "nobody-here", "--json", "--timeout", "5")
        assert (status, json.loads(out) if command != "stats" else json.loads(out)["instances"]) == (1, []), command
        assert error_object(err) == {"error": "no instance of nobody-here answered within 5s", "code": "no_answer"}


def test_stats_totals_in_text_and_json(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    create = '{"name": "Alice", "email": "alice@example.com"}'
    assert run(capsys, nats_url, "execute", "CreateUserCommand", create)[0] == 0
    assert run(capsys, nats_url, "execute", "CreateUserCommand", create)[0] == 1
    assert run(capsys, nats_url, "ask", "GetUserQuery", '{"user_id": "user-missing"}')[0] == 1

    status, out, err = run(capsys, nats_url, "stats", "user-service", "--json")
    assert (status, err) == (0, "")
    document = json.loads(out)
    assert sorted(document) == ["instances", "totals"]
    (instance,) = document["instances"]
    assert sorted(instance) == ["endpoints", "id", "metadata", "name", "started", "totals", "version"]
    assert instance["id"] == user_pool.micro.id
    assert instance["started"].endswith("Z")
    create_stats, get_stats = instance["endpoints"]
    assert sorted(create_stats) == [
        "average_processing_time",
        "last_error",
        "name",
        "num_errors",
        "num_requests",
        "processing_time",
        "queue_group",
        "subject",
    ]
    assert (create_stats["name"], create_stats["num_requests"], create_stats["num_errors"]) == (
        "CreateUserCommand",
        2,
        1,
    )
    assert (get_stats["num_requests"], get_stats["num_errors"]) == (1, 1)
    totals = document["totals"]
    assert sorted(totals) == TOTALS_KEYS
    assert (totals["num_requests"], totals["num_errors"]) == (3, 2)
    assert totals["processing_time"] == create_stats["processing_time"] + get_stats["processing_time"] > 0
    assert totals["average_processing_time"] == totals["processing_time"] // 3
    assert instance["totals"] == totals  # one instance: its totals are everyone's

    status, out, err = run(capsys, nats_url, "stats", "user-service")
    assert (status, err) == (0, "")
    lines = rows(out)
    assert lines[4][:3] == ["(total)", "3", "2"]
    assert lines[-1][:6] == ["1", "instance", "answered:", "3", "requests,", "2"]
    assert lines[-1][-3:] == ["processing", "in", "all"]


def test_execute_and_ask_json_print_the_reply_envelope(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    create = '{"name": "Di", "email": "di@x.org"}'
    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", create, "--json")
    assert (status, err) == (0, "")
    assert len(out.splitlines()) == 1  # one compact document
    created = json.loads(out)
    assert created["success"] is True and created["command_id"].startswith("cmd-")

    status, out, err = run(capsys, nats_url, "execute", "CreateUserCommand", create, "--json")
    assert status == 1
    assert json.loads(out)["error"] == "User already exists with email: di@x.org"  # the envelope, as received
    assert error_object(err) == {
        "error": "User already exists with email: di@x.org",
        "code": "error_reply",
        "reply_code": "409",
    }

    user_id = created["payload"]["user_id"]
    status, out, err = run(capsys, nats_url, "ask", "GetUserQuery", json.dumps({"user_id": user_id}), "-j")
    assert (status, err) == (0, "")
    assert json.loads(out)["payload"]["email"] == "di@x.org"


def test_a_name_served_under_the_other_kind_gets_a_hint(capsys: Any, nats_url: str, user_pool: WorkerPool) -> None:
    status, out, err = run(capsys, nats_url, "ask", "CreateUserCommand", "{}")
    assert (status, out) == (1, "")
    assert err == (
        "natsbus ask: No handler available for queries.CreateUserCommand "
        "(CreateUserCommand is served as a command: use natsbus execute)\n"
    )
    status, out, err = run(capsys, nats_url, "execute", "GetUserQuery", "{}", "--json")
    assert (status, out) == (1, "")
    assert error_object(err) == {
        "error": "No handler available for commands.GetUserQuery (GetUserQuery is served as a query: use natsbus ask)",
        "code": "no_handler",
        "served_as": "query",
    }
    status, out, err = run(capsys, nats_url, "ask", "NobodyServesThis", "{}", "--json")
    assert (status, out) == (1, "")
    assert error_object(err) == {"error": "No handler available for queries.NobodyServesThis", "code": "no_handler"}


def test_json_errors_before_and_at_connecting(capsys: Any) -> None:
    status = main(["execute", "bad type!", "{}", "--json", "--server", "nats://127.0.0.1:1"])
    out, err = capsys.readouterr()
    assert (status, out, error_object(err)["code"]) == (2, "", "usage")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{s.getsockname()[1]}"
    for argv in (["ls"], ["ask", "GetUserQuery", "{}"]):
        status = main([*argv, "--json", "--server", url, "--connect-timeout", "1"])
        out, err = capsys.readouterr()
        assert (status, out) == (3, ""), argv
        error = error_object(err)
        assert error["code"] == "connect" and url in error["error"]


def test_every_command_that_talks_to_nats_or_prints_a_document_takes_json() -> None:
    from natsbus.cli.main import _parser

    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    without = []
    for name, parser in commands.items():
        actions = parser._subparsers._group_actions[0].choices if parser._subparsers else {"": parser}
        for action, sub in actions.items():
            if "--json" not in sub._option_string_actions:
                without.append(f"{name} {action}".strip())
    # demo runs a demo; worker is a daemon (its output is logs).
    assert without == ["demo", "worker"]
