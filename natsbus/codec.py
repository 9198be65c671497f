"""natsbus's own cattrs converter, JSON bytes, and readable validation errors.

One converter serves the whole library (never cattrs' global one). It is
strict about JSON primitives: a string field given a number is an error,
not silently ``str(5)``, so "wrong type" is reported to the caller.

JSON goes through orjson when it is installed (the ``fast`` extra), else
the standard library. With orjson, integers beyond 64 bits decode as floats
and NaN/infinity encode as ``null``; the standard library keeps such
integers exact and refuses NaN.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Type, TypeVar

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.preconf.json import make_converter

__all__ = ["converter", "dumps", "loads", "structure", "unstructure"]

T = TypeVar("T")

try:  # pragma: no cover - which branch runs depends on the environment
    import orjson

    _fallback = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def dumps(obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON bytes."""
        try:
            encoded: bytes = orjson.dumps(obj)  # typed whether or not orjson is installed
        except TypeError:
            # orjson refuses what the standard library accepts (integers over
            # 64 bits, str subclasses as keys); results must not depend on
            # whether the optional extra is installed.
            return _fallback.encode(obj).encode("utf-8")
        return encoded

    def loads(data: bytes) -> Any:
        """Decode JSON bytes (raises ``ValueError`` on bad input)."""
        return orjson.loads(data)

except ImportError:  # pragma: no cover
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    _decode = json.loads

    def dumps(obj: Any) -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON bytes."""
        return _encoder.encode(obj).encode("utf-8")

    def loads(data: bytes) -> Any:
        """Decode JSON bytes (raises ``ValueError`` on bad input)."""
        return _decode(data)


def _type_label(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def json_label(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class WrongTypeError(TypeError):
    """A JSON value of the wrong type for a field."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {json_label(value)}")


def _strict(tp: type, accept: Callable[[Any], bool], label: str) -> Callable[[Any, Any], Any]:
    def hook(value: Any, _: Any) -> Any:
        if not accept(value):
            raise WrongTypeError(label, value)
        return tp(value)

    return hook


def _make() -> cattrs.Converter:
    conv = make_converter()
    conv.register_structure_hook(str, _strict(str, lambda v: isinstance(v, str), "string"))
    conv.register_structure_hook(
        int,
        _strict(int, lambda v: isinstance(v, int) and not isinstance(v, bool), "integer"),
    )
    conv.register_structure_hook(
        float,
        _strict(float, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "number"),
    )
    conv.register_structure_hook(bool, _strict(bool, lambda v: isinstance(v, bool), "boolean"))
    return conv


#: The library's converter. Register hooks for your own types on it.
converter: cattrs.Converter = _make()


def unstructure(obj: Any) -> Any:
    """Turn an attrs object (or anything cattrs knows) into JSON-ready data."""
    return converter.unstructure(obj)


def structure(data: Any, cls: Type[T]) -> T:
    """Build a ``cls`` from JSON data.

    Raises:
        ValueError: with a precise, path-naming text (see :func:`explain`).
    """
    if isinstance(cls, type) and attrs.has(cls) and not isinstance(data, dict):
        raise ValueError(f"expected a JSON object for {_type_label(cls)}, got {json_label(data)}")
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs raises many kinds; all mean "does not fit"
        raise ValueError(explain(exc)) from exc


def explain(exc: BaseException) -> str:
    """A readable text for a cattrs structuring error, naming each bad field.

    Missing fields read ``expected 'name' field``; wrong types read
    ``field 'age': expected integer, got string``. Nested paths are dotted
    (``address.city``), list items indexed (``tags[2]``). cattrs'
    :func:`~cattrs.transform_error` walks the error tree; this only words
    each of its findings the way the wire contract does.
    """
    problems = [_word(line) for line in cattrs.transform_error(exc, path="$", format_exception=_describe)]
    return "; ".join(dict.fromkeys(problems)) or str(exc)


# transform_error gives "{description} @ {path}"; a description saying which
# kind of problem it is lets _word put the path where the wording wants it.
_MISSING = "\x00missing"
_EXTRA = "\x00extra:"


def _describe(exc: BaseException, _: Any) -> str:
    if isinstance(exc, KeyError):
        return _MISSING
    if isinstance(exc, ForbiddenExtraKeysError):
        return _EXTRA + repr(sorted(exc.extra_fields))
    return _short(exc)


def _word(line: str) -> str:
    description, _, where = line.rpartition(" @ ")
    path = where[1:].lstrip(".")  # "$.address.city" -> "address.city", "$" -> ""
    if description == _MISSING and path:
        return f"expected '{path}' field"
    if description.startswith(_EXTRA):
        return f"unexpected field(s) {description[len(_EXTRA) :]} in '{path or '$'}'"
    if description == _MISSING:
        description = _short(KeyError())
    return f"field '{path}': {description}" if path else description


def _short(exc: BaseException) -> str:
    if isinstance(exc, WrongTypeError):
        return str(exc)
    text = str(exc)
    if isinstance(exc, (ValueError, TypeError)) and text:
        return f"invalid value ({text})"
    return f"invalid value ({type(exc).__name__})"
