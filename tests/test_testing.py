"""natsbus.testing.InMemoryBus: the NATS path's encoding and errors, without a server."""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Dict, List, Tuple

import attrs
import pytest

from natsbus import (
    Bus,
    BusClosedError,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    EnvelopeError,
    HandlerError,
    InvalidRequestError,
    NoHandlerError,
    NotFoundError,
    PayloadTooLargeError,
    Query,
    QueryBus,
    RequestTimeoutError,
    WorkerPool,
)
from natsbus.demo import (
    CreateUserCommand,
    CreateUserHandler,
    GetUserHandler,
    GetUserQuery,
    User,
    UserCreated,
    UserRepository,
    build_pool,
)
from natsbus.testing import InMemoryBus


def user_service() -> InMemoryBus:
    repository = UserRepository()
    return InMemoryBus([CreateUserHandler(repository), GetUserHandler(repository)])


@attrs.frozen
class Add(Command[int]):
    a: int
    b: int


@attrs.frozen
class Unserved(Command[None]):
    x: int


@attrs.frozen
class Slow(Command[str]):
    text: str


@attrs.frozen
class BadResult(Command[UserCreated]):
    """Its handler returns a dict missing ``created_at``: a bug only a round trip shows."""

    name: str


def test_execute_and_ask_return_typed_results_in_eager_mode() -> None:
    memory = user_service()
    created = memory.commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    assert isinstance(created, UserCreated)
    user = memory.queries.ask(GetUserQuery(created.user_id))
    assert User(created.user_id, "Alice", "alice@example.com", created.created_at) == user


def test_eager_mode_runs_the_handler_in_the_calling_thread() -> None:
    memory = InMemoryBus()
    seen: List[int] = []

    @memory.register
    def add(cmd: Add) -> int:
        seen.append(threading.get_ident())
        return cmd.a + cmd.b

    assert memory.commands.execute(Add(2, 3)) == 5
    assert seen == [threading.get_ident()]


def test_the_handler_receives_a_copy_made_from_json_not_the_callers_object() -> None:
    memory = InMemoryBus()
    received: List[object] = []

    @memory.register
    def add(cmd: Add) -> int:
        received.append(cmd)
        return 0

    sent = Add(1, 2)
    memory.commands.execute(sent)
    assert received == [sent]
    assert received[0] is not sent


def test_a_result_that_does_not_fit_the_declared_type_fails_like_on_nats() -> None:
    memory = InMemoryBus()

    @memory.register
    def bad(cmd: BadResult) -> Dict[str, str]:
        return {"user_id": "u-1"}

    with pytest.raises(EnvelopeError, match=r"does not fit UserCreated"):
        memory.commands.execute(BadResult("x"))


def test_an_unencodable_result_is_a_handler_error() -> None:
    memory = InMemoryBus()

    @memory.register
    def add(cmd: Add) -> object:
        return object()

    with pytest.raises(HandlerError, match="could not encode the result of Add"):
        memory.commands.execute(Add(1, 2))


def test_no_handler_raises_the_spec_text() -> None:
    memory = user_service()
    with pytest.raises(NoHandlerError) as info:
        memory.commands.execute(Unserved(1))
    assert str(info.value) == "No handler available for commands.Unserved"
    assert info.value.subject == "commands.Unserved"


def test_a_query_sent_on_the_command_bus_is_refused() -> None:
    with pytest.raises(ConfigError, match="GetUserQuery is a query; send it with the QueryBus"):
        user_service().commands.execute(GetUserQuery("u"))  # type: ignore[arg-type]


def test_threaded_mode_times_out_with_the_spec_text_and_the_handler_finishes() -> None:
    release = threading.Event()
    finished = threading.Event()
    threads: List[str] = []
    with InMemoryBus(eager=False, max_workers=2) as memory:

        @memory.register
        def slow(cmd: Slow) -> str:
            threads.append(threading.current_thread().name)
            release.wait(10)
            finished.set()
            return cmd.text

        with pytest.raises(RequestTimeoutError) as info:
            memory.commands.execute(Slow("late"), timeout=0.05)
        assert str(info.value) == "Command request timeout after 50ms"
        assert info.value.timeout == 0.05
        release.set()
        assert finished.wait(10)
        assert memory.commands.execute(Slow("on time")) == "on time"
    assert threads[0].startswith("natsbus-inmemory")


def test_threaded_mode_runs_handlers_concurrently() -> None:
    barrier = threading.Barrier(4, timeout=10)
    results: List[int] = []
    with InMemoryBus(eager=False, max_workers=4) as memory:

        @memory.register
        def add(cmd: Add) -> int:
            barrier.wait()  # only passes when 4 handlers run at once
            return cmd.a + cmd.b

        callers = [
            threading.Thread(target=lambda i=i: results.append(memory.commands.execute(Add(i, 0)))) for i in range(4)
        ]
        for t in callers:
            t.start()
        for t in callers:
            t.join(10)
    assert sorted(results) == [0, 1, 2, 3]


def test_query_timeout_text_and_with_timeout() -> None:
    release = threading.Event()
    with InMemoryBus(eager=False) as memory:

        @memory.register
        def get(query: GetUserQuery) -> User:
            release.wait(10)
            raise NotFoundError("late")

        queries = memory.queries.with_timeout(0.02)
        assert queries.timeout == 0.02 and memory.queries.timeout == 3.0
        with pytest.raises(RequestTimeoutError, match=r"^Query request timeout after 20ms$"):
            queries.ask(GetUserQuery("u"))
        release.set()


def test_request_over_max_payload_is_refused_before_the_handler() -> None:
    memory = InMemoryBus(max_payload=200)
    calls: List[Add] = []
    memory.register(lambda_add(calls))
    with pytest.raises(PayloadTooLargeError, match="over the server's max payload of 200 bytes"):
        memory.commands.execute(Add(10**300, 1))
    assert calls == []


def lambda_add(calls: List[Add]) -> Callable[[Add], int]:
    def add(cmd: Add) -> int:
        calls.append(cmd)
        return cmd.a + cmd.b

    return add


def test_sent_records_every_message_in_order() -> None:
    memory = user_service()
    created = memory.commands.execute(CreateUserCommand("A", "a@example.com"))
    with pytest.raises(NotFoundError):
        memory.queries.ask(GetUserQuery("nobody"))
    assert memory.sent == [CreateUserCommand("A", "a@example.com"), GetUserQuery("nobody")]
    assert created.user_id.startswith("user-")


def test_from_pool_serves_the_pools_handlers_and_counts_them(bus: Bus) -> None:
    pool = build_pool(bus)  # never started: no subscriptions
    memory = InMemoryBus.from_pool(pool)
    created = memory.commands.execute(CreateUserCommand("A", "a@example.com"))
    assert memory.queries.ask(GetUserQuery(created.user_id)).name == "A"
    route = pool.dispatcher.route_for("commands.CreateUserCommand")
    assert route is not None and route.stats.num_requests == 1


def test_closed_bus_refuses_calls() -> None:
    memory = user_service()
    memory.close()
    memory.close()
    assert memory.closed
    with pytest.raises(BusClosedError, match="the Bus is closed"):
        memory.commands.execute(CreateUserCommand("A", "a@example.com"))


def test_bad_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="timeout must be > 0"):
        InMemoryBus(command_timeout=0)


# -- parity: the same calls, over NATS and in memory, fail the same way ------

MISSING_NAME = (
    b'{"command_type":"CreateUserCommand","command_id":"cmd-1","service_id":"s",'
    b'"timestamp":"t","payload":{"email":"e"}}'
)


@attrs.frozen
class WrongGetUserQuery(Query[None], type_name="GetUserQuery"):
    user_id: int


Scenario = Callable[[Any, Any, Callable[[str, bytes], Any]], Any]

SCENARIOS: Dict[str, Scenario] = {
    "duplicate": lambda c, q, raw: [c.execute(CreateUserCommand("D", "d@example.com")) for _ in range(2)],
    "not found": lambda c, q, raw: q.ask(GetUserQuery("user-nobody")),
    "no handler": lambda c, q, raw: c.execute(Unserved(1)),
    "wrong field type": lambda c, q, raw: q.ask(WrongGetUserQuery(5)),
    "missing field": lambda c, q, raw: raw("commands.CreateUserCommand", MISSING_NAME),
}


def _outcome(run: Callable[[], Any]) -> Tuple[str, str, Any]:
    try:
        result = run()
    except Exception as exc:
        return type(exc).__name__, str(exc), getattr(exc, "code", None)
    return "ok", "", result


def _raw_reply(request: Callable[..., Any]) -> Callable[[str, bytes], Any]:
    def raw(subject: str, body: bytes) -> Any:
        reply = request(subject, body, timeout=5)
        response = json.loads(reply.data)
        del response["timestamp"]
        return response, reply.headers

    return raw


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_in_memory_fails_exactly_like_nats(name: str, bus: Bus, user_pool: WorkerPool) -> None:
    scenario = SCENARIOS[name]
    over_nats = _outcome(lambda: scenario(CommandBus(bus), QueryBus(bus), _raw_reply(bus.request)))
    memory = user_service()
    in_memory = _outcome(lambda: scenario(memory.commands, memory.queries, _raw_reply(memory.request)))
    assert over_nats == in_memory
    assert in_memory[0] != "ok" or name == "missing field"


def test_parity_scenarios_hit_each_error_class() -> None:
    memory = user_service()
    classes = {
        name: _outcome(lambda s=s: s(memory.commands, memory.queries, _raw_reply(memory.request)))[0]
        for name, s in SCENARIOS.items()
    }
    assert classes == {
        "duplicate": ConflictError.__name__,
        "not found": NotFoundError.__name__,
        "no handler": NoHandlerError.__name__,
        "wrong field type": InvalidRequestError.__name__,
        "missing field": "ok",
    }
    missing = _raw_reply(memory.request)("commands.CreateUserCommand", MISSING_NAME)
    assert missing == (
        {
            "success": False,
            "command_id": "cmd-1",
            "payload": None,
            "error": "Invalid request format: expected 'name' field",
        },
        {"Nats-Service-Error": "Invalid request format: expected 'name' field", "Nats-Service-Error-Code": "400"},
    )


def test_in_memory_buses_keep_their_middleware_and_retry_through_with_timeout() -> None:
    from natsbus import RetryPolicy
    from natsbus.middleware import ClientMiddleware
    from natsbus.testing import InMemoryCommandBus, InMemoryQueryBus

    first, second = ClientMiddleware(), ClientMiddleware()
    memory = InMemoryBus(client_middleware=[first])
    assert memory.commands.with_timeout(1.0).middleware == (first,)
    policy = RetryPolicy(attempts=2)
    commands = InMemoryCommandBus(memory, 2.0, retry=policy, middleware=[first, second]).with_timeout(1.0)
    queries = InMemoryQueryBus(memory, 2.0, middleware=[second]).with_timeout(1.0)
    assert (commands.timeout, commands.retry, commands.middleware) == (1.0, policy, (first, second))
    assert (queries.timeout, queries.middleware) == (1.0, (second,))


@attrs.frozen
class Explode(Command[int]):
    how: str


def _exploding(cmd: Explode) -> int:
    if cmd.how == "missing":
        raise NotFoundError("no such thing")
    raise ValueError(f"boom: {cmd.how}")


def test_the_handlers_exception_is_the_cause_of_the_error_the_caller_gets() -> None:
    memory = InMemoryBus([_exploding], eager=True)
    with pytest.raises(HandlerError) as failed:
        memory.commands.execute(Explode("disk"))
    assert type(failed.value.__cause__) is ValueError and str(failed.value.__cause__) == "boom: disk"
    with pytest.raises(NotFoundError) as missing:
        memory.commands.execute(Explode("missing"))
    assert isinstance(missing.value.__cause__, NotFoundError) and missing.value.__cause__ is not missing.value
    threaded = InMemoryBus([_exploding], eager=False)
    try:
        with pytest.raises(HandlerError) as again:
            threaded.commands.submit(Explode("net")).result(5)
        assert type(again.value.__cause__) is ValueError
    finally:
        threaded.close()


def test_propagate_exceptions_raises_the_handlers_own_exception() -> None:
    memory = InMemoryBus([_exploding], propagate_exceptions=True)
    with pytest.raises(ValueError, match="boom: now"):
        memory.commands.execute(Explode("now"))
    with pytest.raises(NotFoundError, match="no such thing"):
        memory.commands.submit(Explode("missing")).result(5)
