"""The converter's strictness and its readable error texts (pure logic)."""

from __future__ import annotations

from typing import List, Optional

import attrs
import pytest

from natsbus import codec


@attrs.frozen
class Address:
    city: str


@attrs.frozen
class Person:
    name: str
    age: int
    tags: List[str] = attrs.field(factory=list)
    address: Optional[Address] = None


def test_structure_builds_nested_objects() -> None:
    data = {"name": "A", "age": 3, "tags": ["x"], "address": {"city": "Oslo"}}
    assert codec.structure(data, Person) == Person("A", 3, ["x"], Address("Oslo"))
    assert codec.unstructure(Person("A", 3, ["x"], Address("Oslo"))) == data


def test_missing_field_reads_expected_field() -> None:
    with pytest.raises(ValueError, match=r"^expected 'name' field$"):
        codec.structure({"age": 3}, Person)


def test_wrong_type_names_field_and_types() -> None:
    with pytest.raises(ValueError, match=r"^field 'age': expected integer, got string$"):
        codec.structure({"name": "A", "age": "3"}, Person)
    with pytest.raises(ValueError, match=r"^field 'name': expected string, got number$"):
        codec.structure({"name": 5, "age": 3}, Person)


def test_bool_is_not_an_integer() -> None:
    with pytest.raises(ValueError, match="field 'age': expected integer, got boolean"):
        codec.structure({"name": "A", "age": True}, Person)


def test_nested_paths_are_dotted_and_indexed() -> None:
    with pytest.raises(ValueError) as info:
        codec.structure({"name": "A", "age": 1, "tags": ["x", 2], "address": {}}, Person)
    assert str(info.value) == "field 'tags[1]': expected string, got number; expected 'address.city' field"


def test_non_object_payload_is_rejected() -> None:
    with pytest.raises(ValueError, match="expected a JSON object for Person, got array"):
        codec.structure([1], Person)


def test_dumps_is_compact_utf8() -> None:
    assert codec.dumps({"a": "é"}) == '{"a":"é"}'.encode()
    assert codec.loads(b'{"a":1}') == {"a": 1}
