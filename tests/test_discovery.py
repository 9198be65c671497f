"""A WorkerPool as a NATS micro service, and the discovery client, against a real nats-server."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any, Dict, Iterator, List

import attrs
import pytest
from micro_support import (
    NatsPyService,
    first,
    load_validators,
    nats_py_request,
    raw_gather,
    running_nats_py_service,
    schema_errors,
)
from nats.micro.service import ServiceInfo as NatsPyServiceInfo
from nats.micro.service import ServicePing as NatsPyServicePing
from nats.micro.service import ServiceStats as NatsPyServiceStats

from natsbus import (
    Bus,
    BusyError,
    Command,
    CommandBus,
    ConfigError,
    ConflictError,
    EndpointInfo,
    EnvelopeError,
    NotFoundError,
    QueryBus,
    ServicePing,
    WorkerPool,
)
from natsbus.demo import CreateUserCommand, GetUserQuery, User, UserCreated
from natsbus.discovery import control_subject, format_rfc3339, parse_rfc3339
from natsbus.schema import json_schema

# nats-py's own micro service calls datetime.utcnow(), deprecated since Python 3.12.
NATS_PY_SERVICE_WARNINGS = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

VALIDATORS = load_validators()
VERBS = ("PING", "INFO", "STATS")


@pytest.fixture()
def nats_py_service(nats_url: str) -> Iterator[NatsPyService]:
    yield from running_nats_py_service(nats_url)


def _forms(verb: str, name: str, id: str) -> List[str]:
    return [f"$SRV.{verb}", f"$SRV.{verb}.{name}", f"$SRV.{verb}.{name}.{id}"]


def _mine(url: str, subject: str, id: str) -> Dict[str, Any]:
    replies = raw_gather(url, subject, until=lambda rs: any(r.get("id") == id for r in rs))
    return first(replies, lambda r: r.get("id") == id)  # type: ignore[no-any-return]


# -- the responder ---------------------------------------------------------------


def test_pool_answers_ping_info_stats_on_all_three_subject_forms(nats_url: str, user_pool: WorkerPool) -> None:
    id = user_pool.micro.id
    identity = {"name": "user-service", "id": id, "version": "0.0.0", "metadata": {}}
    schemas = {
        "CreateUserCommand": (json_schema(CreateUserCommand), json_schema(UserCreated)),
        "GetUserQuery": (json_schema(GetUserQuery), json_schema(User)),
    }
    endpoints = [
        {
            "name": name,
            "subject": subject,
            "queue_group": "user-service",
            "metadata": {"request_schema": request, "response_schema": response},
        }
        for (name, subject), (request, response) in zip(
            [("CreateUserCommand", "commands.CreateUserCommand"), ("GetUserQuery", "queries.GetUserQuery")],
            schemas.values(),
        )
    ]
    for verb in VERBS:
        for subject in _forms(verb, "user-service", id):
            response = _mine(nats_url, subject, id)
            assert schema_errors(VALIDATORS[verb.lower()], response) == [], subject
            assert response["type"] == f"io.nats.micro.v1.{verb.lower()}_response"
            assert {k: response[k] for k in identity} == identity
            if verb == "INFO":
                assert response["description"] == ""
                for endpoint in response["endpoints"]:  # the schemas are JSON text: metadata maps str to str
                    endpoint["metadata"] = {k: json.loads(v) for k, v in endpoint["metadata"].items()}
                assert response["endpoints"] == endpoints
            if verb == "STATS":
                assert [(e["name"], e["subject"], e["queue_group"]) for e in response["endpoints"]] == [
                    (e["name"], e["subject"], e["queue_group"]) for e in endpoints
                ]


def test_version_description_and_metadata_are_reported_and_schema_valid(bus: Bus, nats_url: str) -> None:
    pool = WorkerPool(
        bus,
        service_id="catalog_v2",
        version="1.4.0-rc.1+build.5",
        description="Product catalogue",
        metadata={"region": "eu-west", "team": "shop"},
    )
    pool.register(lambda cmd: None, message_type=CreateUserCommand)
    with pool:
        for verb in VERBS:
            subject = control_subject(verb, "catalog_v2", pool.micro.id)
            response = json.loads(bus.request(subject, b"").data)
            assert schema_errors(VALIDATORS[verb.lower()], response) == [], verb
            assert response["version"] == "1.4.0-rc.1+build.5"
            assert response["metadata"] == {"region": "eu-west", "team": "shop"}
        info = json.loads(bus.request(control_subject("INFO", "catalog_v2"), b"").data)
        assert info["description"] == "Product catalogue"


def test_nats_py_reads_our_responses_with_its_own_micro_types(nats_url: str, user_pool: WorkerPool) -> None:
    id = user_pool.micro.id
    ping = NatsPyServicePing.from_dict(json.loads(nats_py_request(nats_url, f"$SRV.PING.user-service.{id}")))
    assert (ping.name, ping.id, ping.version) == ("user-service", id, "0.0.0")
    info = NatsPyServiceInfo.from_dict(json.loads(nats_py_request(nats_url, f"$SRV.INFO.user-service.{id}")))
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("CreateUserCommand", "commands.CreateUserCommand", "user-service"),
        ("GetUserQuery", "queries.GetUserQuery", "user-service"),
    ]
    assert info.description == ""
    # nats-py parses "started" with strptime("%Y-%m-%dT%H:%M:%S.%fZ"): at most six fraction digits.
    stats = NatsPyServiceStats.from_dict(json.loads(nats_py_request(nats_url, f"$SRV.STATS.user-service.{id}")))
    started = dt.datetime.fromtimestamp(user_pool.micro.started_ns / 1e9, dt.UTC).replace(tzinfo=None)
    assert abs(stats.started - started) < dt.timedelta(milliseconds=1)
    assert [(e.name, e.num_requests, e.num_errors) for e in stats.endpoints] == [
        ("CreateUserCommand", 0, 0),
        ("GetUserQuery", 0, 0),
    ]


def test_every_instance_answers_because_there_is_no_queue_group(bus: Bus, nats_url: str) -> None:
    with Bus(nats_url) as other:
        pools = [WorkerPool(b, service_id="twin", handlers=[_noop_create]) for b in (bus, other)]
        with pools[0], pools[1]:
            ids = {pool.micro.id for pool in pools}
            assert len(ids) == 2
            assert {p.id for p in bus.ping("twin", count=2, timeout=10)} == ids
            assert {i.id for i in bus.discover("twin", count=2, timeout=10)} == ids
            assert {s.id for s in bus.stats("twin", count=2, timeout=10)} == ids
            # The .<name>.<id> form reaches one instance only.
            one = pools[1].micro.id
            assert [p.id for p in bus.ping("twin", one)] == [one]


def _noop_create(cmd: CreateUserCommand) -> None:
    return None


def test_stats_move_with_traffic(bus: Bus, nats_url: str, user_pool: WorkerPool) -> None:
    id = user_pool.micro.id
    (before,) = bus.stats("user-service", id)
    assert [(e.num_requests, e.num_errors, e.processing_time) for e in before.endpoints] == [(0, 0, 0), (0, 0, 0)]

    commands, queries = CommandBus(bus), QueryBus(bus)
    created = commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    with pytest.raises(ConflictError):
        commands.execute(CreateUserCommand("Alice", "alice@example.com"))
    bad = json.loads(bus.request("commands.CreateUserCommand", b"{not json").data)
    assert bad["success"] is False
    queries.ask(GetUserQuery(created.user_id))
    with pytest.raises(NotFoundError):
        queries.ask(GetUserQuery("user-missing"))

    (after,) = bus.stats("user-service", id)
    create, get = after.endpoint("CreateUserCommand"), after.endpoint("queries.GetUserQuery")
    assert create is not None and get is not None
    assert (create.num_requests, create.num_errors) == (3, 2)
    assert create.last_error == "Invalid request format: request is not valid JSON"
    assert (get.num_requests, get.num_errors, get.last_error) == (2, 1, "User not found: user-missing")
    for endpoint in (create, get):
        assert endpoint.processing_time > 0
        assert endpoint.average_processing_time == endpoint.processing_time // endpoint.num_requests
    assert after.started == before.started
    raw = json.loads(bus.request(f"$SRV.STATS.user-service.{id}", b"").data)
    assert schema_errors(VALIDATORS["stats"], raw) == []
    assert raw["endpoints"][0]["num_requests"] == 3


@attrs.frozen
class Hold(Command[str]):
    n: int


def test_busy_refusals_count_as_error_replies(bus: Bus, nats_url: str) -> None:
    entered, release = threading.Event(), threading.Event()
    pool = WorkerPool(bus, service_id="narrow", max_workers=1, max_pending=0)

    @pool.register
    def hold(cmd: Hold) -> str:
        entered.set()
        assert release.wait(30)
        return "done"

    with pool, Bus(nats_url) as client:
        commands = CommandBus(client, timeout=30)
        results: List[str] = []
        first_call = threading.Thread(target=lambda: results.append(commands.execute(Hold(1))))
        first_call.start()
        try:
            assert entered.wait(30)
            with pytest.raises(BusyError):
                commands.execute(Hold(2))
        finally:
            release.set()
            first_call.join(30)
        assert results == ["done"]
        endpoint = pool.stats().endpoint("Hold")
        assert endpoint is not None
        assert (endpoint.num_requests, endpoint.num_errors) == (2, 1)
        assert endpoint.last_error.startswith("Service busy: narrow has 1 handlers running")


def test_a_stopped_pool_no_longer_answers(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="leaving", handlers=[_noop_create]).start()
    id = pool.micro.id
    try:
        assert [p.id for p in bus.ping("leaving", id)] == [id]
    finally:
        pool.stop(drain_timeout=5)
    assert bus.ping("leaving", id) == []
    assert id not in {p.id for p in bus.ping()}


def test_each_pool_gets_a_fresh_instance_id(bus: Bus) -> None:
    ids = {WorkerPool(bus, service_id="x").micro.id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 and i.isalnum() for i in ids)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"service_id": "user.service"}, "cannot name a NATS micro service"),
        ({"service_id": "user service"}, "cannot name a NATS micro service"),
        ({"version": "1.0"}, "not a SemVer version"),
        ({"version": "v1.0.0"}, "not a SemVer version"),
        ({"metadata": {"retries": 3}}, "metadata must map strings to strings"),
    ],
)
def test_pool_refuses_what_the_micro_protocol_forbids(bus: Bus, kwargs: Dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        WorkerPool(bus, **kwargs)


# -- the client ------------------------------------------------------------------


def test_discover_and_stats_return_attrs_objects(bus: Bus, user_pool: WorkerPool) -> None:
    id = user_pool.micro.id
    (info,) = bus.discover("user-service", id)
    assert (info.name, info.id, info.version, info.description) == ("user-service", id, "0.0.0", "")
    assert [(e.name, e.subject, e.queue_group) for e in info.endpoints] == [
        ("CreateUserCommand", "commands.CreateUserCommand", "user-service"),
        ("GetUserQuery", "queries.GetUserQuery", "user-service"),
    ]
    assert [(e.request_schema, e.response_schema) for e in info.endpoints] == [
        (json_schema(CreateUserCommand), json_schema(UserCreated)),
        (json_schema(GetUserQuery), json_schema(User)),
    ]
    assert [e.kind.value if e.kind else None for e in info.endpoints] == ["command", "query"]
    (ping,) = bus.ping("user-service", id)
    assert ping == ServicePing("user-service", id, "0.0.0")
    assert ping.rtt is not None and ping.rtt > 0
    (stats,) = bus.stats("user-service", id)
    assert stats.started.tzinfo is dt.UTC
    assert stats.started <= dt.datetime.now(dt.UTC)


def test_has_handler_reads_the_endpoints_services_list(bus: Bus, user_pool: WorkerPool) -> None:
    assert bus.has_handler("CreateUserCommand") is True
    assert bus.has_handler("GetUserQuery") is True
    assert bus.has_handler(CreateUserCommand) is True
    assert bus.has_handler("CreateUserCommand", kind="command") is True
    assert bus.has_handler("CreateUserCommand", kind="query") is False
    assert bus.has_handler("DeleteUserCommand") is False
    with pytest.raises(ConfigError, match="kind must be"):
        bus.has_handler("CreateUserCommand", kind="event")


def test_nobody_answering_returns_an_empty_list_without_waiting_for_the_timeout(bus: Bus) -> None:
    started = time.monotonic()
    assert bus.ping("nobody-here", timeout=20) == []
    assert bus.discover("nobody-here", timeout=20) == []
    # The server's no-responders status ends the wait at once; 20 s each otherwise.
    assert time.monotonic() - started < 10


def test_invalid_replies_are_skipped_and_logged(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    transport = bus.live_transport()
    good = {"type": "io.nats.micro.v1.ping_response", "name": "odd", "id": "good1", "version": "1.0.0"}
    bodies = [b"not json", b'{"type": "io.nats.micro.v1.ping_response", "id": "x"}', json.dumps(good).encode()]

    def responder(body: bytes) -> Any:
        return lambda subject, reply, data, headers: transport.publish(reply, body)

    async def subscribe() -> List[Any]:
        subs = [await transport.subscribe("$SRV.PING.odd", "", responder(body)) for body in bodies]
        await transport.flush()
        return subs

    subs = bus.run(subscribe)
    try:
        pings = bus.ping("odd", count=3, timeout=10)
    finally:
        bus.run(lambda: transport.unsubscribe(subs))
    # metadata absent: read as empty; the two bad replies are dropped.
    assert pings == [ServicePing("odd", "good1", "1.0.0", {})]
    assert sum("skipped an invalid PING reply" in r.getMessage() for r in caplog.records) == 2


@NATS_PY_SERVICE_WARNINGS
def test_discovers_a_service_written_with_nats_py(bus: Bus, nats_py_service: NatsPyService) -> None:
    (info,) = bus.discover("echo-py")
    assert (info.name, info.id, info.version) == ("echo-py", nats_py_service.id, "1.2.3")
    assert info.description == ""  # nats-py sends null when there is none
    assert info.endpoints == (EndpointInfo("EchoCommand", "commands.EchoCommand", "q"),)
    (ping,) = bus.ping("echo-py")
    assert ping.id == nats_py_service.id
    (stats,) = bus.stats("echo-py")
    assert stats.started.tzinfo is dt.UTC  # nats-py sends milliseconds
    assert [(e.name, e.num_requests) for e in stats.endpoints] == [("EchoCommand", 0)]
    assert bus.has_handler("EchoCommand") is True


@pytest.mark.parametrize("verb", ["ping", "discover", "stats"])
def test_bad_arguments_are_refused(bus: Bus, verb: str) -> None:
    call = getattr(bus, verb)
    with pytest.raises(ConfigError, match="needs the service name"):
        call(None, "some-id")
    with pytest.raises(ConfigError, match="not a micro service name"):
        call("bad.name")
    with pytest.raises(ConfigError, match="timeout and quiet"):
        call(timeout=0)
    with pytest.raises(ConfigError, match="count must be"):
        call(count=0)


# -- RFC 3339 ------------------------------------------------------------------------

UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.1Z", dt.datetime(2024, 1, 2, 3, 4, 5, 100000, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        # Go: nanoseconds; Python keeps microseconds (truncated, never rounded up).
        ("2024-01-02T03:04:05.123456789Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T03:04:05.999999999Z", dt.datetime(2024, 1, 2, 3, 4, 5, 999999, tzinfo=UTC)),
        ("2024-01-02T03:04:05+00:00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05-00:00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T05:34:05.5+02:30", dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("2024-01-01T20:04:05.123456789-07:00", dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T03:04:05+0000", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02t03:04:05z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", dt.datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("0001-01-01T00:00:00Z", dt.datetime(1, 1, 1, tzinfo=UTC)),  # Go's zero time
    ],
)
def test_parse_rfc3339_reads_every_precision_and_offset(text: str, expected: dt.datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2024-01-02",
        "2024-01-02T03:04:05",  # no offset: not RFC 3339
        "2024-01-02T03:04Z",
        "2024-13-02T03:04:05Z",
        "2024-02-30T03:04:05Z",
        "2024-01-02T03:04:05.Z",
        "2024-01-02T03:04:05+24:00",
        "yesterday",
    ],
)
def test_parse_rfc3339_refuses_what_is_not_a_timestamp(text: str) -> None:
    with pytest.raises(EnvelopeError, match="not an RFC 3339 timestamp"):
        parse_rfc3339(text)


def test_format_rfc3339_writes_microseconds_in_utc_and_reads_back() -> None:
    ns = 1_704_164_645_123_456_789  # 2024-01-02T03:04:05.123456789Z
    assert format_rfc3339(ns) == "2024-01-02T03:04:05.123456Z"
    assert parse_rfc3339(format_rfc3339(ns)) == dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert format_rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_schema_copy_matches_the_spec() -> None:
    from micro_support import SCHEMA_DIR, spec_schema_dirs

    for folder in spec_schema_dirs():
        for path in sorted(folder.glob("*.json")):
            assert (SCHEMA_DIR / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs from {folder}"
