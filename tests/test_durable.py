"""Durable commands on JetStream against a real nats-server: send, run, retry, dead-letter, replay."""

from __future__ import annotations

import inspect
import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import attrs
import durable_app
import effects
import nats.js.errors
import pytest
from daemon import WorkerProcess
from durable_app import Apply, config_for
from waiting import wait_until

from natsbus import (
    Bus,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    DurableConfig,
    HandlerError,
    IncompatibleSettingsError,
    JetStreamError,
    MessageTypeError,
    NatsServer,
    Query,
    ResultNotReadyError,
    WorkerPool,
    current_request,
    durable,
)
from natsbus._records import done_record, record_key
from natsbus._transport.jetstream import JS_ERROR_MAP, jetstream_for, map_js_error
from natsbus.cli import main

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Flaky(Command[str]):
    n: int


@attrs.frozen
class Refused(Command[None]):
    n: int


@attrs.frozen
class Add(Command[int]):
    a: int
    b: int


@attrs.frozen
class Lookup(Query[int]):
    n: int


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


@pytest.fixture()
def tag() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture()
def config(tag: str) -> DurableConfig:
    return config_for(tag)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "effects.sqlite"
    effects.create(path)
    return path


@pytest.fixture()
def cleanup(bus: Bus, config: DurableConfig) -> Iterator[DurableConfig]:
    yield config
    js = jetstream_for(bus)
    for stream in (config.stream, config.dead_letter_stream, f"KV_{config.results_bucket}"):
        bus.run(lambda s=stream: js.delete_stream(s))


def apply_pool(bus: Bus, config: DurableConfig, db: Path, once: bool = False, **options: Any) -> WorkerPool:
    pool = WorkerPool(bus, service_id="appliers", durable=config, **options)

    @pool.register
    def apply(cmd: Apply) -> int:
        ctx = current_request()
        assert ctx is not None
        return (effects.apply_once if once else effects.record)(db, ctx.message_id, cmd.n)

    return pool


# -- subjects ---------------------------------------------------------------------------------


def test_config_refuses_prefixes_that_overlap_request_reply_or_each_other() -> None:
    for prefix in ("commands", "commands.durable", "queries.x", "$JS.x", "_INBOX.x", "a..b", "a.*", "a.>"):
        with pytest.raises(ConfigError):
            DurableConfig(subject_prefix=prefix)
    with pytest.raises(ConfigError, match="overlap"):
        DurableConfig(subject_prefix="jobs", dead_letter_prefix="jobs.dead")
    with pytest.raises(ConfigError):
        DurableConfig(stream="has.dot")
    assert DurableConfig().command_subject("CreateUser") == "durable.commands.CreateUser"


def test_durable_streams_never_capture_request_reply_subjects(bus: Bus, cleanup: DurableConfig, db: Path) -> None:
    config = cleanup
    pool = apply_pool(bus, config, db)
    with pool:
        js = jetstream_for(bus)
        for stream in (config.stream, config.dead_letter_stream):
            state = bus.run(lambda s=stream: js.stream_state(s))
            assert state is not None
            for subject in state.subjects:
                for request_subject in ("commands.Apply", "queries.Apply", "commands.X", "queries.Y"):
                    assert not subject_matches(subject, request_subject), (subject, request_subject)
        # No stream captures request-reply subjects, so a request is answered by the handler.
        assert bus.run(lambda: js.streams_capturing("commands.>")) == []
        assert CommandBus(bus).execute(Apply(4)) == 8
        # ...and a sent command is run by the same handler, from the stream.
        command_id = CommandBus(bus).send(Apply(5), durable=config)
        assert CommandBus(bus).result(command_id, wait=10, durable=config) == 10


def test_a_stream_capturing_request_subjects_is_refused() -> None:
    with NatsServer() as server, Bus(server.url) as bus:  # its own server: such a stream breaks request-reply
        js = jetstream_for(bus)
        settings = {
            "subjects": ["commands.>"],
            "retention": "limits",
            "storage": "memory",
            "replicas": 1,
            "max_age": 0.0,
            "duplicate_window": 120.0,
        }
        bus.run(lambda: js.create_stream("GREEDY", settings))
        pool = WorkerPool(bus, service_id="greedy", durable=True)
        pool.register(lambda cmd: 0, message_type=Add)
        with pytest.raises(ConfigError, match=r"stream GREEDY captures commands\.>"):
            pool.start()
        with pytest.raises(ConfigError, match="GREEDY"):
            CommandBus(bus).send(Add(1, 2))


def test_send_refuses_queries_and_plain_objects(bus: Bus, config: DurableConfig) -> None:
    with pytest.raises(MessageTypeError, match="query"):
        CommandBus(bus).send(Lookup(1), durable=config)
    with pytest.raises(MessageTypeError):
        CommandBus(bus).send(object(), durable=config)


# -- send, then run -----------------------------------------------------------------------------


def test_1000_commands_sent_with_no_worker_run_exactly_once_after_one_starts(
    bus: Bus, cleanup: DurableConfig, db: Path
) -> None:
    config = cleanup
    commands = CommandBus(bus)
    ids = [commands.send(Apply(n), durable=config) for n in range(1000)]
    assert len(set(ids)) == 1000
    assert commands.send(Apply(0), command_id=ids[0], durable=config) == ids[0]  # dropped by JetStream
    report = durable.pending(bus, config, limit=5)
    assert (report.exists, report.messages, report.consumers) == (True, 1000, ())
    assert [c.command_id for c in report.commands] == ids[:5]
    with pytest.raises(ResultNotReadyError):
        commands.result(ids[0], durable=config)
    pool = apply_pool(bus, config, db, max_workers=4)
    with pool:
        wait_until(lambda: effects.count(db) >= 1000, 60, "1000 effects")
        assert commands.result(ids[999], wait=10, durable=config) == 1998
        wait_until(lambda: durable.pending(bus, config).messages == 0, 10, "the stream emptied")
    assert effects.per_command(db) == dict.fromkeys(ids, 1)
    assert effects.count(db, "invocations") == 1000  # no crash here: natsbus alone ran each one once
    assert effects.numbers(db) == list(range(1000))
    assert pool.durable is not None and (pool.durable.executed, pool.durable.skipped) == (1000, 0)


def test_commands_survive_a_server_restart(tmp_path: Path, db: Path) -> None:
    store = tmp_path / "jetstream"
    server = NatsServer(store_dir=str(store))
    server.start()
    try:
        with Bus(server.url) as bus:  # the default config, on a server of its own
            ids = [CommandBus(bus).send(Apply(n)) for n in range(50)]
        server.stop()
        server.start()  # same port, same store directory
        with Bus(server.url) as bus:
            assert durable.pending(bus).messages == 50
            with apply_pool(bus, DurableConfig(), db):
                wait_until(lambda: effects.count(db) >= 50, 20, "50 effects")
                assert CommandBus(bus).result(ids[7], wait=10) == 14
        assert effects.per_command(db) == dict.fromkeys(ids, 1)
    finally:
        server.close()


def test_a_redelivered_command_whose_reply_is_stored_is_not_run_again(
    bus: Bus, cleanup: DurableConfig, db: Path
) -> None:
    config = cleanup
    pool = apply_pool(bus, config, db)
    with pool:
        pass  # creates the stream, the bucket and the consumer
    # As if a worker stored the reply and died before acknowledging: the reply is there.
    command_id = "cmd-answered-already"
    reply = (b'{"success":true,"command_id":"cmd-answered-already","timestamp":"","payload":99,"error":null}', None)
    js = jetstream_for(bus)
    bus.run(lambda: js.kv_put(config.results_bucket, record_key(command_id), done_record(command_id, "", reply)))
    CommandBus(bus).send(Apply(1), command_id=command_id, durable=config)
    pool = apply_pool(bus, config, db)
    with pool:
        wait_until(lambda: pool.durable is not None and pool.durable.skipped == 1, 10, "the delivery acknowledged")
    assert effects.count(db, "invocations") == 0
    assert CommandBus(bus).result(command_id, durable=config) == 99


def test_a_handler_running_longer_than_ack_wait_is_not_redelivered(bus: Bus, nats_url: str, tag: str, db: Path) -> None:
    config = config_for(tag, ack_wait=0.6)
    gate = threading.Event()
    runs: List[int] = []

    def slow(cmd: Apply) -> int:
        runs.append(cmd.n)
        gate.wait(10)
        return cmd.n

    with Bus(nats_url) as other_bus:
        pools = [WorkerPool(b, service_id="slow", durable=config, handlers=[slow]) for b in (bus, other_bus)]
        for pool in pools:
            pool.start()
        try:
            command_id = CommandBus(bus).send(Apply(3), durable=config)
            wait_until(lambda: runs == [3], 10, "the handler started")
            # Three ack waits: without the heartbeat the other instance would get it again.
            held_until = time.monotonic() + 1.8
            wait_until(lambda: time.monotonic() >= held_until or len(runs) > 1, 5, "time passing")
            gate.set()
            assert CommandBus(bus).result(command_id, wait=10, durable=config) == 3
        finally:
            for pool in pools:
                pool.stop(5)
    assert runs == [3]
    js = jetstream_for(bus)
    for stream in (config.stream, config.dead_letter_stream, f"KV_{config.results_bucket}"):
        bus.run(lambda s=stream: js.delete_stream(s))


# -- failures ---------------------------------------------------------------------------------


def test_a_handler_that_always_fails_is_dead_lettered_with_its_error(
    bus: Bus, cleanup: DurableConfig, capsys: Any, nats_url: str
) -> None:
    config = cleanup
    runs: List[int] = []
    fixed = threading.Event()
    pool = WorkerPool(bus, service_id="flaky", durable=config)

    @pool.register
    def flaky(cmd: Flaky) -> str:
        runs.append(cmd.n)
        if not fixed.is_set():
            raise RuntimeError(f"disk full (attempt {len(runs)})")
        return "ok"

    names = [
        "--server",
        nats_url,
        "--stream",
        config.stream,
        "--subject-prefix",
        config.subject_prefix,
        "--dead-letter-stream",
        config.dead_letter_stream,
        "--dead-letter-prefix",
        config.dead_letter_prefix,
        "--results-bucket",
        config.results_bucket,
    ]
    commands = CommandBus(bus)
    with pool:
        command_id = commands.send(Flaky(1), durable=config)
        with pytest.raises(HandlerError, match=r"disk full \(attempt 3\)"):
            commands.result(command_id, wait=15, durable=config)
        assert runs == [1, 1, 1]  # max_deliveries=3
        [letter] = durable.dead_letters(bus, config)
        assert (letter.command_id, letter.command_type, letter.deliveries) == (command_id, "Flaky", 3)
        assert (letter.error, letter.error_code, letter.service) == ("disk full (attempt 3)", "500", "flaky")
        assert durable.pending(bus, config).messages == 0  # acknowledged, not redelivered forever

        assert main(["durable", "dead", *names]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        lines = [line.split() for line in out.splitlines()]
        assert lines[0] == ["SEQ", "TYPE", "COMMAND", "ID", "DELIVERIES", "FAILED", "AT", "ERROR"]
        assert lines[1][:4] == [str(letter.seq), "Flaky", command_id, "3"]
        assert out.splitlines()[1].endswith("500 disk full (attempt 3)")
        assert lines[2] == ["1", "dead", "letter"]

        fixed.set()
        assert main(["durable", "replay", str(letter.seq), *names]) == 0
        assert capsys.readouterr() == (
            f"replayed dead letter {letter.seq}: Flaky {command_id} sent again to {config.subject_prefix}.Flaky\n",
            "",
        )
        assert commands.result(command_id, wait=10, durable=config) == "ok"
        assert runs == [1, 1, 1, 1]
        assert durable.dead_letters(bus, config) == []
        assert main(["durable", "dead", *names]) == 0
        assert capsys.readouterr() == ("", f"no dead letters in {config.dead_letter_stream}\n")
        assert main(["durable", "replay", "cmd-no-such", *names]) == 1
        assert "no dead letter cmd-no-such" in capsys.readouterr().err


def test_a_4xx_reply_is_final_stored_and_not_retried(bus: Bus, cleanup: DurableConfig) -> None:
    config = cleanup
    runs: List[int] = []
    pool = WorkerPool(bus, service_id="refusing", durable=config)

    @pool.register
    def refuse(cmd: Refused) -> None:
        runs.append(cmd.n)
        raise ConflictError(f"order {cmd.n} is already paid")

    with pool:
        command_id = CommandBus(bus).send(Refused(8), durable=config)
        with pytest.raises(ConflictError, match="order 8 is already paid"):
            CommandBus(bus).result(command_id, wait=10, durable=config)
    assert runs == [8]
    assert durable.dead_letters(bus, config) == []


def test_result_of_an_unknown_command_is_not_ready(bus: Bus, config: DurableConfig) -> None:
    started = time.monotonic()
    with pytest.raises(ResultNotReadyError, match="Command result not available after 200ms: cmd-unknown") as info:
        CommandBus(bus).result("cmd-unknown", wait=0.2, durable=config)
    assert time.monotonic() - started >= 0.2
    assert (info.value.command_id, info.value.wait) == ("cmd-unknown", 0.2)


# -- operations -------------------------------------------------------------------------------


def test_existing_resources_with_other_settings_are_refused_naming_the_setting(
    bus: Bus, cleanup: DurableConfig, db: Path
) -> None:
    config = cleanup
    with apply_pool(bus, config, db):
        pass
    with apply_pool(bus, config, db):
        pass  # the same settings: reused
    cases: List[Tuple[DurableConfig, str, str, Any, Any]] = [
        (attrs.evolve(config, retention="limits"), f"stream {config.stream}", "retention", "workqueue", "limits"),
        (attrs.evolve(config, max_age=300.0), f"stream {config.stream}", "max_age", 600.0, 300.0),
        (attrs.evolve(config, storage="memory"), f"stream {config.stream}", "storage", "file", "memory"),
        (attrs.evolve(config, ack_wait=5.0), f"consumer appliers of stream {config.stream}", "ack_wait", 2.0, 5.0),
        (
            attrs.evolve(config, results_ttl=60.0),
            f"key-value bucket {config.results_bucket}",
            "ttl",
            600.0,
            60.0,
        ),
    ]
    for other, resource, setting, existing, wanted in cases:
        pool = apply_pool(bus, other, db)
        with pytest.raises(IncompatibleSettingsError) as info:
            pool.start()
        error = info.value
        assert (error.resource, error.setting, error.existing, error.wanted) == (resource, setting, existing, wanted)
        assert f"{setting}={existing!r}" in str(error) and f"{setting}={wanted!r}" in str(error)
    with pytest.raises(IncompatibleSettingsError, match="retention"):
        CommandBus(bus).send(Apply(1), durable=attrs.evolve(config, retention="limits"))


def test_a_consumer_filter_grows_with_a_new_command_type(bus: Bus, cleanup: DurableConfig, db: Path) -> None:
    config = cleanup
    with apply_pool(bus, config, db):
        pass
    pool = apply_pool(bus, config, db)
    pool.register(lambda cmd: cmd.a + cmd.b, message_type=Add)
    with pool:
        assert pool.durable is not None
        assert pool.durable.filter_subjects == [config.command_subject("Add"), config.command_subject("Apply")]
        command_id = CommandBus(bus).send(Add(2, 3), durable=config)
        assert CommandBus(bus).result(command_id, wait=10, durable=config) == 5
    with apply_pool(bus, config, db) as older:  # an older release: the filter keeps Add
        assert older.durable is not None and len(older.durable.filter_subjects) == 2


def test_cli_pending_shows_stored_commands_and_consumers(
    bus: Bus, cleanup: DurableConfig, db: Path, capsys: Any, nats_url: str
) -> None:
    config = cleanup
    names = ["--server", nats_url, "--stream", config.stream, "--subject-prefix", config.subject_prefix]
    assert main(["durable", "pending", *names]) == 0
    assert capsys.readouterr() == ("", f"no stream {config.stream}: nothing was sent durably yet\n")
    ids = [CommandBus(bus).send(Apply(n), durable=config) for n in range(3)]
    assert main(["durable", "pending", "--limit", "2", *names]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"stream {config.stream}: 3 command(s) stored"
    assert lines[1] == "no consumer yet: no durable worker has started on this stream"
    assert lines[3].split() == ["SEQ", "TYPE", "COMMAND", "ID", "STORED"]
    assert [line.split()[:3] for line in lines[4:6]] == [["1", "Apply", ids[0]], ["2", "Apply", ids[1]]]
    assert lines[6] == "(the first 2 of 3; see --limit)"
    with apply_pool(bus, config, db):
        wait_until(lambda: effects.count(db) == 3, 10, "3 effects")
    assert main(["durable", "pending", *names]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"stream {config.stream}: 0 command(s) stored"
    assert lines[1].split() == ["CONSUMER", "PENDING", "ACK", "PENDING", "REDELIVERED", "WAITING"]
    assert lines[2].split()[:4] == ["appliers", "0", "0", "0"]


def _cli_names(nats_url: str, config: DurableConfig) -> List[str]:
    return [
        *("--server", nats_url, "--stream", config.stream, "--subject-prefix", config.subject_prefix),
        *("--dead-letter-stream", config.dead_letter_stream, "--dead-letter-prefix", config.dead_letter_prefix),
        *("--results-bucket", config.results_bucket),
    ]


def _cli_json(capsys: Any, *argv: str) -> Tuple[int, Any, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out else None, err


def test_cli_durable_json_pending_dead_and_replay(bus: Bus, cleanup: DurableConfig, capsys: Any, nats_url: str) -> None:
    config = cleanup
    names = _cli_names(nats_url, config)
    status, document, err = _cli_json(capsys, "durable", "pending", "--json", *names)
    assert (status, err) == (0, "")
    assert document == {"stream": config.stream, "exists": False, "messages": 0, "consumers": [], "commands": []}
    fixed = threading.Event()
    pool = WorkerPool(bus, service_id="flaky", durable=config)

    @pool.register
    def flaky(cmd: Flaky) -> str:
        if not fixed.is_set():
            raise RuntimeError("disk full")
        return "ok"

    commands = CommandBus(bus)
    command_id = commands.send(Flaky(1), durable=config)
    status, document, err = _cli_json(capsys, "durable", "pending", "--json", *names)
    assert (status, err) == (0, "")
    (stored,) = document.pop("commands")
    assert document == {"stream": config.stream, "exists": True, "messages": 1, "consumers": []}
    assert (stored["seq"], stored["command_type"], stored["command_id"]) == (1, "Flaky", command_id)
    assert sorted(stored) == ["command_id", "command_type", "seq", "stored_at"]
    with pool:
        with pytest.raises(HandlerError, match="disk full"):
            commands.result(command_id, wait=15, durable=config)
        status, letters, err = _cli_json(capsys, "durable", "dead", "--json", *names)
        assert (status, err) == (0, "")
        (letter,) = letters
        assert letter == {
            "seq": letter["seq"],
            "command_type": "Flaky",
            "command_id": command_id,
            "service": "flaky",
            "deliveries": 3,
            "failed_at": letter["failed_at"],
            "error_code": "500",
            "error": "disk full",
            "original_subject": config.command_subject("Flaky"),
        }
        status, document, err = _cli_json(capsys, "durable", "pending", "--json", *names)
        assert [c["name"] for c in document["consumers"]] == ["flaky"]
        assert sorted(document["consumers"][0]) == [
            "name",
            "num_ack_pending",
            "num_pending",
            "num_redelivered",
            "num_waiting",
        ]
        fixed.set()
        status, document, err = _cli_json(capsys, "durable", "replay", str(letter["seq"]), "--json", *names)
        assert (status, err) == (0, "")
        assert document == {
            "seq": letter["seq"],
            "command_type": "Flaky",
            "command_id": command_id,
            "subject": config.command_subject("Flaky"),
        }
        assert commands.result(command_id, wait=10, durable=config) == "ok"
        assert _cli_json(capsys, "durable", "dead", "--json", *names) == (0, [], "")
        status, document, err = _cli_json(capsys, "durable", "replay", "cmd-no-such", "--json", *names)
        assert (status, document) == (1, None)
        error = json.loads(err)
        assert error["code"] == "failed" and "no dead letter cmd-no-such" in error["error"]


def test_cli_durable_json_errors_are_objects(capsys: Any) -> None:
    status, document, err = _cli_json(capsys, "durable", "dead", "--json", "--retention", "forever")
    assert (status, document) == (2, None)
    error = json.loads(err)
    assert error["code"] == "usage" and "forever" in error["error"]
    status, document, err = _cli_json(capsys, "durable", "pending", "--json", "--server", "nats://127.0.0.1:1")
    assert (status, document) == (3, None)
    assert json.loads(err)["code"] == "connect"


def test_every_nats_jetstream_error_class_is_mapped() -> None:
    classes = [
        obj for obj in vars(nats.js.errors).values() if inspect.isclass(obj) and issubclass(obj, nats.js.errors.Error)
    ]
    assert [cls.__name__ for cls in classes if cls not in JS_ERROR_MAP] == []
    error = map_js_error(nats.js.errors.APIError(code=400, err_code=10058, description="stream name in use"), "create")
    assert isinstance(error, JetStreamError)
    assert (error.code, error.err_code) == (400, 10058)
    assert str(error) == "create: stream name in use (code 400, error 10058)"
    assert isinstance(map_js_error(nats.js.errors.NoStreamResponseError()), JetStreamError)


# -- a worker process killed mid-batch ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkill_mid_batch_then_restart_loses_nothing_and_applies_nothing_twice(
    bus: Bus, nats_url: str, cleanup: DurableConfig, tag: str, db: Path, tmp_path: Path
) -> None:
    config = cleanup
    threads = 4
    hold = tmp_path / "hold"
    hold.touch()
    env = {
        "DURABLE_TAG": tag,
        "DURABLE_DB": str(db),
        "DURABLE_THREADS": str(threads),
        "DURABLE_WORK_SECONDS": "0.01",
        "DURABLE_HOLD_FILE": str(hold),
        "DURABLE_HOLD_N": "100",
    }
    commands = CommandBus(bus)
    ids = [commands.send(Apply(n), durable=config) for n in range(300)]
    worker = WorkerProcess(nats_url, target="durable_app:make_pool", env=env)
    try:
        worker.wait_ready()
        # Command 100 has committed its effect and is held before natsbus stores its reply.
        wait_until(lambda: effects.per_command(db).get(ids[100]) == 1, 30, "command 100 committed")
        worker.signal(signal.SIGKILL)
        assert worker.wait(10) == -signal.SIGKILL
    finally:
        worker.kill()
    hold.unlink()
    done_at_kill = effects.count(db)
    assert done_at_kill < 300, "the kill came after the batch; nothing was tested"
    restarted = WorkerProcess(nats_url, target="durable_app:make_pool", env=env)
    try:
        restarted.wait_ready()
        wait_until(lambda: effects.count(db) >= 300 and durable.pending(bus, config).messages == 0, 40, "all 300")
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(15) == 0
    finally:
        restarted.kill()
    # Nothing lost, nothing applied twice.
    assert effects.per_command(db) == dict.fromkeys(ids, 1)
    assert effects.numbers(db) == list(range(300))
    # Command 100 ran twice (delivered again: its reply was never stored), and applied once.
    runs = effects.per_command(db, "invocations")
    assert runs[ids[100]] == 2
    # Other second runs come only from commands in flight at the kill.
    again = [cid for cid, n in runs.items() if n > 1]
    assert set(runs) == set(ids)
    assert len(again) <= threads
    assert [commands.result(ids[n], wait=5, durable=config) for n in (0, 100, 299)] == [0, 200, 598]
    assert durable.dead_letters(bus, config) == []


def test_durable_app_config_is_the_tests_config(tag: str) -> None:
    assert durable_app.config_for(tag) == config_for(tag)


def test_the_durable_consumer_knows_the_pool_only_through_its_protocol() -> None:
    import ast

    import natsbus._consumer as consumer_module
    from natsbus._consumer import WorkerThreads

    tree = ast.parse(Path(consumer_module.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "worker" not in imported and "natsbus.worker" not in imported  # not even for type checking
    members = {name for name in vars(WorkerThreads) if not name.startswith("_")}
    assert members == {
        "dispatcher",
        "max_workers",
        "queue_group",
        "service_id",
        "release_workers",
        "reserve_workers",
        "run_reserved",
    }
