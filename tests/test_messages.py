"""Message classes: type names, kinds and declared result types."""

from __future__ import annotations

import attrs
import pytest

from natsbus import Command, MessageTypeError, Query, type_name
from natsbus.messages import Kind, message_kind, result_type


@attrs.frozen
class Created:
    id: str


@attrs.frozen
class CreateThing(Command[Created]):
    name: str


@attrs.define(slots=True)
class Renamed(Command[Created], type_name="RenameThingCommand"):
    name: str


@attrs.frozen
class Sub(Renamed):
    extra: int = 0


@attrs.frozen
class GetThing(Query[Created]):
    id: str


@attrs.frozen
class Plain:
    x: int


def test_type_name_defaults_to_class_name() -> None:
    assert type_name(CreateThing) == "CreateThing"


def test_type_name_override_survives_slotted_attrs_and_is_not_inherited() -> None:
    assert type_name(Renamed) == "RenameThingCommand"
    assert type_name(Sub) == "Sub"


def test_kind_comes_from_the_base() -> None:
    assert message_kind(CreateThing) is Kind.COMMAND
    assert message_kind(GetThing) is Kind.QUERY
    assert message_kind(Plain) is None


def test_result_type_comes_from_the_type_argument() -> None:
    assert result_type(CreateThing) is Created
    assert result_type(Sub) is Created
    assert result_type(Plain) is None


def test_bad_type_name_is_rejected() -> None:
    with pytest.raises(MessageTypeError, match="not a valid NATS subject token"):

        class Bad(Command[int], type_name="a.b"):
            pass
