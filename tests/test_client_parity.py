"""One client test module, run against NATS and against the in-memory bus.

``CommandBus(InMemoryBus(...))`` is the real command bus over a Requester
that runs the real dispatcher in process (natsbus.cqrs.Requester). Every
test here runs three times: over a real nats-server with a WorkerPool, over
the in-memory bus in threaded mode, and in eager mode (the handler on the
calling thread). A test that passes on NATS and fails in memory is a test
kit that tests less than the app uses.
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs
import pytest

from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConfigError,
    NoHandlerError,
    NotFoundError,
    Query,
    QueryBus,
    QueryCache,
    RequestTimeoutError,
    RetryPolicy,
    WorkerPool,
    current_request,
)
from natsbus.middleware import ClientCall, ClientMiddleware
from natsbus.testing import InMemoryBus

pytestmark = pytest.mark.timeout(30)


@attrs.frozen
class PEcho(Command[str]):
    text: str


@attrs.frozen
class PFlaky(Command[int]):
    key: str
    failures: int


@attrs.frozen
class PWhoAmI(Command[str]):
    pass


@attrs.frozen
class PDouble(Query[int]):
    n: int


@attrs.frozen
class PMissing(Query[str]):
    key: str


@attrs.frozen
class PSlow(Query[str]):
    key: str


@attrs.frozen
class PContext(Query[Dict[str, Any]]):
    pass


@attrs.frozen
class PNobody(Query[str]):
    pass


class Handlers:
    """The handlers, with what they saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Dict[str, int] = {}
        self.release = threading.Event()

    def count(self, key: str) -> int:
        with self.lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    def echo(self, cmd: PEcho) -> str:
        return cmd.text.upper()

    def flaky(self, cmd: PFlaky) -> int:
        seen = self.count(f"flaky-{cmd.key}")
        if seen <= cmd.failures:
            raise BusyError(f"busy, try {seen}")
        return seen

    def who_am_i(self, cmd: PWhoAmI) -> str:
        request = current_request()
        assert request is not None
        return request.message_id

    def double(self, query: PDouble) -> int:
        self.count(f"double-{query.n}")
        return query.n * 2

    def missing(self, query: PMissing) -> str:
        raise NotFoundError(f"no {query.key}")

    def slow(self, query: PSlow) -> str:
        self.release.wait(10)
        return query.key

    def context(self, query: PContext) -> Dict[str, Any]:
        request = current_request()
        assert request is not None
        remaining = request.remaining()
        return {"remaining": remaining, "probe": request.headers.get("x-probe")}

    def all(self) -> List[Any]:
        return [self.echo, self.flaky, self.who_am_i, self.double, self.missing, self.slow, self.context]


class Probe(ClientMiddleware):
    """Adds a header and records the calls it saw."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    def before(self, call: ClientCall) -> None:
        call.headers["x-probe"] = "seen"
        self.seen.append(call.message_type)


@attrs.define
class Client:
    commands: CommandBus
    queries: QueryBus
    handlers: Handlers
    probe: Probe
    backend: str


def _client(request: pytest.FixtureRequest, backend: str) -> Iterator[Client]:
    handlers = Handlers()
    probe = Probe()
    if backend == "nats":
        bus = Bus(request.getfixturevalue("nats_url"))
        pool = WorkerPool(bus, f"parity-{uuid.uuid4().hex[:8]}", handlers=handlers.all(), max_workers=4)
        pool.start()
        try:
            yield Client(
                CommandBus(bus, timeout=5.0, middleware=[probe]),
                QueryBus(bus, timeout=3.0, middleware=[probe]),
                handlers,
                probe,
                backend,
            )
        finally:
            handlers.release.set()
            pool.stop(5)
            bus.close()
        return
    memory = InMemoryBus(handlers.all(), eager=backend == "memory-eager", max_workers=4, client_middleware=[probe])
    try:
        yield Client(memory.commands, memory.queries, handlers, probe, backend)
    finally:
        handlers.release.set()
        memory.close()


@pytest.fixture(params=["nats", "memory-threaded", "memory-eager"])
def client(request: pytest.FixtureRequest) -> Iterator[Client]:
    yield from _client(request, request.param)


@pytest.fixture(params=["nats", "memory-threaded"])
def timed_client(request: pytest.FixtureRequest) -> Iterator[Client]:
    """The backends that enforce a call's timeout (eager mode cannot interrupt the handler)."""
    yield from _client(request, request.param)


def test_execute_and_ask_return_typed_results(client: Client) -> None:
    assert client.commands.execute(PEcho("hi")) == "HI"
    assert client.queries.ask(PDouble(21)) == 42


def test_service_errors_arrive_as_their_classes(client: Client) -> None:
    with pytest.raises(NotFoundError, match="no k1"):
        client.queries.ask(PMissing("k1"))


def test_no_handler_is_reported_at_once(client: Client) -> None:
    with pytest.raises(NoHandlerError, match=r"No handler available for queries\.PNobody"):
        client.queries.ask(PNobody())


def test_submit_returns_a_future_of_the_result(client: Client) -> None:
    futures = [client.commands.submit(PEcho(f"m{i}")) for i in range(5)]
    done = [f.result(5) for f in futures]
    assert done == [f"M{i}" for i in range(5)]
    failed = client.queries.submit(PMissing("k2"))
    assert isinstance(failed.exception(5), NotFoundError)


def test_a_submit_callback_runs_once_the_result_is_in(client: Client) -> None:
    ran = threading.Event()
    future = client.commands.submit(PEcho("cb"))
    future.add_done_callback(lambda f: ran.set())
    assert future.result(5) == "CB"
    assert ran.wait(5)


def test_execute_many_keeps_input_order_and_reports_errors_in_place(client: Client) -> None:
    results = client.queries.ask_many([PDouble(1), PMissing("x"), PDouble(3)], concurrency=2, return_exceptions=True)
    assert results[0] == 2 and results[2] == 6
    assert isinstance(results[1], NotFoundError)
    progress: List[Tuple[int, Optional[int]]] = []
    echoed = client.commands.execute_many(
        [PEcho(str(i)) for i in range(10)], concurrency=3, progress=lambda d, t: progress.append((d, t))
    )
    assert echoed == [str(i) for i in range(10)]
    assert progress[-1] == (10, 10)


def test_an_explicit_command_id_is_the_one_the_handler_sees(client: Client) -> None:
    commands = client.commands
    assert commands.execute(PWhoAmI(), command_id="import-7-line-1") == "import-7-line-1"
    assert commands.submit(PWhoAmI(), command_id="import-7-line-2").result(5) == "import-7-line-2"
    assert commands.execute(PWhoAmI()).startswith("cmd-")  # by default a fresh one each call
    assert commands.execute(PWhoAmI()) != commands.execute(PWhoAmI())
    for bad in ("", 7):
        with pytest.raises(ConfigError, match="command_id must be a non-empty string"):
            commands.execute(PWhoAmI(), command_id=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="command_id must be a non-empty string"):
            commands.submit(PWhoAmI(), command_id=bad)  # type: ignore[arg-type]


def test_retries_follow_the_retry_policy_with_the_same_command_id(client: Client) -> None:
    policy = RetryPolicy(attempts=3, backoff=0.01)
    assert client.commands.execute(PFlaky("a", failures=2), retry=policy) == 3
    with pytest.raises(BusyError):
        client.commands.execute(PFlaky("b", failures=5), retry=policy)
    assert client.handlers.calls["flaky-b"] == 3


def test_the_query_cache_answers_repeats_without_calling_the_handler(client: Client) -> None:
    cached = client.queries.with_timeout(3.0)
    cached.cache = QueryCache(ttl=60)
    assert [cached.ask(PDouble(5)) for _ in range(3)] == [10, 10, 10]
    assert client.handlers.calls["double-5"] == 1
    assert cached.ask(PDouble(5), cache=False) == 10
    assert client.handlers.calls["double-5"] == 2


def test_client_middleware_runs_and_its_headers_reach_the_handler(client: Client) -> None:
    seen = client.queries.ask(PContext())
    assert seen["probe"] == "seen"
    assert client.probe.seen == ["PContext"]


def test_the_handler_sees_the_callers_deadline(client: Client) -> None:
    seen = client.queries.ask(PContext(), timeout=2.0)
    assert seen["remaining"] is not None and 0 < seen["remaining"] <= 2.0
    unlimited = client.queries.ask(PContext(), timeout=None)
    assert unlimited["remaining"] is None


def test_a_slow_handler_times_out_with_the_spec_text(timed_client: Client) -> None:
    with pytest.raises(RequestTimeoutError, match="Query request timeout after 200ms"):
        timed_client.queries.ask(PSlow("late"), timeout=0.2)
    future = timed_client.queries.submit(PSlow("late"), timeout=0.2)
    with pytest.raises(RequestTimeoutError):
        future.result(5)
    results = timed_client.queries.ask_many([PSlow("a")], timeout=0.2, return_exceptions=True)
    assert isinstance(results[0], RequestTimeoutError)


def test_many_threads_share_one_client(client: Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        results = list(threads.map(lambda i: client.commands.execute(PEcho(f"t{i}")), range(40)))
    assert results == [f"T{i}" for i in range(40)]
