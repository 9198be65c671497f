"""JSON Schemas of message types: made from the attrs classes, true to the codec, published in INFO."""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import re
from pathlib import Path
from typing import Any, Dict, Generic, Iterator, List, Literal, Optional, Tuple, TypeVar

import attrs
import pytest
from jsonschema import Draft7Validator, Draft202012Validator
from micro_support import NatsPyService, load_validators, running_nats_py_service, schema_errors
from referencing import Registry
from referencing.jsonschema import DRAFT7

from natsbus import Bus, Command, EndpointContract, NoHandlerError, Query, WorkerPool, codec
from natsbus.demo import CreateUserCommand, GetUserQuery, User, UserCreated, build_pool
from natsbus.envelope import create_request_envelope, new_id
from natsbus.messages import Kind
from natsbus.schema import (
    DRAFT,
    asyncapi_document,
    json_schema,
    request_envelope_schema,
    response_envelope_schema,
    result_schema,
)

ROOT = Path(__file__).resolve().parents[1]
ASYNCAPI_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0" / "asyncapi.json"
NATS_PY_SERVICE_WARNINGS = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

T = TypeVar("T")


class Tier(enum.Enum):
    FREE = "free"
    PRO = "pro"


class Level(int, enum.Enum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Address:
    """Where someone lives."""

    city: str
    zip: Optional[str] = None


@attrs.frozen
class Node:
    name: str
    children: List[Node] = attrs.Factory(list)


@attrs.frozen
class Page(Generic[T]):
    items: List[T]
    total: int


@attrs.frozen
class Profile:
    name: str
    age: int
    score: float
    active: bool
    tier: Tier
    level: Level
    born: dt.datetime
    day: dt.date
    address: Address
    previous: List[Address]
    tags: Dict[str, int]
    pair: Tuple[int, str]
    numbers: Tuple[int, ...]
    mode: Literal["a", "b"]
    blob: bytes
    tree: Node
    anything: Any
    nickname: Optional[str] = None
    home: Optional[Address] = None
    retries: int = 3
    counted: int = attrs.field(init=False, default=0)


@attrs.frozen
class SaveProfile(Command[Page[Profile]]):
    profile: Profile


@attrs.frozen
class Untyped(Query):  # type: ignore[type-arg]  # no result type declared
    pass


def annotated(query: Untyped) -> List[int]:
    return [1]


def _profile() -> Profile:
    return Profile(
        name="Ada",
        age=36,
        score=9.5,
        active=True,
        tier=Tier.PRO,
        level=Level.HIGH,
        born=dt.datetime(1815, 12, 10, 8, 30, tzinfo=dt.UTC),
        day=dt.date(2025, 11, 29),
        address=Address("London"),
        previous=[Address("Paris", "75001")],
        tags={"x": 1},
        pair=(1, "one"),
        numbers=(1, 2, 3),
        mode="b",
        blob=b"\x00\x01binary",
        tree=Node("root", [Node("leaf")]),
        anything={"free": ["form"]},
        nickname="Countess",
        home=None,
    )


def _validator(schema: Dict[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)  # a valid draft 2020-12 schema
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _wire(obj: Any) -> Any:
    """``obj`` as it travels: encoded by the codec, as JSON."""
    return codec.loads(codec.dumps(codec.unstructure(obj)))


def _codec_accepts(data: Any, cls: type) -> bool:
    try:
        codec.structure(data, cls)
    except ValueError:
        return False
    return True


# -- the generator ------------------------------------------------------------------


def test_a_flat_message_schema_is_what_the_wire_contract_shows() -> None:
    assert json_schema(CreateUserCommand) == {
        "$schema": DRAFT,
        "type": "object",
        "title": "CreateUserCommand",
        "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
        "required": ["name", "email"],
        "additionalProperties": True,
    }


def test_what_the_codec_writes_validates_against_the_schema() -> None:
    profile = _profile()
    validator = _validator(json_schema(Profile))
    data = _wire(profile)
    assert list(validator.iter_errors(data)) == []
    assert codec.structure(data, Profile) == profile  # and the codec reads it back


def test_the_schema_covers_each_kind_of_field() -> None:
    schema = json_schema(Profile)
    props = schema["properties"]
    defs = schema["$defs"]
    assert schema["required"] == [
        *("name", "age", "score", "active", "tier", "level", "born", "day", "address", "previous"),
        *("tags", "pair", "numbers", "mode", "blob", "tree", "anything"),
    ]
    assert "counted" not in props  # init=False: the codec neither writes nor reads it
    assert props["born"] == {"type": "string", "format": "date-time"}
    assert props["day"] == {"type": "string", "format": "date"}
    assert props["tier"] == {"$ref": "#/$defs/Tier"}
    assert defs["Tier"] == {"title": "Tier", "type": "string", "enum": ["free", "pro"]}
    assert defs["Level"] == {"title": "Level", "type": "integer", "enum": [1, 2]}
    assert props["nickname"] == {"type": ["string", "null"], "default": None}
    assert props["home"] == {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}], "default": None}
    assert props["retries"] == {"type": "integer", "default": 3}
    assert props["tags"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["previous"] == {"type": "array", "items": {"$ref": "#/$defs/Address"}}
    assert props["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert props["numbers"] == {"type": "array", "items": {"type": "integer"}}
    assert props["mode"] == {"enum": ["a", "b"]}
    assert props["anything"] == {}
    assert defs["Address"]["description"] == "Where someone lives."
    assert defs["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}  # recursive


@pytest.mark.parametrize(
    "change, accepted",
    [
        ({}, True),
        ({"unknown_field": 1}, True),  # the worker ignores unknown fields; so does the schema
        ({"retries": None}, False),
        ({"nickname": None}, True),
        ({"age": "36"}, False),
        ({"age": True}, False),
        ({"age": 36.5}, False),
        ({"score": 9}, True),  # an integer is a number
        ({"active": 1}, False),
        ({"tier": "gold"}, False),
        ({"level": 2}, True),
        ({"name": 5}, False),
        ({"address": {"zip": "1"}}, False),  # city is required
        ({"address": {"city": "Rome", "extra": True}}, True),
        ({"previous": [{"city": 1}]}, False),
        ({"tags": {"x": "1"}}, False),
        ({"pair": [1]}, False),
        ({"pair": [1, "a", 2]}, False),
        ({"numbers": [1, "2"]}, False),
        ({"mode": "c"}, False),
        ({"tree": {"name": "r", "children": [{"children": []}]}}, False),
        ({"anything": None}, True),
    ],
)
def test_the_schema_accepts_what_the_codec_accepts(change: Dict[str, Any], accepted: bool) -> None:
    data = {**_wire(_profile()), **change}
    assert _validator(json_schema(Profile)).is_valid(data) is accepted
    assert _codec_accepts(data, Profile) is accepted


def test_missing_required_fields_are_refused_by_both() -> None:
    data = _wire(_profile())
    del data["age"]
    assert not _validator(json_schema(Profile)).is_valid(data)
    assert not _codec_accepts(data, Profile)


def test_result_schemas_follow_the_declared_result_type() -> None:
    page = result_schema(SaveProfile)
    assert page["title"] == "Page"  # Page[Profile], inline at the root
    assert page["properties"]["items"] == {"type": "array", "items": {"$ref": "#/$defs/Profile"}}
    assert _validator(page).is_valid(_wire(Page([_profile()], 1)))
    assert result_schema(GetUserQuery) == json_schema(User)
    assert result_schema(Untyped, annotated) == json_schema(List[int])
    assert result_schema(Untyped)["$comment"] == "the handler declares no result type: any JSON"


def test_an_unknown_type_is_any_json_with_a_comment() -> None:
    import decimal

    schema = json_schema(decimal.Decimal)
    assert schema == {"$schema": DRAFT, "$comment": "Decimal: encoded by a converter hook; any JSON"}


# -- the examples' messages -------------------------------------------------------


def _wire_contract_examples() -> Dict[str, Dict[str, Any]]:
    """The JSON examples of docs/wire-contract.md's "Message Format", by their heading."""
    text = (ROOT / "docs" / "wire-contract.md").read_text()
    section = text[text.index("## Message Format") : text.index("## Scatter-Gather")]
    found = re.findall(r"### (.+?)\n```json\n(.*?)```", section, re.S)
    return {heading: json.loads(body) for heading, body in found}


def test_the_wire_contracts_examples_validate_against_the_demo_schemas() -> None:
    examples = _wire_contract_examples()
    create = (Kind.COMMAND, "CreateUserCommand", CreateUserCommand, UserCreated)
    get = (Kind.QUERY, "GetUserQuery", GetUserQuery, User)
    cases = [
        ("Command Request Envelope", create, request_envelope_schema, 0),
        ("Command Response Envelope", create, response_envelope_schema, 1),
        ("Query Request Envelope", get, request_envelope_schema, 0),
        ("Query Response Envelope", get, response_envelope_schema, 1),
        ("Error Response Envelope", create, response_envelope_schema, 1),
    ]
    assert sorted(examples) == sorted(heading for heading, *_ in cases)
    for heading, (kind, name, message, result), make, which in cases:
        schema = make(kind, name, json_schema((message, result)[which]))
        errors = [e.message for e in _validator(schema).iter_errors(examples[heading])]
        assert errors == [], heading
    # and a payload of the wrong shape does not
    bad = {**examples["Command Request Envelope"], "payload": {"name": "Alice"}}
    assert not _validator(request_envelope_schema(*create[:2], json_schema(CreateUserCommand))).is_valid(bad)


def test_the_wire_contracts_metadata_example_is_what_a_pool_publishes() -> None:
    text = (ROOT / "docs" / "wire-contract.md").read_text()
    section = text[text.index("## Message Contracts") : text.index("## Usage Patterns")]
    endpoint = json.loads(re.findall(r"```json\n(.*?)```", section, re.S)[0])
    pool = build_pool(None)  # type: ignore[arg-type]
    route = pool.dispatcher.route_for("commands.CreateUserCommand")
    assert route is not None
    assert endpoint["metadata"] == pool.micro.endpoint_metadata(route)


# -- published over discovery ---------------------------------------------------------


@pytest.fixture()
def profile_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = WorkerPool(bus, service_id="profiles", version="2.1.0")

    @pool.register
    def save(command: SaveProfile) -> Page[Profile]:
        return Page([command.profile], 1)

    with pool:
        yield pool


def test_info_publishes_the_schemas_and_still_passes_the_official_schema(bus: Bus, profile_pool: WorkerPool) -> None:
    from natsbus.discovery import control_subject

    raw = json.loads(bus.request(control_subject("INFO", "profiles", profile_pool.micro.id), b"").data)
    assert schema_errors(load_validators()["info"], raw) == []
    (endpoint,) = raw["endpoints"]
    assert all(isinstance(v, str) for v in endpoint["metadata"].values())  # JSON text: str -> str
    assert json.loads(endpoint["metadata"]["request_schema"]) == json_schema(SaveProfile)
    assert json.loads(endpoint["metadata"]["response_schema"]) == result_schema(SaveProfile)


def test_an_info_too_large_with_schemas_is_sent_without_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from natsbus import NatsServer
    from natsbus.discovery import control_subject

    config = tmp_path / "server.conf"
    config.write_text("max_payload: 1500\n")
    with NatsServer(jetstream=False, args=["--config", str(config)]) as server, Bus(server.url) as bus:
        pool = WorkerPool(bus, service_id="profiles")
        pool.register(lambda command: None, message_type=SaveProfile)  # Profile's schema is over 1500 bytes
        with caplog.at_level(logging.WARNING, logger="natsbus.micro"), pool:
            raw = json.loads(bus.request(control_subject("INFO", "profiles"), b"").data)
    assert schema_errors(load_validators()["info"], raw) == []
    assert raw["endpoints"][0]["metadata"] == {}
    assert any("sent without them" in record.getMessage() for record in caplog.records)


def test_a_payload_the_remote_schema_accepts_is_served_and_one_it_rejects_is_refused(
    bus: Bus, user_pool: WorkerPool
) -> None:
    contract = bus.schema(CreateUserCommand)
    assert (contract.service, contract.instance_id, contract.subject) == (
        "user-service",
        user_pool.micro.id,
        "commands.CreateUserCommand",
    )
    assert contract.request_schema is not None and contract.response_schema is not None
    requests, responses = _validator(contract.request_schema), _validator(contract.response_schema)

    def send(payload: Dict[str, Any]) -> Dict[str, Any]:
        envelope = create_request_envelope("CreateUserCommand", new_id(Kind.COMMAND), "t", payload)
        reply: Dict[str, Any] = json.loads(bus.request("commands.CreateUserCommand", envelope.to_bytes()).data)
        return reply

    good = {"name": "Grace", "email": "grace@example.com", "nickname": "unknown fields are fine"}
    assert requests.is_valid(good)
    reply = send(good)
    assert reply["success"] is True
    assert responses.is_valid(reply["payload"])

    for bad in ({"name": "Grace"}, {"name": 7, "email": "g@example.com"}, ["not", "an", "object"]):
        assert not requests.is_valid(bad)
        reply = send(bad)  # type: ignore[arg-type]
        assert reply["success"] is False
        assert reply["error"].startswith("Invalid request format: ")


def test_bus_schema_takes_a_type_name_and_a_service(bus: Bus, user_pool: WorkerPool) -> None:
    contract = bus.schema("GetUserQuery", service="user-service", kind="query")
    assert isinstance(contract, EndpointContract)
    assert (contract.name, contract.kind, contract.version) == ("GetUserQuery", Kind.QUERY, "0.0.0")
    assert contract.response_schema == json_schema(User)
    with pytest.raises(NoHandlerError, match=r"^No handler available for commands\.GetUserQuery$"):
        bus.schema("GetUserQuery", kind="command")
    with pytest.raises(NoHandlerError):
        bus.schema("NobodyServesThis")


@pytest.fixture()
def nats_py_service(nats_url: str) -> Iterator[NatsPyService]:
    yield from running_nats_py_service(nats_url)


@NATS_PY_SERVICE_WARNINGS
def test_a_service_that_publishes_no_schema_has_none(bus: Bus, nats_py_service: NatsPyService) -> None:
    contract = bus.schema("EchoCommand")
    assert (contract.service, contract.request_schema, contract.response_schema) == ("echo-py", None, None)


# -- AsyncAPI -----------------------------------------------------------------------------


def _asyncapi_validator() -> Draft7Validator:
    schema = json.loads(ASYNCAPI_SCHEMA.read_text())
    return Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)


def _demo_document() -> Dict[str, Any]:
    pool = build_pool(None)  # type: ignore[arg-type]
    routes = [(route.kind, route.message_class, route.call) for route in pool.dispatcher.routes]
    return asyncapi_document(pool.service_id, "1.0.0", routes, description="Users", queue_group=pool.queue_group)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: Dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_the_vendored_asyncapi_schema_is_the_published_one() -> None:
    import hashlib

    readme = (ASYNCAPI_SCHEMA.parent / "README.md").read_text()
    digest = hashlib.sha256(ASYNCAPI_SCHEMA.read_bytes()).hexdigest()
    assert f"sha256(asyncapi.json) = {digest}" in readme
    assert json.loads(ASYNCAPI_SCHEMA.read_text())["title"] == "AsyncAPI 3.0.0 schema."


def test_the_asyncapi_document_validates_against_the_asyncapi_3_schema() -> None:
    document = _demo_document()
    validator = _asyncapi_validator()
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)] == []
    for ref in _refs(document):  # and every reference in it resolves
        _resolve(document, ref)
    # The validator is a real one: a broken document fails it.
    broken = json.loads(json.dumps(document))
    broken["operations"]["CreateUserCommand"]["action"] = "serve"
    assert not validator.is_valid(broken)


def test_the_asyncapi_document_describes_the_operations() -> None:
    document = _demo_document()
    assert document["info"] == {"title": "user-service", "version": "1.0.0", "description": "Users"}
    addresses = {key: channel["address"] for key, channel in document["channels"].items()}
    assert {k: v for k, v in addresses.items() if v} == {
        "CreateUserCommand": "commands.CreateUserCommand",
        "GetUserQuery": "queries.GetUserQuery",
        "GetUserQueryScatter": "scatter.queries.GetUserQuery",
    }
    operations = document["operations"]
    assert {key: op["action"] for key, op in operations.items()} == dict.fromkeys(operations, "receive")
    assert operations["GetUserQuery"]["bindings"] == {"nats": {"queue": "user-service", "bindingVersion": "0.1.0"}}
    assert "bindings" not in operations["GetUserQueryScatter"]  # no queue group: every instance answers
    assert sorted(document["components"]["schemas"]) == ["CreateUserCommand", "GetUserQuery", "User", "UserCreated"]


def test_real_envelopes_validate_against_the_asyncapi_messages(bus: Bus, user_pool: WorkerPool) -> None:
    document = _demo_document()
    registry: Registry[Any] = Registry().with_resource("urn:natsbus:doc", DRAFT7.create_resource(document))

    def valid(message: str, instance: Any) -> bool:
        schema = {"$ref": f"urn:natsbus:doc#/components/messages/{message}/payload"}
        return Draft7Validator(schema, registry=registry).is_valid(instance)

    envelope = create_request_envelope("CreateUserCommand", new_id(Kind.COMMAND), "t", {"name": "Lin", "email": "l@x"})
    assert valid("CreateUserCommandRequest", envelope.to_dict())
    created = json.loads(bus.request("commands.CreateUserCommand", envelope.to_bytes()).data)
    repeat = create_request_envelope("CreateUserCommand", new_id(Kind.COMMAND), "t", {"name": "Lin", "email": "l@x"})
    again = json.loads(bus.request("commands.CreateUserCommand", repeat.to_bytes()).data)  # a conflict
    assert (created["success"], again["success"]) == (True, False)
    assert valid("CreateUserCommandReply", created)
    assert valid("CreateUserCommandReply", again)
    assert not valid("CreateUserCommandReply", {**created, "payload": {"user_id": 1}})
    assert not valid("CreateUserCommandRequest", {**envelope.to_dict(), "payload": {"name": "Lin"}})
