"""JSON Schemas (draft 2020-12) of commands, queries and results, from their attrs classes.

A schema describes the JSON natsbus's converter (:mod:`natsbus.codec`)
writes for a type and reads back::

    from natsbus.schema import json_schema

    json_schema(CreateUserCommand)
    # {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "CreateUserCommand",
    #  "type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"}},
    #  "required": ["name", "email"], "additionalProperties": true}

What the codec does, the schema says:

=================================  ==================================================
Python                             JSON Schema
=================================  ==================================================
attrs class                        an object; fields without a default are required;
                                   unknown fields are allowed (the worker ignores
                                   them); nested classes are ``$defs`` entries
``str`` / ``int`` / ``float``      ``string`` / ``integer`` / ``number`` (an integer
/ ``bool``                         is a number; a boolean is neither)
``Optional[X]``, ``Union``         ``anyOf`` (or a list of ``type`` names)
``List`` / ``Sequence`` /          ``array`` (``prefixItems`` for fixed tuples)
``Set`` / ``Tuple``
``Dict[str, X]``                   ``object`` whose values are X
``Enum``                           ``enum`` of the members' values
``Literal``                        ``const`` / ``enum``
``datetime`` / ``date``            ``string`` with format ``date-time`` / ``date``
                                   (``isoformat()``: a naive datetime has no offset)
``bytes``                          ``string`` (base85, as the codec writes it)
``Any``, unannotated               ``{}``: any JSON
=================================  ==================================================

Hooks registered on the converter for other types are not seen: such a
type gets ``{}`` (any JSON) and a ``$comment`` naming it. Field renames
made with cattrs overrides are not seen either.

A running :class:`~natsbus.WorkerPool` publishes each endpoint's schemas
in its NATS micro INFO metadata (``request_schema``, ``response_schema``);
``Bus.schema()`` reads them back, and ``natsbus asyncapi`` writes an
AsyncAPI 3.0 document of a pool (:func:`asyncapi_document`).
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import enum
import re
import types
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs

from . import codec
from .context import DEADLINE_HEADER
from .envelope import ERROR_CODE_HEADER, ERROR_HEADER, INSTANCE_HEADER, SERVICE_HEADER
from .messages import Kind, result_type, scatter_subject, subject_for, type_name

__all__ = [
    "ASYNCAPI_VERSION",
    "DRAFT",
    "REQUEST_SCHEMA_KEY",
    "RESPONSE_SCHEMA_KEY",
    "SchemaBuilder",
    "asyncapi_document",
    "json_schema",
    "request_envelope_schema",
    "response_envelope_schema",
    "result_schema",
]

#: The JSON Schema dialect of every schema made here.
DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: The AsyncAPI version :func:`asyncapi_document` writes.
ASYNCAPI_VERSION = "3.0.0"
#: The NATS micro endpoint metadata key that carries the request payload's schema (as JSON text).
REQUEST_SCHEMA_KEY = "request_schema"
#: The NATS micro endpoint metadata key that carries a success reply payload's schema (as JSON text).
RESPONSE_SCHEMA_KEY = "response_schema"

_ARRAYS = {
    list,
    set,
    frozenset,
    collections.deque,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
    collections.abc.Iterable,
    collections.abc.Collection,
}
_MAPPINGS = {
    dict,
    collections.OrderedDict,
    collections.defaultdict,
    collections.Counter,
    collections.abc.Mapping,
    collections.abc.MutableMapping,
}
_PRIMITIVES: Dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_NAME_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class SchemaBuilder:
    """Builds schemas of several types that share one set of named definitions.

    Each attrs class and enum becomes one definition, referred to as
    ``{ref_prefix}{name}``; :attr:`definitions` holds them afterwards.
    ``"#/$defs/"`` suits a standalone JSON Schema, ``"#/components/schemas/"``
    an AsyncAPI document.

    Args:
        ref_prefix: What a reference to a definition starts with.
    """

    def __init__(self, ref_prefix: str = "#/$defs/") -> None:
        self.ref_prefix = ref_prefix
        #: The definitions made so far, by name.
        self.definitions: Dict[str, Dict[str, Any]] = {}
        #: How many references to each definition were handed out.
        self.uses: Dict[str, int] = {}
        self._names: Dict[Any, str] = {}

    def schema(self, tp: Any) -> Dict[str, Any]:
        """The schema of ``tp`` (a reference, for attrs classes and enums)."""
        if tp is Any or tp is object:
            return {}
        if tp is None or tp is type(None):
            return {"type": "null"}
        supertype = getattr(tp, "__supertype__", None)
        if supertype is not None:  # a NewType
            return self.schema(supertype)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is typing.Annotated:
            return self.schema(args[0])
        if origin is typing.Literal:
            return _literal(args)
        if origin is typing.Union or origin is types.UnionType:
            return _union([self.schema(arg) for arg in args])
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return self._named(tp, lambda: _enum(tp))
        if tp in _PRIMITIVES:
            return {"type": _PRIMITIVES[tp]}
        if tp is dt.datetime:
            return {"type": "string", "format": "date-time"}
        if tp is dt.date:
            return {"type": "string", "format": "date"}
        if tp is bytes:
            return {"type": "string", "description": "bytes, base85-encoded (Python's base64.b85encode)"}
        target = origin if origin is not None else tp
        if isinstance(target, type) and attrs.has(target):
            return self._named(tp, lambda: self._object(target, args))
        if target is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.schema(args[0])}
            if not args:
                return {"type": "array"}
            if args == ((),):  # Tuple[()]
                return {"type": "array", "maxItems": 0}
            items = [self.schema(arg) for arg in args]
            return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        if target in _ARRAYS:
            return {"type": "array", "items": self.schema(args[0])} if args else {"type": "array"}
        if target in _MAPPINGS:
            if not args:
                return {"type": "object"}
            if target is collections.Counter:
                keys, values = args[0], int
            else:
                keys, values = args[0], args[1]
            schema: Dict[str, Any] = {"type": "object", "additionalProperties": self.schema(values)}
            if isinstance(keys, type) and issubclass(keys, enum.Enum):
                schema["propertyNames"] = {"enum": [str(member.value) for member in keys]}
            return schema
        return {"$comment": f"{_label(tp)}: encoded by a converter hook; any JSON"}

    # -- definitions -------------------------------------------------------

    def _named(self, tp: Any, build: Any) -> Dict[str, Any]:
        name = self._names.get(tp)
        if name is None:
            name = self._fresh_name(tp)
            self._names[tp] = name
            self.definitions[name] = {}  # reserved first: a class may refer to itself
            self.definitions[name] = build()
        self.uses[name] = self.uses.get(name, 0) + 1
        return {"$ref": self.ref_prefix + name}

    def _fresh_name(self, tp: Any) -> str:
        args = typing.get_args(tp)
        base = getattr(typing.get_origin(tp) or tp, "__name__", "Type")
        if args:
            base += "_" + "_".join(_label(arg) for arg in args)
        base = _NAME_RE.sub("_", base).strip("_") or "Type"
        name, n = base, 2
        while name in self.definitions:
            name, n = f"{base}_{n}", n + 1
        return name

    def _object(self, cls: type, args: Tuple[Any, ...]) -> Dict[str, Any]:
        hints = _hints(cls, args)
        properties: Dict[str, Any] = {}
        required: List[str] = []
        for field in attrs.fields(cls):
            if not field.init:
                continue  # the converter neither writes nor reads it
            hint = hints.get(field.name, field.type)
            prop = self.schema(hint) if hint is not None else {}
            default = field.default
            if default is attrs.NOTHING:
                required.append(field.name)
            elif not isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                encoded = _encoded(default)
                if encoded is not _NO_DEFAULT:
                    prop = {**prop, "default": encoded}
            properties[field.name] = prop
        schema: Dict[str, Any] = {"type": "object", "title": type_name(cls)}
        doc = _summary(cls)
        if doc:
            schema["description"] = doc
        schema["properties"] = properties
        if required:
            schema["required"] = required
        schema["additionalProperties"] = True  # unknown fields are ignored, not refused
        return schema

    def document(self, tp: Any) -> Dict[str, Any]:
        """A standalone schema of ``tp``: ``$schema``, the root inline, the rest in ``$defs``."""
        root = self.schema(tp)
        ref = root.get("$ref", "")
        name = ref[len(self.ref_prefix) :] if ref.startswith(self.ref_prefix) else ""
        if name and self.uses.get(name) == 1:  # referred to once, by the root: inline it
            root = self.definitions.pop(name)
        out: Dict[str, Any] = {"$schema": DRAFT, **root}
        if self.definitions:
            out["$defs"] = dict(self.definitions)
        return out


_NO_DEFAULT = object()


def _encoded(value: Any) -> Any:
    """``value`` as the codec writes it, if that is plain JSON; else ``_NO_DEFAULT``."""
    try:
        data = codec.unstructure(value)
        codec.dumps(data)
    except Exception:
        return _NO_DEFAULT
    return data


def _hints(cls: type, args: Tuple[Any, ...]) -> Dict[str, Any]:
    """The resolved field types of ``cls``, type arguments substituted."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable names: the fields' own annotations, as written
        hints = {field.name: field.type for field in attrs.fields(cls)}
    params = getattr(cls, "__parameters__", ())
    if args and params:
        mapping = dict(zip(params, args))
        hints = {name: _substitute(hint, mapping) for name, hint in hints.items()}
    return hints


def _substitute(hint: Any, mapping: Mapping[Any, Any]) -> Any:
    if isinstance(hint, typing.TypeVar):
        return mapping.get(hint, Any)
    params = getattr(hint, "__parameters__", ())
    if params:
        try:
            return hint[tuple(mapping.get(p, Any) for p in params)]
        except TypeError:
            return hint
    return hint


def _summary(cls: type) -> str:
    doc = cls.__doc__
    if not doc or doc.startswith(f"{cls.__name__}("):  # attrs gives no docstring; dataclass-like repr
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _label(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _literal(values: Sequence[Any]) -> Dict[str, Any]:
    plain = [v.value if isinstance(v, enum.Enum) else v for v in values]
    if len(plain) == 1:
        return {"const": plain[0]}
    return {"enum": plain}


def _enum(cls: typing.Type[enum.Enum]) -> Dict[str, Any]:
    values = [member.value for member in cls]
    schema: Dict[str, Any] = {"title": cls.__name__}
    kinds = {_json_type(v) for v in values}
    if len(kinds) == 1 and None not in kinds:
        schema["type"] = kinds.pop()
    schema["enum"] = values
    return schema


def _json_type(value: Any) -> Optional[str]:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _union(members: List[Dict[str, Any]]) -> Dict[str, Any]:
    if any(member == {} for member in members):
        return {}
    names: List[str] = []
    for member in members:
        if set(member) != {"type"} or not isinstance(member["type"], str):
            break
        if member["type"] not in names:
            names.append(member["type"])
    else:  # only plain types: one list of names
        return {"type": names[0] if len(names) == 1 else names}
    unique: List[Dict[str, Any]] = []
    for member in members:
        if member not in unique:
            unique.append(member)
    return unique[0] if len(unique) == 1 else {"anyOf": unique}


# -- the public helpers ---------------------------------------------------------


def json_schema(tp: Any) -> Dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the JSON the codec writes for ``tp`` and reads back.

    Args:
        tp: A type: an attrs class (a command, a query, a result), or any
            annotation the codec handles (``List[User]``, ``Optional[int]``, ...).

    Returns:
        The schema, as JSON data: ``$schema``, the type itself at the
        root, and any nested attrs classes and enums under ``$defs``.
    """
    return SchemaBuilder().document(tp)


def result_schema(message_class: type, handler: Any = None) -> Dict[str, Any]:
    """The schema of the result payload a handler of ``message_class`` answers with.

    The result type is the ``R`` of ``Command[R]`` / ``Query[R]``, else the
    handler's return annotation (``handler`` is the callable), else unknown:
    then the schema is ``{}`` (any JSON) with a ``$comment`` saying so.
    """
    declared = _declared_result(message_class, handler)
    if declared is None:
        return {"$schema": DRAFT, "$comment": "the handler declares no result type: any JSON"}
    return json_schema(declared)


def _declared_result(message_class: type, handler: Any) -> Any:
    declared = result_type(message_class)
    if declared is None and handler is not None:
        try:
            declared = typing.get_type_hints(handler).get("return")
        except Exception:  # an annotation that does not resolve: undeclared
            declared = None
    return declared


def request_envelope_schema(kind: Kind, name: str, payload: Mapping[str, Any]) -> Dict[str, Any]:
    """The schema of a request envelope of message type ``name`` whose payload matches ``payload``.

    ``payload`` may be a standalone schema (:func:`json_schema`): its
    ``$schema`` and ``$defs`` move to the envelope's top, so the result
    is a standalone schema too.
    """
    body, top = _hoist(payload)
    type_key, id_key = f"{kind.value}_type", f"{kind.value}_id"
    schema = {
        "type": "object",
        "title": f"{name} request",
        "properties": {
            type_key: {"const": name},
            id_key: {"type": "string", "description": f"{kind.id_prefix}-<uuid4>"},
            "service_id": {"type": "string", "description": "the caller's service id"},
            "timestamp": {"type": "string", "description": "RFC 3339 UTC, e.g. 2025-11-29T12:34:56Z"},
            "payload": body,
        },
        "required": [type_key, id_key, "payload"],
        "additionalProperties": True,
    }
    return _wrap(schema, top)


def response_envelope_schema(kind: Kind, name: str, payload: Mapping[str, Any]) -> Dict[str, Any]:
    """The schema of a response envelope whose success payload matches ``payload``.

    A success has ``success: true``, the payload and ``error: null``; an
    error has ``success: false``, ``payload: null`` and the error text.
    ``payload`` may be a standalone schema, as for :func:`request_envelope_schema`.
    """
    body, top = _hoist(payload)
    id_key = f"{kind.value}_id"
    required = ["success", id_key, "timestamp", "payload", "error"]
    common = {
        id_key: {"type": "string", "description": "the request's id"},
        "timestamp": {"type": "string", "description": "RFC 3339 UTC"},
    }
    success = {"success": {"const": True}, "payload": body, "error": {"type": "null"}}
    failure = {"success": {"const": False}, "payload": {"type": "null"}, "error": {"type": "string"}}
    schema = {
        "title": f"{name} response",
        "oneOf": [
            {"type": "object", "title": f"{name} success", "properties": {**common, **success}, "required": required},
            {"type": "object", "title": f"{name} error", "properties": {**common, **failure}, "required": required},
        ],
    }
    return _wrap(schema, top)


def _hoist(payload: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``payload`` without its ``$schema`` and ``$defs``, and those two."""
    body = dict(payload)
    top: Dict[str, Any] = {key: body.pop(key) for key in ("$schema", "$defs") if key in body}
    return body, top


def _wrap(schema: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    if "$schema" in top:
        schema = {"$schema": top["$schema"], **schema}
    if "$defs" in top:
        schema["$defs"] = top["$defs"]
    return schema


# -- AsyncAPI -------------------------------------------------------------------------


def asyncapi_document(
    service: str,
    version: str,
    routes: Sequence[Tuple[Kind, type, Any]],
    *,
    description: str = "",
    queue_group: Optional[str] = None,
) -> Dict[str, Any]:
    """An AsyncAPI 3.0 document of a service's operations.

    Each ``(kind, message class, handler)`` is one operation the service
    receives, request/reply: on ``commands.{Type}`` / ``queries.{Type}``
    in ``queue_group``, and each query also on ``scatter.queries.{Type}``
    (every instance answers). Messages are the full envelopes, their
    payloads the message and result schemas (in ``components.schemas``).

    Args:
        service: The service name (the pool's ``service_id``).
        version: Its version.
        routes: What it serves.
        description: Its description.
        queue_group: Its queue group (default ``service``).
    """
    builder = SchemaBuilder("#/components/schemas/")
    channels: Dict[str, Any] = {}
    operations: Dict[str, Any] = {}
    messages: Dict[str, Any] = {}
    group = queue_group or service
    request_headers = {
        "type": "object",
        "properties": {
            DEADLINE_HEADER: {
                "type": "string",
                "description": "milliseconds the caller waits; a request not started by then is not run",
            },
        },
    }
    error_headers = {
        ERROR_HEADER: {"type": "string", "description": "an error reply's text"},
        ERROR_CODE_HEADER: {"type": "string", "description": "an error reply's code (400, 404, 409, 500, 503, 504)"},
    }
    identity_headers = {
        INSTANCE_HEADER: {"type": "string", "description": "the answering instance's id (as $SRV.PING reports it)"},
        SERVICE_HEADER: {"type": "string", "description": "the answering instance's service name"},
    }
    for kind, cls, handler in routes:
        name = type_name(cls)
        payload = builder.schema(cls)
        declared = _declared_result(cls, handler)
        result = builder.schema(declared) if declared is not None else {}
        messages[f"{name}Request"] = {
            "name": f"{name}Request",
            "title": f"{name} request",
            "contentType": "application/json",
            "headers": request_headers,
            "payload": request_envelope_schema(kind, name, payload),
        }
        messages[f"{name}Reply"] = {
            "name": f"{name}Reply",
            "title": f"{name} reply",
            "contentType": "application/json",
            "headers": {"type": "object", "properties": dict(error_headers)},
            "payload": response_envelope_schema(kind, name, result),
        }
        forms = [(name, subject_for(kind, name), group, f"{kind.label} {name}: one instance answers")]
        if kind is Kind.QUERY:
            forms.append((f"{name}Scatter", scatter_subject(name), "", f"Query {name}: every instance answers"))
            messages[f"{name}ScatterReply"] = {
                "name": f"{name}ScatterReply",
                "title": f"{name} reply from one instance",
                "contentType": "application/json",
                "headers": {"type": "object", "properties": {**error_headers, **identity_headers}},
                "payload": response_envelope_schema(kind, name, result),
            }
        for key, address, queue, summary in forms:
            reply_key = f"{key}Reply"
            reply_message = f"{name}ScatterReply" if key.endswith("Scatter") else f"{name}Reply"
            channels[key] = {
                "address": address,
                "messages": {"request": {"$ref": f"#/components/messages/{name}Request"}},
            }
            channels[reply_key] = {
                "address": None,
                "description": "The request's NATS reply subject (an inbox of the caller's).",
                "messages": {"reply": {"$ref": f"#/components/messages/{reply_message}"}},
            }
            operation: Dict[str, Any] = {
                "action": "receive",
                "summary": summary,
                "channel": {"$ref": f"#/channels/{key}"},
                "messages": [{"$ref": f"#/channels/{key}/messages/request"}],
                "reply": {
                    "channel": {"$ref": f"#/channels/{reply_key}"},
                    "messages": [{"$ref": f"#/channels/{reply_key}/messages/reply"}],
                },
            }
            if queue:
                operation["bindings"] = {"nats": {"queue": queue, "bindingVersion": "0.1.0"}}
            operations[key] = operation
    info: Dict[str, Any] = {"title": service, "version": version}
    if description:
        info["description"] = description
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": builder.definitions, "messages": messages},
    }
