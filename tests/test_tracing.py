"""Trace context across the bus: W3C traceparent parsing, propagation over NATS, OpenTelemetry spans."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from natsbus import Bus, Command, CommandBus, Kind, NotFoundError, Query, QueryBus, TraceContextError, WorkerPool
from natsbus.context import RequestContext
from natsbus.middleware import (
    TRACEPARENT_HEADER,
    TRACESTATE_HEADER,
    ClientCall,
    ClientMiddleware,
    HandlerRequest,
    OpenTelemetryMiddleware,
    TraceContext,
    TraceContextMiddleware,
    current_trace,
    run_handler,
    use_trace,
)
from natsbus.testing import InMemoryBus

SPEC_EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


@attrs.frozen
class TrEcho(Command[Dict[str, Any]]):
    text: str


@attrs.frozen
class TrOuter(Command[Dict[str, Any]]):
    text: str


@attrs.frozen
class TrMissing(Query[str]):
    key: str


class SentHeaders(ClientMiddleware):
    """Put after the tracing middleware: records the headers each request goes out with."""

    def __init__(self) -> None:
        self.sent: List[Dict[str, str]] = []

    def before(self, call: ClientCall) -> None:
        self.sent.append(dict(call.headers))


def handler_request(headers: Dict[str, str]) -> HandlerRequest:
    context = RequestContext("commands.TrEcho", Kind.COMMAND, "cmd-1", "tests", headers, None)
    return HandlerRequest(context, TrEcho("x"), "TrEcho", "echo")


def seen_by_handler(text: str) -> Dict[str, Any]:
    """What a handler knows of its trace, as a reply."""
    trace_context = current_trace()
    otel_span = trace.get_current_span().get_span_context()
    return {
        "text": text,
        "trace_id": trace_context.trace_id if trace_context else None,
        "span_id": trace_context.span_id if trace_context else None,
        "parent_id": trace_context.parent_id if trace_context else None,
        "otel_trace_id": f"{otel_span.trace_id:032x}" if otel_span.is_valid else None,
        "otel_span_id": f"{otel_span.span_id:016x}" if otel_span.is_valid else None,
    }


# -- traceparent, per the W3C spec ---------------------------------------------------------


def test_parse_reads_the_spec_example() -> None:
    parsed = TraceContext.parse(SPEC_EXAMPLE, "congo=t61rcWkgMzE")
    assert (parsed.trace_id, parsed.span_id, parsed.flags, parsed.sampled) == (TRACE_ID, SPAN_ID, 1, True)
    assert parsed.tracestate == "congo=t61rcWkgMzE"
    assert parsed.traceparent == SPEC_EXAMPLE
    assert TraceContext.parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").sampled is False


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is 0 characters; it needs 55"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "it needs 55"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", "it needs 55"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff is invalid"),
        ("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version '0g' is not 2 lowercase hex"),
        ("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version '0A' is not 2 lowercase hex"),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "trace_id must be 32 lowercase hex digits"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01", "trace_id must be 32 lowercase hex digits"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "trace_id must not be all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "span_id must not be all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01", "span_id must be 16 lowercase hex digits"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", "flags '0x' are not 2 lowercase hex digits"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1F", "flags '1F' are not 2 lowercase hex digits"),
        ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "expected version-traceid-parentid-flags"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", "expected version-traceid-parentid-flags"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "version 00 must be exactly 55"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011", "version 00 must be exactly 55"),
        ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "version cc must be exactly 55"),
    ],
)
def test_parse_rejects_malformed_traceparents(value: str, problem: str) -> None:
    with pytest.raises(TraceContextError) as raised:
        TraceContext.parse(value)
    assert problem in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert TraceContext.from_headers({TRACEPARENT_HEADER: value}) is None


def test_parse_accepts_a_later_version_with_more_fields_and_strips_blanks() -> None:
    later = TraceContext.parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")
    assert (later.trace_id, later.span_id, later.flags) == (TRACE_ID, SPAN_ID, 1)
    assert later.traceparent == SPEC_EXAMPLE  # passed on as the version we know
    assert TraceContext.parse(f" \t{SPEC_EXAMPLE} ").traceparent == SPEC_EXAMPLE


def test_from_headers_finds_any_case_and_ignores_what_is_missing() -> None:
    found = TraceContext.from_headers({"Traceparent": SPEC_EXAMPLE, "TraceState": "a=1"})
    assert found is not None and (found.trace_id, found.tracestate) == (TRACE_ID, "a=1")
    assert TraceContext.from_headers({}) is None
    assert TraceContext.from_headers(None) is None
    assert TraceContext.from_headers({TRACESTATE_HEADER: "a=1"}) is None


def test_new_and_child_make_valid_ids_in_the_right_trace() -> None:
    root = TraceContext.new()
    assert TraceContext.parse(root.traceparent) == attrs.evolve(root, parent_id=None)
    assert root.sampled and root.parent_id is None
    assert TraceContext.new(sampled=False).traceparent.endswith("-00")
    child = root.child()
    assert (child.trace_id, child.parent_id, child.flags) == (root.trace_id, root.span_id, root.flags)
    assert child.span_id != root.span_id
    assert len({TraceContext.new().trace_id for _ in range(100)}) == 100


def test_a_trace_context_with_bad_fields_cannot_be_built() -> None:
    with pytest.raises(TraceContextError, match="span_id must be 16 lowercase hex digits"):
        TraceContext(TRACE_ID, "xyz")
    with pytest.raises(TraceContextError, match=r"flags must be 0\.\.255"):
        TraceContext(TRACE_ID, SPAN_ID, 256)


def test_use_trace_continues_a_header_value_and_ignores_an_invalid_one() -> None:
    assert current_trace() is None
    with use_trace(SPEC_EXAMPLE, "a=1") as active:
        assert active is current_trace()
        assert active is not None
        assert (active.trace_id, active.parent_id, active.tracestate) == (TRACE_ID, SPAN_ID, "a=1")
    assert current_trace() is None
    with use_trace("00-garbage") as active:
        assert active is None and current_trace() is None
    given = TraceContext.new()
    with use_trace(given):
        assert current_trace() is given


# -- the middleware, handler side, without a server ----------------------------------------


def test_handler_side_continues_a_valid_trace_and_restores_the_previous_one() -> None:
    request = handler_request({TRACEPARENT_HEADER: SPEC_EXAMPLE})
    seen = run_handler([TraceContextMiddleware()], request, lambda message: current_trace())
    assert seen is not None
    assert (seen.trace_id, seen.parent_id) == (TRACE_ID, SPAN_ID)
    assert seen.span_id not in (SPAN_ID, "0" * 16)
    assert current_trace() is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TRACEPARENT_HEADER: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
        {TRACEPARENT_HEADER: "not a traceparent", TRACESTATE_HEADER: "a=1"},
    ],
)
def test_handler_side_starts_a_new_trace_without_a_valid_header(headers: Dict[str, str]) -> None:
    request = handler_request(headers)
    seen = run_handler([TraceContextMiddleware()], request, lambda message: current_trace())
    assert seen is not None
    assert seen.parent_id is None and seen.tracestate == ""
    assert seen.trace_id != "0" * 32


def test_client_side_leaves_a_traceparent_another_middleware_set() -> None:
    call = ClientCall(TrEcho("x"), "TrEcho", Kind.COMMAND, "commands.TrEcho", "cmd-1")
    call.headers[TRACEPARENT_HEADER] = SPEC_EXAMPLE
    TraceContextMiddleware().before(call)
    assert call.headers == {TRACEPARENT_HEADER: SPEC_EXAMPLE}


# -- over NATS --------------------------------------------------------------------------------


@pytest.fixture()
def traced_pool(bus: Bus) -> Iterator[WorkerPool]:
    """Echoes what the handler knows of its trace; TrOuter makes a nested traced call to TrEcho."""
    inner_sent = SentHeaders()
    pool = WorkerPool(bus, "tr-service", max_workers=4, middleware=[TraceContextMiddleware()])
    inner = CommandBus(bus, service_id="tr-service", middleware=[TraceContextMiddleware(), inner_sent])

    @pool.register
    def echo(cmd: TrEcho) -> Dict[str, Any]:
        return seen_by_handler(cmd.text)

    @pool.register
    def outer(cmd: TrOuter) -> Dict[str, Any]:
        mine = seen_by_handler(cmd.text)
        nested = inner.execute(TrEcho(f"nested {cmd.text}"))
        return {"outer": mine, "nested": nested, "nested_header": inner_sent.sent[-1][TRACEPARENT_HEADER]}

    with pool:
        yield pool


def test_a_trace_id_crosses_from_client_to_handler(bus: Bus, traced_pool: WorkerPool) -> None:
    sent = SentHeaders()
    commands = CommandBus(bus, service_id="web", middleware=[TraceContextMiddleware(), sent])

    with use_trace(SPEC_EXAMPLE, "congo=t61rcWkgMzE"):
        seen = commands.execute(TrEcho("hi"))
    header = TraceContext.parse(sent.sent[0][TRACEPARENT_HEADER])
    assert header.trace_id == TRACE_ID  # the caller's trace continues
    assert header.span_id != SPAN_ID  # in a span of its own
    assert sent.sent[0][TRACESTATE_HEADER] == "congo=t61rcWkgMzE"
    assert seen["trace_id"] == TRACE_ID
    assert seen["parent_id"] == header.span_id  # the handler's span is the client call's child
    assert seen["span_id"] not in (header.span_id, SPAN_ID)


def test_a_call_without_a_current_trace_starts_one_the_handler_sees(bus: Bus, traced_pool: WorkerPool) -> None:
    sent = SentHeaders()
    commands = CommandBus(bus, middleware=[TraceContextMiddleware(), sent])
    first = commands.execute(TrEcho("one"))
    second = commands.execute(TrEcho("two"))
    headers = [TraceContext.parse(h[TRACEPARENT_HEADER]) for h in sent.sent]
    assert [first["trace_id"], second["trace_id"]] == [h.trace_id for h in headers]
    assert first["trace_id"] != second["trace_id"]  # two root calls, two traces
    assert current_trace() is None


def test_a_handler_without_trace_middleware_on_the_caller_starts_its_own_trace(
    bus: Bus, traced_pool: WorkerPool
) -> None:
    seen = CommandBus(bus).execute(TrEcho("plain"))
    assert seen["trace_id"] is not None and len(seen["trace_id"]) == 32
    assert seen["parent_id"] is None


def test_a_nested_call_from_a_handler_continues_the_same_trace(bus: Bus, traced_pool: WorkerPool) -> None:
    sent = SentHeaders()
    commands = CommandBus(bus, middleware=[TraceContextMiddleware(), sent])
    with use_trace(SPEC_EXAMPLE):
        result = commands.execute(TrOuter("x"))
    outer_header = TraceContext.parse(sent.sent[0][TRACEPARENT_HEADER])
    nested_header = TraceContext.parse(result["nested_header"])
    outer, nested = result["outer"], result["nested"]
    assert outer["trace_id"] == nested["trace_id"] == nested_header.trace_id == TRACE_ID
    # The nested request has a new parent span id: neither the caller's nor the outer handler's.
    assert nested_header.span_id not in (outer_header.span_id, outer["span_id"], SPAN_ID)
    assert nested["parent_id"] == nested_header.span_id
    assert outer["parent_id"] == outer_header.span_id


def test_a_trace_crosses_the_in_memory_bus(traced_pool: WorkerPool) -> None:
    sent = SentHeaders()
    memory = InMemoryBus.from_pool(traced_pool, client_middleware=[TraceContextMiddleware(), sent])
    with use_trace(SPEC_EXAMPLE):
        seen = memory.commands.execute(TrEcho("in memory"))
        assert current_trace() is not None and current_trace().trace_id == TRACE_ID  # type: ignore[union-attr]
    assert (seen["trace_id"], seen["parent_id"]) == (TRACE_ID, TraceContext.parse(sent.sent[0]["traceparent"]).span_id)


# -- OpenTelemetry -------------------------------------------------------------------------------


@pytest.fixture()
def otel() -> Iterator[Tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        provider.shutdown()


def spans_by_name(exporter: InMemorySpanExporter) -> Dict[str, ReadableSpan]:
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    assert len(by_name) == len(spans), [span.name for span in spans]
    return by_name


def span_ids(span: ReadableSpan) -> Tuple[str, str, Optional[str]]:
    context = span.get_span_context()
    assert context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", parent


def test_otel_spans_for_a_client_call_and_its_handler_run(
    bus: Bus, otel: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = otel
    middleware = OpenTelemetryMiddleware(provider)
    pool = WorkerPool(bus, "tr-otel", middleware=[middleware])

    @pool.register
    def echo(cmd: TrEcho) -> Dict[str, Any]:
        return seen_by_handler(cmd.text)

    sent = SentHeaders()
    with pool:
        seen = CommandBus(bus, service_id="web", middleware=[middleware, sent]).execute(TrEcho("hi"))

    spans = spans_by_name(exporter)
    client, server = spans["send commands.TrEcho"], spans["process commands.TrEcho"]
    assert (client.kind, server.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    client_trace, client_span, client_parent = span_ids(client)
    server_trace, server_span, server_parent = span_ids(server)
    assert server_trace == client_trace
    assert server_parent == client_span  # the handler's span is the client span's child
    assert client_parent is None
    assert server.parent is not None and server.parent.is_remote
    # The context went through the traceparent header, and the handler ran inside its span.
    assert sent.sent[0][TRACEPARENT_HEADER].startswith(f"00-{client_trace}-{client_span}-")
    assert (seen["otel_trace_id"], seen["otel_span_id"]) == (server_trace, server_span)
    assert client.attributes is not None and server.attributes is not None
    message_id = client.attributes["messaging.message.id"]
    assert str(message_id).startswith("cmd-")
    assert dict(client.attributes) == {
        "messaging.system": "nats",
        "messaging.destination.name": "commands.TrEcho",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.message.id": message_id,
        "natsbus.kind": "command",
        "natsbus.message_type": "TrEcho",
    }
    assert dict(server.attributes) == {
        **client.attributes,
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
    }
    assert (client.status.status_code, server.status.status_code) == (StatusCode.UNSET, StatusCode.UNSET)


def test_otel_marks_a_failed_call_on_both_spans(bus: Bus, otel: Tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = otel
    middleware = OpenTelemetryMiddleware(provider)
    pool = WorkerPool(bus, "tr-otel", middleware=[middleware])

    @pool.register
    def missing(query: TrMissing) -> str:
        raise NotFoundError(f"no key {query.key}")

    with pool, pytest.raises(NotFoundError):
        QueryBus(bus, middleware=[middleware]).ask(TrMissing("k"))

    spans = spans_by_name(exporter)
    for name in ("send queries.TrMissing", "process queries.TrMissing"):
        span = spans[name]
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "NotFoundError (404): no key k"
        assert span.attributes is not None
        assert (span.attributes["error.type"], span.attributes["natsbus.error_code"]) == ("NotFoundError", 404)
        assert [event.name for event in span.events] == ["exception"]


def test_otel_nested_call_is_a_child_of_the_handler_span(
    bus: Bus, otel: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = otel
    middleware = OpenTelemetryMiddleware(provider)
    pool = WorkerPool(bus, "tr-otel", max_workers=4, middleware=[middleware])
    inner = CommandBus(bus, middleware=[middleware])

    @pool.register
    def echo(cmd: TrEcho) -> Dict[str, Any]:
        return seen_by_handler(cmd.text)

    @pool.register
    def outer(cmd: TrOuter) -> Dict[str, Any]:
        return inner.execute(TrEcho("nested"))

    tracer = provider.get_tracer("tests")
    with pool, tracer.start_as_current_span("http request") as http:
        CommandBus(bus, middleware=[middleware]).execute(TrOuter("x"))

    spans = spans_by_name(exporter)
    chain = ["http request", "send commands.TrOuter", "process commands.TrOuter"]
    chain += ["send commands.TrEcho", "process commands.TrEcho"]
    ids = [span_ids(spans[name]) for name in chain]
    assert {trace_id for trace_id, _, _ in ids} == {f"{http.get_span_context().trace_id:032x}"}
    for (_, parent_span, _), (_, _, parent_of_child) in itertools.pairwise(ids):
        assert parent_of_child == parent_span


def test_otel_handler_span_is_current_only_while_the_handler_runs(
    otel: Tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = otel
    request = handler_request({TRACEPARENT_HEADER: SPEC_EXAMPLE})
    seen = run_handler([OpenTelemetryMiddleware(provider)], request, lambda message: seen_by_handler("x"))
    [server] = exporter.get_finished_spans()
    assert (seen["otel_trace_id"], seen["otel_span_id"]) == span_ids(server)[:2]
    assert span_ids(server)[::2] == (TRACE_ID, SPAN_ID)
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached again
    assert request.extras == {}


def test_trace_context_middleware_continues_the_current_otel_span(
    bus: Bus, traced_pool: WorkerPool, otel: Tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, _ = otel
    sent = SentHeaders()
    with provider.get_tracer("tests").start_as_current_span("job") as job:
        seen = CommandBus(bus, middleware=[TraceContextMiddleware(), sent]).execute(TrEcho("x"))
    job_context = job.get_span_context()
    header = TraceContext.parse(sent.sent[0][TRACEPARENT_HEADER])
    assert seen["trace_id"] == header.trace_id == f"{job_context.trace_id:032x}"
    assert header.span_id != f"{job_context.span_id:016x}"


def test_otel_client_span_continues_a_natsbus_trace(otel: Tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = otel
    middleware = OpenTelemetryMiddleware(provider)

    def echo(cmd: TrEcho) -> Dict[str, Any]:
        return seen_by_handler(cmd.text)

    memory = InMemoryBus([echo], client_middleware=[middleware], handler_middleware=[middleware])
    with use_trace(TraceContext(TRACE_ID, SPAN_ID)):
        seen = memory.commands.execute(TrEcho("x"))
    spans = spans_by_name(exporter)
    client = span_ids(spans["send commands.TrEcho"])
    server = span_ids(spans["process commands.TrEcho"])
    assert client[0] == server[0] == seen["otel_trace_id"] == TRACE_ID
    assert (client[2], server[2]) == (SPAN_ID, client[1])


def test_otel_spans_through_the_in_memory_bus_in_threaded_mode(
    otel: Tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = otel
    middleware = OpenTelemetryMiddleware(provider)

    def echo(cmd: TrEcho) -> Dict[str, Any]:
        return seen_by_handler(cmd.text)

    with InMemoryBus([echo], eager=False, client_middleware=[middleware], handler_middleware=[middleware]) as memory:
        seen = memory.commands.execute(TrEcho("x"))
    spans = spans_by_name(exporter)
    client, server = spans["send commands.TrEcho"], spans["process commands.TrEcho"]
    assert (client.kind, server.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert span_ids(server)[2] == span_ids(client)[1]
    assert seen["otel_span_id"] == span_ids(server)[1]


# -- import cost ----------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


def test_importing_natsbus_does_not_import_opentelemetry() -> None:
    done = run_python(
        """
        import sys
        import attrs
        import natsbus, natsbus.middleware, natsbus.testing
        from natsbus.middleware import LoggingMiddleware, TraceContextMiddleware, use_trace

        @attrs.frozen
        class Ping(natsbus.Command[str]):
            text: str

        def ping(cmd: Ping) -> str:
            return cmd.text

        chain = [TraceContextMiddleware(), LoggingMiddleware()]
        memory = natsbus.testing.InMemoryBus([ping], client_middleware=chain, handler_middleware=chain)
        with use_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"):
            assert memory.commands.execute(Ping("pong")) == "pong"
        loaded = sorted(name for name in sys.modules if name.split(".")[0] == "opentelemetry")
        print(loaded)
        """
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "[]", "")


def test_otel_middleware_without_opentelemetry_says_which_extra_to_install() -> None:
    done = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed
        from natsbus.middleware import OpenTelemetryMiddleware
        try:
            OpenTelemetryMiddleware()
        except ImportError as exc:
            print(exc)
        """
    )
    assert (done.returncode, done.stdout.strip()) == (
        0,
        "OpenTelemetryMiddleware needs opentelemetry-api: pip install 'natsbus[otel]'",
    )
