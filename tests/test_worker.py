"""WorkerPool against a real nats-server: concurrency, queue groups, bad input."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Dict, List

import attrs
import pytest

from natsbus import (
    Bus,
    Command,
    CommandBus,
    HandlerError,
    InvalidRequestError,
    NatsServer,
    Query,
    QueryBus,
    RegistrationError,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, UserCreated
from natsbus.dispatch import Dispatcher, NotStarted


@attrs.frozen
class Add(Command[int]):
    a: int
    b: int


@attrs.frozen
class WhoAmI(Query[str]):
    caller: int


@attrs.frozen
class Boom(Command[None]):
    text: str


@attrs.frozen
class Nested(Command[int]):
    """A handler that itself calls a bus."""

    a: int


def test_64_threads_each_get_their_own_result(bus: Bus, nats_url: str) -> None:
    pool = WorkerPool(bus, service_id="calc", max_workers=8)

    @pool.register
    def add(cmd: Add) -> int:
        return cmd.a + cmd.b

    with pool, Bus(nats_url) as client:
        commands = CommandBus(client)
        failures: List[str] = []

        def caller(i: int) -> None:
            for j in range(50):
                result = commands.execute(Add(i, j * 1000))
                if result != i + j * 1000:
                    failures.append(f"{i},{j}: {result}")

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
        assert not any(t.is_alive() for t in threads)
        stats = pool.dispatcher.route_for("commands.Add")
        assert stats is not None and stats.stats.num_requests == 64 * 50


def test_two_pools_in_one_queue_group_share_the_work(bus: Bus, nats_url: str) -> None:
    served: Counter[str] = Counter()
    lock = threading.Lock()

    def make(name: str, b: Bus) -> WorkerPool:
        pool = WorkerPool(b, service_id="who", max_workers=2)

        def who(query: WhoAmI) -> str:
            with lock:
                served[name] += 1
            return name

        pool.register(who)
        return pool.start()

    with Bus(nats_url) as other:
        first, second = make("first", bus), make("second", other)
        try:
            queries = QueryBus(bus)
            answers = Counter(queries.ask(WhoAmI(i)) for i in range(200))
        finally:
            first.stop(5)
            second.stop(5)
    assert sum(answers.values()) == 200
    assert answers["first"] > 0 and answers["second"] > 0
    assert answers == served


def test_a_handler_can_call_a_bus(bus: Bus, nats_url: str) -> None:
    pool = WorkerPool(bus, service_id="nested", max_workers=4)

    @pool.register
    def add(cmd: Add) -> int:
        return cmd.a + cmd.b

    @pool.register
    def nested(cmd: Nested) -> int:
        return CommandBus(bus).execute(Add(cmd.a, 1)) * 10

    with pool:
        assert CommandBus(bus).execute(Nested(4)) == 50


def test_handler_exception_replies_with_its_message_not_a_traceback(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    pool = WorkerPool(bus, service_id="boom")

    @pool.register
    def boom(cmd: Boom) -> None:
        raise RuntimeError(cmd.text)

    with pool, pytest.raises(HandlerError) as info:
        CommandBus(bus).execute(Boom("disk on fire"))
    assert str(info.value) == "disk on fire"
    assert info.value.code == 500
    assert "Traceback" not in (info.value.envelope.error or "")  # type: ignore[union-attr]
    records = [r for r in caplog.records if r.name == "natsbus.worker" and r.exc_info]
    assert records and "disk on fire" in str(records[0].exc_info[1])  # type: ignore[index]


GARBAGE = [
    b"",
    b"\xff\xfe\x00garbage",
    b"not json at all",
    b"[]",
    b"null",
    b'{"command_type": "CreateUserCommand"}',
    b'{"command_type": "Other", "command_id": "cmd-x", "payload": {"name": "a", "email": "b"}}',
    b'{"command_type": "CreateUserCommand", "command_id": "cmd-y", "payload": {"name": 5, "email": "b"}}',
    b'{"command_type": "CreateUserCommand", "command_id": "cmd-z", "payload": "nope"}',
    b'{"command_type": "CreateUserCommand", "command_id": "cmd-d", "payload": ' + b"[" * 50000 + b"]" * 50000 + b"}",
]


def test_pool_answers_garbage_with_error_envelopes_and_keeps_serving(bus: Bus, user_pool: WorkerPool) -> None:
    errors: List[str] = []
    for body in GARBAGE:
        reply = bus.request("commands.CreateUserCommand", body, timeout=5)
        response = json.loads(reply.data)
        assert response["success"] is False
        assert response["payload"] is None
        assert response["error"].startswith("Invalid request format: ")
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "400"
        errors.append(response["error"])
    assert errors[5] == "Invalid request format: expected 'command_id' field in command request"
    assert errors[6] == (
        "Invalid request format: command_type 'Other' does not match subject commands.CreateUserCommand"
    )
    assert errors[7] == "Invalid request format: field 'name': expected string, got number"
    assert json.loads(bus.request("commands.CreateUserCommand", GARBAGE[7], timeout=5).data)["command_id"] == "cmd-y"
    # Still serving.
    result = CommandBus(bus).execute(CreateUserCommand(name="Z", email="z@example.com"))
    assert isinstance(result, UserCreated)


def test_missing_field_error_text_is_the_spec_one(bus: Bus, user_pool: WorkerPool) -> None:
    body = (
        b'{"command_type":"CreateUserCommand","command_id":"cmd-1","service_id":"s",'
        b'"timestamp":"t","payload":{"email":"e"}}'
    )
    response = json.loads(bus.request("commands.CreateUserCommand", body, timeout=5).data)
    assert response == {
        "success": False,
        "command_id": "cmd-1",
        "timestamp": response["timestamp"],
        "payload": None,
        "error": "Invalid request format: expected 'name' field",
    }


def test_two_handlers_for_one_type_is_an_error(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="dup")
    pool.register(lambda_add)
    with pytest.raises(RegistrationError, match=r"two handlers for commands\.Add"):
        pool.register(lambda_add2)


def lambda_add(cmd: Add) -> int:
    return 0


def lambda_add2(cmd: Add) -> int:
    return 1


def test_registration_needs_a_message_type(bus: Bus) -> None:
    pool = WorkerPool(bus)

    def untyped(cmd):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(RegistrationError, match="no type annotation"):
        pool.register(untyped)
    pool.register(untyped, message_type=Add)
    assert pool.subjects == ["commands.Add"]


@attrs.frozen
class Plain:
    x: int


def test_plain_attrs_class_needs_a_kind() -> None:
    def handle(msg: Plain) -> None:
        return None

    dispatcher = Dispatcher("svc")
    with pytest.raises(RegistrationError, match="pass kind='command' or kind='query'"):
        dispatcher.register(handle)
    assert dispatcher.register(handle, kind="query").subject == "queries.Plain"


def test_handler_object_with_dependencies(bus: Bus) -> None:
    @attrs.define
    class AddHandler:
        offset: int

        def handle(self, cmd: Add) -> int:
            return cmd.a + cmd.b + self.offset

    pool = WorkerPool(bus, service_id="obj", handlers=[AddHandler(100)])
    with pool:
        assert CommandBus(bus).execute(Add(1, 2)) == 103


def test_dispatcher_never_raises_on_unencodable_result() -> None:
    dispatcher = Dispatcher("svc")

    def bad(cmd: Add) -> object:
        return object()

    route = dispatcher.register(bad)
    body, headers = dispatcher.dispatch(route, b'{"command_type":"Add","command_id":"cmd-1","payload":{"a":1,"b":2}}')
    response = json.loads(body)
    assert response["success"] is False and response["command_id"] == "cmd-1"
    assert response["error"].startswith("could not encode the result of Add")
    assert headers == {"Nats-Service-Error": response["error"], "Nats-Service-Error-Code": "500"}


def test_a_request_past_its_deadline_is_answered_with_a_not_started_504_pair() -> None:
    dispatcher = Dispatcher("svc")
    runs: List[int] = []

    def add(cmd: Add) -> int:
        runs.append(cmd.a)
        return cmd.a + cmd.b

    route = dispatcher.register(add)
    body = b'{"command_type":"Add","command_id":"cmd-1","payload":{"a":1,"b":2}}'
    late = dispatcher.dispatch(route, body, deadline=time.monotonic() - 1)
    assert isinstance(late, NotStarted)
    reply_body, headers = late  # still the (body, headers) pair every caller unpacks
    assert headers is not None and headers["Nats-Service-Error-Code"] == "504"
    assert json.loads(reply_body)["success"] is False
    on_time = dispatcher.dispatch(route, body, deadline=time.monotonic() + 60)
    assert not isinstance(on_time, NotStarted) and on_time == (on_time[0], None)
    assert runs == [1]


def test_reply_over_max_payload_becomes_an_error_envelope() -> None:
    dispatcher = Dispatcher("svc")

    def big(cmd: Add) -> str:
        return "x" * 5000

    route = dispatcher.register(big)
    body, _ = dispatcher.dispatch(
        route, b'{"command_type":"Add","command_id":"cmd-1","payload":{"a":1,"b":2}}', max_payload=1000
    )
    response = json.loads(body)
    assert response["success"] is False
    assert "over the server's max payload of 1000 bytes" in response["error"]


def test_stop_drains_admitted_requests(nats_server: NatsServer) -> None:
    release = threading.Event()
    results: Dict[int, object] = {}
    with Bus(nats_server.url) as server_bus, Bus(nats_server.url) as client:
        pool = WorkerPool(server_bus, service_id="drain", max_workers=2)

        @pool.register
        def add(cmd: Add) -> int:
            release.wait(10)
            return cmd.a + cmd.b

        pool.start()

        def call(i: int) -> None:
            results[i] = CommandBus(client, timeout=15).execute(Add(i, 0))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        # Wait until every request is admitted (2 running, 4 waiting).
        while pool.inflight < 6:
            threading.Event().wait(0.01)
        stopper = threading.Thread(target=pool.stop, args=(15,))
        stopper.start()
        release.set()
        stopper.join(20)
        for t in threads:
            t.join(20)
    assert results == {i: i for i in range(6)}


def test_pool_refuses_with_busy_when_full(bus: Bus, nats_url: str) -> None:
    from natsbus import BusyError

    release = threading.Event()
    pool = WorkerPool(bus, service_id="tiny", max_workers=1, max_pending=0)

    @pool.register
    def add(cmd: Add) -> int:
        release.wait(10)
        return 1

    with pool, Bus(nats_url) as client:
        first: List[object] = []
        t = threading.Thread(target=lambda: first.append(CommandBus(client).execute(Add(1, 1))))
        t.start()
        while pool.inflight < 1:
            threading.Event().wait(0.01)
        with pytest.raises(BusyError) as info:
            CommandBus(client).execute(Add(2, 2))
        assert info.value.code == 503
        release.set()
        t.join(10)
        assert first == [1]


@attrs.frozen
class WrongGetUserQuery(Query[None], type_name="GetUserQuery"):
    user_id: int


def test_invalid_request_error_for_wrong_type(bus: Bus, user_pool: WorkerPool) -> None:
    with pytest.raises(InvalidRequestError, match="field 'user_id': expected string, got number"):
        QueryBus(bus).ask(WrongGetUserQuery(user_id=5))
    assert user_pool.subjects == ["commands.CreateUserCommand", "queries.GetUserQuery"]


@attrs.frozen
class MultiLine(Command[None]):
    pass


def test_multi_line_handler_error_reaches_the_caller(bus: Bus) -> None:
    # NATS header values are one line: the error text must not break the reply.
    pool = WorkerPool(bus, service_id="multiline")

    @pool.register
    def fail(cmd: MultiLine) -> None:
        raise RuntimeError("line one\nline two\r\nline three")

    with pool, pytest.raises(HandlerError) as info:
        CommandBus(bus, timeout=5).execute(MultiLine())
    assert str(info.value) == "line one\nline two\r\nline three"  # the envelope keeps the full text


@attrs.frozen
class StopFromHandler(Command[str]):
    pass


def test_stop_called_by_a_handler_does_not_wait_for_itself(bus: Bus) -> None:
    import time

    pool = WorkerPool(bus, service_id="selfstop")

    @pool.register
    def stop_me(cmd: StopFromHandler) -> str:
        return "drained" if pool.stop(drain_timeout=20) else "not drained"

    pool.start()
    started = time.monotonic()
    assert CommandBus(bus, timeout=10).execute(StopFromHandler()) == "drained"
    assert time.monotonic() - started < 5
    assert not pool.running
