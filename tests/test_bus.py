"""CommandBus / QueryBus against a real nats-server: results and every error."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, Iterator, List

import attrs
import pytest

from natsbus import (
    Bus,
    BusClosedError,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    ConnectError,
    HandlerError,
    InvalidRequestError,
    LoopThreadError,
    NatsBusError,
    NatsConfig,
    NoHandlerError,
    NotFoundError,
    PayloadTooLargeError,
    Query,
    QueryBus,
    RequestTimeoutError,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, GetUserQuery, User, UserCreated


@attrs.frozen
class NobodyServesThisCommand(Command[None]):
    x: int = 0


@attrs.frozen
class NobodyServesThisQuery(Query[None]):
    x: int = 0


@attrs.frozen
class Sleep(Command[str]):
    seconds: float


@attrs.frozen
class PlainEcho:
    text: str


@attrs.frozen
class Blob(Command[int]):
    data: str


@pytest.fixture()
def slow_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = WorkerPool(bus, service_id="slow", max_workers=4)

    @pool.register
    def sleep(cmd: Sleep) -> str:
        time.sleep(cmd.seconds)
        return "slept"

    @pool.register(kind="command")
    def echo(msg: PlainEcho) -> Dict[str, Any]:
        return {"echo": msg.text}

    @pool.register
    def blob(cmd: Blob) -> int:
        return len(cmd.data)

    pool.start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5.0)


def test_execute_returns_the_declared_result_type(bus: Bus, user_pool: WorkerPool) -> None:
    result = CommandBus(bus).execute(CreateUserCommand(name="Ann", email="ann@example.com"))
    assert isinstance(result, UserCreated)
    assert result.user_id.startswith("user-")
    user = QueryBus(bus).ask(GetUserQuery(user_id=result.user_id))
    assert user == User(id=result.user_id, name="Ann", email="ann@example.com", created_at=user.created_at)


def test_plain_attrs_message_returns_plain_data_or_returns_type(bus: Bus, slow_pool: WorkerPool) -> None:
    commands = CommandBus(bus)
    assert commands.execute(PlainEcho("hi")) == {"echo": "hi"}

    @attrs.frozen
    class Echoed:
        echo: str

    assert commands.execute(PlainEcho("hi"), returns=Echoed) == Echoed("hi")


def test_duplicate_email_raises_conflict_with_spec_text(bus: Bus, user_pool: WorkerPool) -> None:
    commands = CommandBus(bus)
    commands.execute(CreateUserCommand(name="Bo", email="bo@example.com"))
    with pytest.raises(ConflictError) as info:
        commands.execute(CreateUserCommand(name="Bo", email="bo@example.com"))
    assert str(info.value) == "User already exists with email: bo@example.com"
    envelope = info.value.envelope
    assert envelope is not None
    assert envelope.success is False
    assert envelope.error == "User already exists with email: bo@example.com"
    assert envelope.id.startswith("cmd-")


def test_unknown_user_raises_not_found(bus: Bus, user_pool: WorkerPool) -> None:
    with pytest.raises(NotFoundError, match="User not found: user-nope"):
        QueryBus(bus).ask(GetUserQuery(user_id="user-nope"))


def test_execute_raises_no_handler_immediately(bus: Bus) -> None:
    started = time.monotonic()
    with pytest.raises(NoHandlerError) as info:
        CommandBus(bus, timeout=30.0).execute(NobodyServesThisCommand())
    assert time.monotonic() - started < 5.0  # far below the 30 s timeout
    assert str(info.value) == "No handler available for commands.NobodyServesThisCommand"
    assert info.value.subject == "commands.NobodyServesThisCommand"
    with pytest.raises(NoHandlerError, match=r"^No handler available for queries.NobodyServesThisQuery$"):
        QueryBus(bus).ask(NobodyServesThisQuery())


def test_command_timeout_text_matches_spec(bus: Bus, slow_pool: WorkerPool) -> None:
    with pytest.raises(RequestTimeoutError) as info:
        CommandBus(bus, timeout=0.2).execute(Sleep(1.0))
    assert str(info.value) == "Command request timeout after 200ms"
    assert isinstance(info.value, TimeoutError)
    assert info.value.timeout == 0.2


def test_query_timeout_text_and_per_call_timeout(bus: Bus, slow_pool: WorkerPool) -> None:
    @attrs.frozen
    class SleepQuery(Query[str]):
        seconds: float

    with pytest.raises(RequestTimeoutError, match=r"^Command request timeout after 150ms$"):
        CommandBus(bus).execute(Sleep(1.0), timeout=0.15)
    with pytest.raises(NoHandlerError):
        QueryBus(bus).ask(SleepQuery(1.0))


def test_with_timeout_returns_a_new_bus(bus: Bus, slow_pool: WorkerPool) -> None:
    commands = CommandBus(bus, timeout=5.0, service_id="svc")
    quick = commands.with_timeout(0.1)
    assert quick is not commands
    assert (commands.timeout, quick.timeout, quick.service_id) == (5.0, 0.1, "svc")
    with pytest.raises(RequestTimeoutError, match="after 100ms"):
        quick.execute(Sleep(1.0))
    assert commands.execute(Sleep(0.0)) == "slept"


def test_payload_too_large_is_raised_before_sending(bus: Bus, slow_pool: WorkerPool) -> None:
    limit = bus.max_payload
    with pytest.raises(PayloadTooLargeError) as info:
        CommandBus(bus).execute(Blob("x" * limit))
    assert info.value.limit == limit
    assert info.value.size > limit
    assert f"over the server's max payload of {limit} bytes" in str(info.value)
    # Just under the limit still works (1 MiB payloads are supported).
    assert CommandBus(bus).execute(Blob("x" * (limit - 300))) == limit - 300


def test_invalid_request_format_is_a_distinct_subclass(bus: Bus, user_pool: WorkerPool) -> None:
    @attrs.frozen
    class CreateUserCommand(Command[None]):  # the same wire name, missing "email"
        name: str

    with pytest.raises(InvalidRequestError) as info:
        CommandBus(bus).execute(CreateUserCommand(name="x"))
    assert str(info.value) == "Invalid request format: expected 'email' field"
    assert info.value.code == 400


def test_invalid_request_without_code_header_still_maps_by_text() -> None:
    from natsbus.envelope import create_response_envelope, service_error

    env = create_response_envelope(False, "cmd-1", None, "Invalid request format: expected 'name' field")
    assert type(service_error(env, None, "commands.X")) is InvalidRequestError
    env = create_response_envelope(False, "cmd-1", None, "boom")
    assert type(service_error(env, None, "commands.X")) is HandlerError


def test_sending_a_query_on_the_command_bus_is_refused(bus: Bus) -> None:
    with pytest.raises(ConfigError, match="GetUserQuery is a query; send it with the QueryBus"):
        CommandBus(bus).execute(GetUserQuery(user_id="x"))  # type: ignore[call-overload]


def test_non_attrs_message_is_refused(bus: Bus) -> None:
    with pytest.raises(TypeError, match="not an attrs class"):
        CommandBus(bus).execute({"name": "x"})


def test_close_twice_and_use_after_close(nats_url: str) -> None:
    b = Bus(nats_url)
    b.close()
    b.close()
    assert b.closed
    with pytest.raises(BusClosedError, match="closed"):
        CommandBus(b).execute(NobodyServesThisCommand())


def test_close_fails_waiting_calls_fast(nats_url: str, bus: Bus, slow_pool: WorkerPool) -> None:
    client = Bus(nats_url)
    errors: List[BaseException] = []

    def call() -> None:
        try:
            CommandBus(client, timeout=30.0).execute(Sleep(3.0))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 5
    while not client._transport._waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    client.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 2.5
    assert len(errors) == 1 and isinstance(errors[0], BusClosedError)


def test_no_natsbus_thread_outlives_close(nats_url: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    with Bus(nats_url) as b:
        assert any(t.name == "natsbus-loop" for t in threading.enumerate())
        b.request  # noqa: B018 - touch the bus
    after = [t for t in threading.enumerate() if t.ident not in before]
    assert after == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connect_fails_fast_naming_the_url() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        Bus(url, connect_timeout=1.0)
    assert time.monotonic() - started < 4.0
    assert url in str(info.value)
    assert isinstance(info.value, NatsBusError) and isinstance(info.value, ConnectionError)
    assert not [t for t in threading.enumerate() if t.name == "natsbus-loop"]


def test_blocking_call_from_the_loop_thread_raises(bus: Bus) -> None:
    async def on_loop() -> BaseException:
        try:
            CommandBus(bus).execute(NobodyServesThisCommand())
        except LoopThreadError as exc:
            return exc
        raise AssertionError("no LoopThreadError")

    error = bus.run(on_loop, timeout=5)
    assert "event-loop thread" in str(error)


def test_raw_request_round_trip(bus: Bus, user_pool: WorkerPool) -> None:
    body = (
        b'{"command_type":"CreateUserCommand","command_id":"cmd-raw-1","service_id":"x",'
        b'"timestamp":"2025-11-29T12:34:56Z","payload":{"name":"R","email":"raw@example.com"}}'
    )
    reply = bus.request("commands.CreateUserCommand", body, timeout=5)
    import json

    response = json.loads(reply.data)
    assert sorted(response) == ["command_id", "error", "payload", "success", "timestamp"]
    assert response["command_id"] == "cmd-raw-1"
    assert response["success"] is True
    assert sorted(response["payload"]) == ["created_at", "user_id"]


@pytest.mark.parametrize("subject", ["", "two words", "tab\there", "new\nline", "carriage\rreturn"])
def test_a_subject_that_would_break_the_protocol_is_refused(bus: Bus, subject: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid NATS subject "):
        bus.publish(subject, b"x")
    with pytest.raises(ConfigError, match=r"^invalid NATS subject "):
        bus.request(subject, b"x", timeout=1)
    bus.publish("a.valid.subject", b"x")  # the connection is still fine
    bus.flush()


def test_a_server_url_must_use_a_nats_scheme() -> None:
    for url in ("nats://h:4222", "tls://h:4222", "ws://h:8080", "WSS://h:443", "nats://a:1, nats://b:2"):
        assert NatsConfig(servers=url).servers
    with pytest.raises(ConfigError) as info:
        NatsConfig(servers="http://h:4222")
    assert str(info.value) == (
        "server URL 'http://h:4222' has the scheme 'http'; NATS URLs start with nats://, tls://, ws:// or wss://"
    )
    with pytest.raises(ConfigError, match="'https://b' has the scheme 'https'"):
        Bus("nats://a:4222,https://b")  # refused before connecting
    with pytest.raises(ConfigError, match="has no scheme"):
        NatsConfig(servers="h:4222")
