"""Middleware: the chain's order and unwinding, failing hooks, StopCall, logging; over NATS and in memory."""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Dict, List, Optional

import attrs
import pytest

import natsbus.cqrs
import natsbus.dispatch
from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    HandlerError,
    Kind,
    NotFoundError,
    Query,
    QueryBus,
    QueryCache,
    RetryPolicy,
    WorkerPool,
    current_request,
)
from natsbus.context import DEADLINE_HEADER, RequestContext
from natsbus.envelope import ERROR_CODE_HEADER
from natsbus.middleware import (
    ClientCall,
    ClientMiddleware,
    HandlerMiddleware,
    HandlerRequest,
    LoggingMiddleware,
    Middleware,
    StopCall,
    run_client,
    run_handler,
)
from natsbus.testing import InMemoryBus


@attrs.frozen
class MwAdd(Command[int]):
    a: int
    b: int


@attrs.frozen
class MwLookup(Query[str]):
    key: str


@attrs.frozen
class MwFlaky(Command[str]):
    text: str


class Recorder(Middleware[Any]):
    """Appends ``name.hook`` to a shared log; raises what it is told to, where it is told to."""

    def __init__(self, name: str, log: List[str], raises: Optional[Dict[str, BaseException]] = None) -> None:
        self.name = name
        self.log = log
        self.raises = raises or {}

    def _maybe_raise(self, hook: str) -> None:
        error = self.raises.get(hook)
        if error is not None:
            raise error

    def before(self, call: Any) -> None:
        self.log.append(f"{self.name}.before")
        self._maybe_raise("before")

    def after(self, call: Any, result: Any) -> None:
        self.log.append(f"{self.name}.after({result!r})")
        self._maybe_raise("after")

    def on_error(self, call: Any, error: BaseException) -> None:
        self.log.append(f"{self.name}.on_error({type(error).__name__}: {error})")
        self._maybe_raise("on_error")


def client_call() -> ClientCall:
    return ClientCall(MwAdd(1, 2), "MwAdd", Kind.COMMAND, "commands.MwAdd", "cmd-1", "tests", 5.0)


def handler_request() -> HandlerRequest:
    context = RequestContext("commands.MwAdd", Kind.COMMAND, "cmd-1", "tests", {}, None)
    return HandlerRequest(context, MwAdd(1, 2), "MwAdd", "add")


class Halt(BaseException):
    """Not an Exception, like KeyboardInterrupt, but harmless to pytest."""


# -- the chain, pure --------------------------------------------------------------------


def test_before_hooks_run_in_order_and_after_hooks_unwind_in_reverse() -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log), Recorder("c", log)]

    def send() -> int:
        log.append("send")
        return 3

    assert run_client(chain, client_call(), send) == 3
    assert log == ["a.before", "b.before", "c.before", "send", "c.after(3)", "b.after(3)", "a.after(3)"]


def test_on_error_unwinds_in_reverse_and_the_caller_gets_the_very_error() -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log)]
    error = ValueError("no")

    def send() -> int:
        raise error

    with pytest.raises(ValueError) as raised:
        run_client(chain, client_call(), send)
    assert raised.value is error
    assert log == ["a.before", "b.before", "b.on_error(ValueError: no)", "a.on_error(ValueError: no)"]


def test_after_gets_what_the_result_function_picks() -> None:
    log: List[str] = []
    assert run_client([Recorder("a", log)], client_call(), lambda: ("value", "reply"), lambda pair: pair[0]) == (
        "value",
        "reply",
    )
    assert log == ["a.before", "a.after('value')"]


def test_a_failing_before_is_logged_not_unwound_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log, {"before": RuntimeError("b broke")}), Recorder("c", log)]
    with caplog.at_level(logging.ERROR, logger="natsbus.middleware"):
        assert run_client(chain, client_call(), lambda: 3) == 3
    # b's before did not complete, so b is not unwound.
    assert log == ["a.before", "b.before", "c.before", "c.after(3)", "a.after(3)"]
    [record] = caplog.records
    assert record.name == "natsbus.middleware"
    assert record.getMessage() == "middleware Recorder failed in before() for commands.MwAdd cmd-1; the call goes on"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


def test_failing_after_and_on_error_hooks_are_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log, {"after": KeyError("x"), "on_error": KeyError("y")})]
    with caplog.at_level(logging.ERROR, logger="natsbus.middleware"):
        assert run_client(chain, client_call(), lambda: 3) == 3
        with pytest.raises(ZeroDivisionError):
            run_client(chain, client_call(), lambda: 1 // 0)
    assert log == [
        "a.before",
        "b.before",
        "b.after(3)",
        "a.after(3)",
        "a.before",
        "b.before",
        "b.on_error(ZeroDivisionError: integer division or modulo by zero)",
        "a.on_error(ZeroDivisionError: integer division or modulo by zero)",
    ]
    assert [re.search(r"in (\w+\(\))", r.getMessage()).group(1) for r in caplog.records] == ["after()", "on_error()"]  # type: ignore[union-attr]


def test_stop_call_in_before_skips_the_call_and_unwinds_only_the_entered_middlewares() -> None:
    log: List[str] = []
    error = ConflictError("tenant is read-only")
    chain = [Recorder("a", log), Recorder("b", log, {"before": StopCall(error)}), Recorder("c", log)]

    def send() -> int:
        log.append("send")
        return 3

    with pytest.raises(ConflictError) as raised:
        run_client(chain, client_call(), send)
    assert raised.value is error
    assert raised.value.__context__ is None  # not "during handling of StopCall"
    assert log == ["a.before", "b.before", "a.on_error(ConflictError: tenant is read-only)"]


def test_stop_call_in_after_fails_the_call_for_the_outer_middlewares() -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log, {"after": StopCall(ValueError("bad result"))})]
    with pytest.raises(ValueError, match="bad result"):
        run_client(chain, client_call(), lambda: 3)
    assert log == ["a.before", "b.before", "b.after(3)", "a.on_error(ValueError: bad result)"]


def test_stop_call_in_on_error_replaces_the_error() -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log, {"on_error": StopCall(LookupError("mapped"))})]
    with pytest.raises(LookupError, match="mapped") as raised:
        run_client(chain, client_call(), lambda: 1 // 0)
    assert isinstance(raised.value.__cause__, ZeroDivisionError)
    assert log[-1] == "a.on_error(LookupError: mapped)"


def test_a_base_exception_in_a_hook_is_never_swallowed() -> None:
    log: List[str] = []
    chain = [Recorder("a", log), Recorder("b", log, {"before": Halt("stop now")})]
    with pytest.raises(Halt):
        run_client(chain, client_call(), lambda: 3)
    assert log == ["a.before", "b.before", "a.on_error(Halt: stop now)"]


def test_a_service_error_in_handler_middleware_stops_the_handler() -> None:
    log: List[str] = []
    error = NotFoundError("no such tenant")
    chain = [Recorder("a", log), Recorder("b", log, {"before": error})]
    with pytest.raises(NotFoundError) as raised:
        run_handler(chain, handler_request(), lambda message: log.append("handler"))
    assert raised.value is error
    assert log == ["a.before", "b.before", "a.on_error(NotFoundError: no such tenant)"]


def test_a_stop_call_with_a_plain_error_becomes_a_handler_error_on_the_handler_side() -> None:
    chain = [Recorder("a", [], {"before": StopCall(PermissionError("not allowed"))})]
    with pytest.raises(HandlerError) as raised:
        run_handler(chain, handler_request(), lambda message: None)
    assert raised.value.message == "not allowed"
    assert raised.value.subject == "commands.MwAdd"


def test_a_plain_exception_in_handler_middleware_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    chain = [Recorder("a", [], {"before": ValueError("oops")})]
    with caplog.at_level(logging.ERROR, logger="natsbus.middleware"):
        assert run_handler(chain, handler_request(), lambda message: message.a + message.b) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "middleware Recorder failed in before() for commands.MwAdd cmd-1; the call goes on"
    ]


def test_handler_middleware_may_replace_the_message() -> None:
    class Double(HandlerMiddleware):
        def before(self, request: HandlerRequest) -> None:
            request.message = attrs.evolve(request.message, a=request.message.a * 2)

    assert run_handler([Double()], handler_request(), lambda message: message.a + message.b) == 4


# -- over NATS ------------------------------------------------------------------------------


class Capture(Middleware[Any]):
    """Records what each hook saw, and optionally adds a header."""

    def __init__(self, header: Optional[Dict[str, str]] = None) -> None:
        self.header = header or {}
        self.seen: List[Dict[str, Any]] = []
        self.results: List[Any] = []
        self.errors: List[BaseException] = []
        self.threads: List[str] = []

    def before(self, call: Any) -> None:
        self.threads.append(threading.current_thread().name)
        if isinstance(call, ClientCall):
            call.headers.update(self.header)
        self.seen.append(
            {
                "message": call.message,
                "message_type": call.message_type,
                "kind": call.kind,
                "subject": call.subject,
                "message_id": call.message_id,
                "service_id": call.service_id,
                "headers": dict(call.headers),
            }
        )

    def after(self, call: Any, result: Any) -> None:
        self.results.append(result)

    def on_error(self, call: Any, error: BaseException) -> None:
        self.errors.append(error)


def test_client_and_handler_middleware_see_the_same_call_over_nats(bus: Bus) -> None:
    client_side = Capture({"x-tenant": "t1"})
    handler_side = Capture()
    seen_headers: List[Dict[str, str]] = []

    def add(cmd: MwAdd) -> int:
        ctx = current_request()
        assert ctx is not None
        seen_headers.append(dict(ctx.headers))
        return cmd.a + cmd.b

    with WorkerPool(bus, "mw-calc", handlers=[add], middleware=[handler_side]):
        commands = CommandBus(bus, service_id="web", middleware=[client_side])
        assert commands.execute(MwAdd(2, 3)) == 5

    [client] = client_side.seen
    [handler] = handler_side.seen
    assert {
        "message": MwAdd(2, 3),
        "message_type": "MwAdd",
        "kind": Kind.COMMAND,
        "subject": "commands.MwAdd",
        "service_id": "web",
        "headers": {"x-tenant": "t1"},
    } == {k: v for k, v in client.items() if k != "message_id"}
    assert client["message_id"].startswith("cmd-")
    assert client["message_id"] == handler["message_id"]
    assert ("MwAdd", "commands.MwAdd", "web", MwAdd(2, 3)) == (
        handler["message_type"],
        handler["subject"],
        handler["service_id"],
        handler["message"],
    )
    # The header a client middleware added arrived, next to natsbus's own deadline header.
    assert seen_headers[0] == {"x-tenant": "t1", DEADLINE_HEADER: "5000"}
    assert seen_headers[0] == handler["headers"]
    assert [5] == client_side.results == handler_side.results
    # Client hooks on the calling thread, handler hooks on a worker thread.
    assert [threading.current_thread().name] == client_side.threads
    assert handler_side.threads[0].startswith("natsbus-worker-mw-calc")


def test_middleware_headers_never_change_the_shared_deadline_headers(bus: Bus) -> None:
    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    with WorkerPool(bus, "mw-calc", handlers=[add]):
        commands = CommandBus(bus, middleware=[Capture({"x-tenant": "t1"})])
        shared = commands._headers(5.0)
        assert commands.execute(MwAdd(1, 2)) == 3
        assert commands.execute(MwAdd(1, 2)) == 3
        assert shared == {DEADLINE_HEADER: "5000"}
        assert shared is commands._headers(5.0)


def test_a_failing_client_middleware_is_logged_and_the_call_succeeds(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    log: List[str] = []
    with WorkerPool(bus, "mw-calc", handlers=[add]), caplog.at_level(logging.ERROR, logger="natsbus.middleware"):
        commands = CommandBus(bus, middleware=[Recorder("broken", log, {"before": RuntimeError("boom")})])
        assert commands.execute(MwAdd(3, 4)) == 7
    assert log == ["broken.before"]
    [record] = [r for r in caplog.records if r.name == "natsbus.middleware"]
    assert record.getMessage().startswith("middleware Recorder failed in before() for commands.MwAdd cmd-")
    assert record.exc_info is not None and str(record.exc_info[1]) == "boom"


def test_a_failing_handler_middleware_is_logged_and_the_handler_still_answers(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    broken = Recorder("broken", [], {"before": RuntimeError("boom"), "after": RuntimeError("boom again")})
    with WorkerPool(bus, "mw-calc", handlers=[add], middleware=[broken]) as pool:
        with caplog.at_level(logging.ERROR, logger="natsbus.middleware"):
            assert CommandBus(bus).execute(MwAdd(3, 4)) == 7
        stats = pool.stats().endpoints[0]
    # before failed, so after is not called (and its failure not logged).
    assert [
        re.search(r"in (\w+\(\))", r.getMessage()).group(1)  # type: ignore[union-attr]
        for r in caplog.records
        if r.name == "natsbus.middleware"
    ] == ["before()"]
    assert (stats.num_requests, stats.num_errors) == (1, 0)


def test_stop_call_on_the_client_raises_its_error_and_sends_nothing(bus: Bus) -> None:
    handled: List[MwAdd] = []

    def add(cmd: MwAdd) -> int:
        handled.append(cmd)
        return cmd.a + cmd.b

    class ReadOnly(ClientMiddleware):
        def before(self, call: ClientCall) -> None:
            raise StopCall(ConflictError("the tenant is read-only"))

    # One worker thread and one connection: had the stopped request been
    # sent, it would have been handled before the next one.
    with WorkerPool(bus, "mw-calc", handlers=[add], max_workers=1) as pool:
        with pytest.raises(ConflictError, match="the tenant is read-only"):
            CommandBus(bus, middleware=[ReadOnly()]).execute(MwAdd(1, 1))
        assert CommandBus(bus).execute(MwAdd(2, 2)) == 4
        assert [MwAdd(2, 2)] == handled
        assert pool.stats().endpoints[0].num_requests == 1


def test_stop_call_in_handler_middleware_answers_an_error_envelope_with_its_text_and_code(bus: Bus) -> None:
    handled: List[MwAdd] = []

    def add(cmd: MwAdd) -> int:
        handled.append(cmd)
        return cmd.a + cmd.b

    class TenantCheck(HandlerMiddleware):
        def before(self, request: HandlerRequest) -> None:
            if request.headers.get("x-tenant") != "t1":
                raise StopCall(NotFoundError(f"Tenant not found: {request.headers.get('x-tenant')}"))

    with WorkerPool(bus, "mw-calc", handlers=[add], middleware=[TenantCheck()]) as pool:
        with pytest.raises(NotFoundError) as raised:
            CommandBus(bus, middleware=[Capture({"x-tenant": "t9"})]).execute(MwAdd(1, 1))
        assert raised.value.message == "Tenant not found: t9"
        assert raised.value.code == 404
        assert raised.value.envelope is not None and raised.value.envelope.success is False

        body = json.dumps(
            {
                "command_type": "MwAdd",
                "command_id": "cmd-raw-1",
                "service_id": "raw",
                "timestamp": "2025-01-01T00:00:00Z",
                "payload": {"a": 1, "b": 1},
            }
        ).encode()
        reply = bus.request("commands.MwAdd", body, headers={"x-tenant": "t0"})
        assert (reply.headers or {}).get(ERROR_CODE_HEADER) == "404"
        envelope = json.loads(reply.data)
        assert (
            envelope["success"],
            envelope["command_id"],
            envelope["error"],
        ) == (False, "cmd-raw-1", "Tenant not found: t0")

        assert CommandBus(bus, middleware=[Capture({"x-tenant": "t1"})]).execute(MwAdd(1, 1)) == 2
        assert [MwAdd(1, 1)] == handled
        stats = pool.stats().endpoints[0]
        assert (stats.num_requests, stats.num_errors, stats.last_error) == (3, 2, "Tenant not found: t0")


def test_a_service_error_raised_in_handler_middleware_stops_the_call(bus: Bus) -> None:
    class Deny(HandlerMiddleware):
        def before(self, request: HandlerRequest) -> None:
            raise ConflictError("MwAdd is switched off")

    def add(cmd: MwAdd) -> int:
        raise AssertionError("the handler must not run")

    pool = WorkerPool(bus, "mw-calc", handlers=[add], middleware=[Deny()])
    with pool, pytest.raises(ConflictError, match="MwAdd is switched off") as raised:
        CommandBus(bus).execute(MwAdd(1, 1))
    assert raised.value.code == 409


def test_a_stop_call_with_a_plain_error_answers_a_handler_error(bus: Bus) -> None:
    class Deny(HandlerMiddleware):
        def before(self, request: HandlerRequest) -> None:
            raise StopCall(PermissionError("caller may not add"))

    def add(cmd: MwAdd) -> int:
        raise AssertionError("the handler must not run")

    with WorkerPool(bus, "mw-calc", handlers=[add], middleware=[Deny()]), pytest.raises(HandlerError) as raised:
        CommandBus(bus).execute(MwAdd(1, 1))
    assert (raised.value.message, raised.value.code) == ("caller may not add", 500)


def test_handler_middleware_sees_a_failing_handler_and_the_caller_gets_its_error(bus: Bus) -> None:
    capture = Capture()

    def lookup(query: MwLookup) -> str:
        raise NotFoundError(f"no key {query.key}")

    pool = WorkerPool(bus, "mw-lookup", handlers=[lookup], middleware=[capture])
    with pool, pytest.raises(NotFoundError, match="no key k1"):
        QueryBus(bus).ask(MwLookup("k1"))
    [error] = capture.errors
    assert isinstance(error, NotFoundError) and error.message == "no key k1"


def test_retries_run_inside_one_client_chain(bus: Bus) -> None:
    attempts: List[str] = []

    def flaky(cmd: MwFlaky) -> str:
        attempts.append(cmd.text)
        if len(attempts) == 1:
            raise BusyError("try again")
        return cmd.text.upper()

    client_log: List[str] = []
    handler_log: List[str] = []
    with WorkerPool(bus, "mw-flaky", handlers=[flaky], middleware=[Recorder("h", handler_log)]):
        commands = CommandBus(
            bus, retry=RetryPolicy(attempts=3, backoff=0, jitter=0), middleware=[Recorder("c", client_log)]
        )
        assert commands.execute(MwFlaky("hi")) == "HI"
    assert client_log == ["c.before", "c.after('HI')"]
    assert handler_log == ["h.before", "h.on_error(BusyError: try again)", "h.before", "h.after('HI')"]


def test_query_middleware_runs_on_a_cache_miss_not_on_a_hit(bus: Bus) -> None:
    def lookup(query: MwLookup) -> str:
        return f"value of {query.key}"

    log: List[str] = []
    with WorkerPool(bus, "mw-lookup", handlers=[lookup]):
        queries = QueryBus(bus, cache=QueryCache(ttl=60), middleware=[Recorder("q", log)])
        assert queries.ask(MwLookup("k")) == "value of k"
        assert queries.ask(MwLookup("k")) == "value of k"
        assert queries.ask(MwLookup("k"), cache=False) == "value of k"
    assert log == ["q.before", "q.after('value of k')", "q.before", "q.after('value of k')"]


def test_with_timeout_keeps_the_middleware(bus: Bus) -> None:
    chain = [Capture()]
    assert tuple(chain) == CommandBus(bus, middleware=chain).with_timeout(1.0).middleware
    assert tuple(chain) == QueryBus(bus, middleware=chain).with_timeout(1.0).middleware


def test_without_middleware_the_chain_is_never_entered(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the middleware chain ran without middleware")

    monkeypatch.setattr(natsbus.cqrs, "run_client", forbidden)
    monkeypatch.setattr(natsbus.dispatch, "run_handler", forbidden)

    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    def lookup(query: MwLookup) -> str:
        return query.key

    with WorkerPool(bus, "mw-plain", handlers=[add, lookup]) as pool:
        assert pool.dispatcher.middleware == ()
        commands = CommandBus(bus)
        assert commands.middleware == ()
        assert commands.execute(MwAdd(1, 2)) == 3
        assert QueryBus(bus).ask(MwLookup("k")) == "k"
        assert QueryBus(bus, cache=QueryCache()).ask(MwLookup("k")) == "k"


# -- LoggingMiddleware ----------------------------------------------------------------------

_MS = r"\d+\.\d\dms"


def test_logging_middleware_logs_one_line_per_call_on_each_side(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    def lookup(query: MwLookup) -> str:
        raise NotFoundError(f"no key {query.key}")

    logging_middleware = LoggingMiddleware()
    pool = WorkerPool(bus, "mw-logged", handlers=[add, lookup], middleware=[logging_middleware])
    with pool, caplog.at_level(logging.INFO, logger="natsbus.requests"):
        assert CommandBus(bus, service_id="web", middleware=[logging_middleware]).execute(MwAdd(1, 2)) == 3
        with pytest.raises(NotFoundError):
            QueryBus(bus, service_id="web", middleware=[logging_middleware]).ask(MwLookup("k7"))

    records = [r for r in caplog.records if r.name == "natsbus.requests"]
    assert len(records) == 4
    handled_ok, executed, handled_error, asked = records  # each handler finishes before its caller
    command_id = executed.natsbus_message_id  # type: ignore[attr-defined]
    query_id = asked.natsbus_message_id  # type: ignore[attr-defined]
    assert re.fullmatch(rf"handle MwAdd {command_id} from web in {_MS}: ok", handled_ok.getMessage())
    assert re.fullmatch(rf"execute MwAdd {command_id} in {_MS}: ok", executed.getMessage())
    assert re.fullmatch(
        rf"handle MwLookup {query_id} from web in {_MS}: NotFoundError \(404\): no key k7", handled_error.getMessage()
    )
    assert re.fullmatch(rf"ask MwLookup {query_id} in {_MS}: NotFoundError \(404\): no key k7", asked.getMessage())
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO, logging.WARNING, logging.WARNING]
    assert (
        handled_ok.natsbus_side,  # type: ignore[attr-defined]
        handled_ok.natsbus_kind,  # type: ignore[attr-defined]
        handled_ok.natsbus_subject,  # type: ignore[attr-defined]
        handled_ok.natsbus_outcome,  # type: ignore[attr-defined]
        handled_ok.natsbus_trace_id,  # type: ignore[attr-defined]
    ) == ("handler", "command", "commands.MwAdd", "ok", "")
    assert (
        asked.natsbus_side,  # type: ignore[attr-defined]
        asked.natsbus_outcome,  # type: ignore[attr-defined]
        asked.natsbus_error,  # type: ignore[attr-defined]
    ) == ("client", "error", "NotFoundError")
    assert asked.natsbus_duration_ms >= 0  # type: ignore[attr-defined]


def test_logging_middleware_level_and_logger_are_configurable(caplog: pytest.LogCaptureFixture) -> None:
    quiet = LoggingMiddleware(logging.DEBUG, error_level=logging.ERROR, logger="myapp.bus")

    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    def boom(cmd: MwFlaky) -> str:
        raise RuntimeError("disk full")

    with InMemoryBus([add, boom], client_middleware=[quiet]) as memory:
        with caplog.at_level(logging.INFO, logger="myapp.bus"):
            assert memory.commands.execute(MwAdd(1, 2)) == 3  # DEBUG: not shown at INFO
        with caplog.at_level(logging.DEBUG, logger="myapp.bus"):
            assert memory.commands.execute(MwAdd(1, 2)) == 3
            with pytest.raises(HandlerError):
                memory.commands.execute(MwFlaky("x"))
    records = [r for r in caplog.records if r.name == "myapp.bus"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.ERROR]
    assert records[1].getMessage().endswith(": HandlerError (500): disk full")


# -- the in-memory bus ------------------------------------------------------------------------


def test_in_memory_bus_runs_client_and_handler_middleware_around_each_other() -> None:
    log: List[str] = []

    def add(cmd: MwAdd) -> int:
        log.append("handler")
        return cmd.a + cmd.b

    memory = InMemoryBus(
        [add],
        client_middleware=[Recorder("c1", log), Recorder("c2", log)],
        handler_middleware=[Recorder("h1", log), Recorder("h2", log)],
    )
    assert memory.commands.execute(MwAdd(1, 2)) == 3
    assert log == [
        "c1.before",
        "c2.before",
        "h1.before",
        "h2.before",
        "handler",
        "h2.after(3)",
        "h1.after(3)",
        "c2.after(3)",
        "c1.after(3)",
    ]


def test_in_memory_bus_answers_a_handler_stop_with_the_error_and_passes_headers() -> None:
    class TenantCheck(HandlerMiddleware):
        def before(self, request: HandlerRequest) -> None:
            if request.headers.get("x-tenant") != "t1":
                raise StopCall(NotFoundError("Tenant not found"))

    def lookup(query: MwLookup) -> str:
        return query.key

    allowed = InMemoryBus([lookup], client_middleware=[Capture({"x-tenant": "t1"})], handler_middleware=[TenantCheck()])
    assert allowed.queries.ask(MwLookup("k")) == "k"
    assert allowed.queries.with_timeout(1.0).ask(MwLookup("k")) == "k"
    denied = InMemoryBus([lookup], handler_middleware=[TenantCheck()], eager=False)
    with denied, pytest.raises(NotFoundError, match="Tenant not found"):
        denied.queries.ask(MwLookup("k"))


def test_in_memory_stop_call_on_the_client_never_reaches_the_handler() -> None:
    class Stop(ClientMiddleware):
        def before(self, call: ClientCall) -> None:
            raise StopCall(ConflictError("stopped"))

    handled: List[MwFlaky] = []

    def flaky(cmd: MwFlaky) -> str:
        handled.append(cmd)
        return cmd.text

    memory = InMemoryBus([flaky], client_middleware=[Stop()])
    with pytest.raises(ConflictError, match="stopped"):
        memory.commands.execute(MwFlaky("x"))
    assert [MwFlaky("x")] == memory.sent  # given to execute(), as documented
    assert handled == []
    assert memory.dispatcher.routes[0].stats.num_requests == 0


def test_in_memory_bus_from_a_pool_runs_the_pools_handler_middleware() -> None:
    log: List[str] = []
    pool = WorkerPool(None, "mw-memory", middleware=[Recorder("h", log)])

    @pool.register
    def add(cmd: MwAdd) -> int:
        return cmd.a + cmd.b

    assert InMemoryBus.from_pool(pool).commands.execute(MwAdd(1, 2)) == 3
    assert log == ["h.before", "h.after(3)"]
    with pytest.raises(ConfigError, match="handler_middleware"):
        InMemoryBus(dispatcher=pool.dispatcher, handler_middleware=[Recorder("x", log)])


def test_in_memory_request_passes_headers_to_the_handler() -> None:
    seen: List[Dict[str, str]] = []

    def add(cmd: MwAdd) -> int:
        ctx = current_request()
        assert ctx is not None
        seen.append(dict(ctx.headers))
        return cmd.a + cmd.b

    memory = InMemoryBus([add])
    body = json.dumps(
        {
            "command_type": "MwAdd",
            "command_id": "cmd-1",
            "service_id": "raw",
            "timestamp": "2025-01-01T00:00:00Z",
            "payload": {"a": 1, "b": 2},
        }
    ).encode()
    reply = memory.request("commands.MwAdd", body, headers={"x-tenant": "t1"})
    assert json.loads(reply.data)["payload"] == 3
    assert seen == [{"x-tenant": "t1"}]
