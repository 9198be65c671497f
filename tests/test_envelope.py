"""Envelopes on the wire, exactly as spec/nats-cqrs-pattern.md."""

from __future__ import annotations

import json
import re

import pytest

from natsbus import (
    EnvelopeError,
    Kind,
    command_subject,
    create_request_envelope,
    create_response_envelope,
    decode_request,
    decode_response,
    query_subject,
)
from natsbus.envelope import new_id, utc_timestamp

UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


def test_subjects_follow_the_spec() -> None:
    assert command_subject("CreateUserCommand") == "commands.CreateUserCommand"
    assert query_subject("GetUserQuery") == "queries.GetUserQuery"


def test_ids_are_prefixed_uuid4() -> None:
    assert re.fullmatch(f"cmd-{UUID4}", new_id(Kind.COMMAND))
    assert re.fullmatch(f"qry-{UUID4}", new_id(Kind.QUERY))
    assert new_id(Kind.COMMAND) != new_id(Kind.COMMAND)


def test_timestamp_is_rfc3339_utc_with_z() -> None:
    assert utc_timestamp(1764419696) == "2025-11-29T12:34:56Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_timestamp())


def test_command_request_has_exactly_the_spec_keys() -> None:
    env = create_request_envelope(
        "CreateUserCommand", "cmd-123", "user-service", {"name": "Alice"}, timestamp="2025-11-29T12:34:56Z"
    )
    assert json.loads(env.to_bytes()) == {
        "command_type": "CreateUserCommand",
        "command_id": "cmd-123",
        "service_id": "user-service",
        "timestamp": "2025-11-29T12:34:56Z",
        "payload": {"name": "Alice"},
    }
    assert env.subject == "commands.CreateUserCommand"


def test_query_request_uses_query_keys() -> None:
    env = create_request_envelope("GetUserQuery", "qry-9", "svc", {"user_id": "u"})
    assert list(env.to_dict()) == ["query_type", "query_id", "service_id", "timestamp", "payload"]
    assert env.kind is Kind.QUERY
    assert env.subject == "queries.GetUserQuery"


def test_response_has_exactly_success_id_timestamp_payload_error() -> None:
    ok = create_response_envelope(True, "cmd-123", {"user_id": "user-456"}, timestamp="T")
    assert json.loads(ok.to_bytes()) == {
        "success": True,
        "command_id": "cmd-123",
        "timestamp": "T",
        "payload": {"user_id": "user-456"},
        "error": None,
    }
    err = create_response_envelope(False, "qry-1", None, "boom", timestamp="T")
    assert json.loads(err.to_bytes()) == {
        "success": False,
        "query_id": "qry-1",
        "timestamp": "T",
        "payload": None,
        "error": "boom",
    }


def test_request_round_trip() -> None:
    env = create_request_envelope("CreateUserCommand", "cmd-1", "svc", {"a": [1, 2]})
    assert decode_request(env.to_bytes()) == env
    assert decode_request(env.to_bytes(), Kind.COMMAND) == env


def test_response_round_trip() -> None:
    env = create_response_envelope(True, "qry-1", {"id": "x"})
    assert decode_response(env.to_bytes()) == env


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xfe", "request is not valid"),
        (b"not json", "request is not valid JSON"),
        (b"[1, 2]", "request must be a JSON object, got array"),
        (b'{"command_id": "cmd-1", "payload": {}}', "expected 'command_type' or 'query_type' field in request"),
        (b'{"command_type": "X", "payload": {}}', "expected 'command_id' field in command request"),
        (
            b'{"command_type": 5, "command_id": "c", "payload": {}}',
            "field 'command_type' in command request must be a string, got number",
        ),
        (b'{"command_type": "X", "command_id": "c"}', "expected 'payload' field in command request"),
    ],
)
def test_decode_request_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        decode_request(data)
    assert str(info.value).startswith(message)


def test_decode_response_requires_success_boolean() -> None:
    with pytest.raises(EnvelopeError, match="expected 'success' field in command response"):
        decode_response(b'{"command_id": "c"}')
    with pytest.raises(EnvelopeError, match="field 'success' in command response must be a boolean"):
        decode_response(b'{"success": "yes", "command_id": "c"}')


def test_decode_request_rejects_deep_nesting_cleanly() -> None:
    deep = b'{"command_type":"X","command_id":"c","payload":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(EnvelopeError):
        decode_request(deep)


def test_ids_do_not_repeat_when_user_code_seeds_random() -> None:
    import random

    random.seed(1234)
    first = new_id(Kind.COMMAND)
    random.seed(1234)
    assert new_id(Kind.COMMAND) != first


def test_the_fast_builders_build_what_the_attrs_constructors_build_and_keep_them_frozen() -> None:
    import attrs as attrs_mod

    from natsbus.context import RequestContext, new_context
    from natsbus.envelope import RequestEnvelope, _request_envelope

    # Every field, in order: a field added to either class fails here until its builder sets it.
    assert [f.name for f in attrs_mod.fields(RequestEnvelope)] == [
        "kind",
        "message_type",
        "id",
        "service_id",
        "timestamp",
        "payload",
    ]
    assert [f.name for f in attrs_mod.fields(RequestContext)] == [
        "subject",
        "kind",
        "message_id",
        "service_id",
        "headers",
        "deadline",
    ]
    values = (Kind.QUERY, "GetUserQuery", "q-1", "web", "2025-01-01T00:00:00Z", {"user_id": "u1"})
    envelope = _request_envelope(*values)
    assert envelope == RequestEnvelope(*values) and type(envelope) is RequestEnvelope
    context = new_context("queries.GetUserQuery", Kind.QUERY, "q-1", "web", {"h": "v"}, 12.5)
    assert context == RequestContext("queries.GetUserQuery", Kind.QUERY, "q-1", "web", {"h": "v"}, 12.5)
    for frozen, name in ((envelope, "id"), (context, "message_id")):
        with pytest.raises(attrs_mod.exceptions.FrozenInstanceError):
            setattr(frozen, name, "changed")
