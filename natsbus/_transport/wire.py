"""The NATS wire format natsbus writes and reads itself: header blocks, subjects, frames."""

from __future__ import annotations

from typing import Callable, Dict, Tuple, Union

from ..envelope import Headers, header_value
from ..errors import ConfigError

__all__ = [
    "NO_RESPONDERS",
    "Handler",
    "Headers",
    "RawHeaders",
    "as_headers",
    "check_subject",
    "encode_headers",
    "frame",
    "header_value",
    "parse_headers",
]

#: Headers as a subscription handler gets them: raw header bytes on the
#: fast path, a dict on the public-API path, or None. See :func:`as_headers`.
RawHeaders = Union[bytes, Dict[str, str], None]
#: ``(subject, reply, data, headers)`` handed to a subscription handler.
Handler = Callable[[str, str, bytes, RawHeaders], None]

#: The status of the server's "no responders" reply (an empty message).
NO_RESPONDERS = "503"

_PARSED_HEADERS: Dict[bytes, Tuple[Tuple[str, str], ...]] = {}


def parse_headers(raw: bytes) -> Dict[str, str]:
    """Parse a NATS header block (``NATS/1.0[ status[ text]]``, then ``Name: value`` lines).

    An inline status becomes ``Status`` (and ``Description``), as nats-py does.
    Short blocks seen before (the same deadline header on every request)
    come from a small cache; the caller always gets a dict of its own.
    """
    items = _PARSED_HEADERS.get(raw)
    if items is not None:
        return dict(items)
    lines = raw.split(b"\r\n")
    headers: Dict[str, str] = {}
    first = lines[0].decode("utf-8", "replace")
    if first.startswith("NATS/1.0 "):
        status, _, description = first[9:].strip().partition(" ")
        if status.isdigit():
            headers["Status"] = status
        if description:
            headers["Description"] = description
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().decode("ascii", "replace")
        if key and len(key.split()) == 1:
            headers[key] = value.strip().decode("utf-8", "replace")
    if len(raw) <= 256 and len(_PARSED_HEADERS) < 256:
        _PARSED_HEADERS[raw] = tuple(headers.items())
    return headers


def as_headers(headers: RawHeaders) -> Headers:
    """Headers from a subscription handler as a dict (``None`` when there are none)."""
    if headers is None or isinstance(headers, dict):
        return headers or None
    return parse_headers(headers) or None


_HEADER_CACHE: Dict[Tuple[Tuple[str, str], ...], bytes] = {}


def encode_headers(headers: Dict[str, str]) -> bytes:
    """The NATS header block for ``headers``.

    Raises:
        ConfigError: a name or value that would break the protocol.
    """
    key = tuple(headers.items())
    block = _HEADER_CACHE.get(key)
    if block is None:
        parts = [b"NATS/1.0\r\n"]
        for name, value in key:
            if not name or any(ch in name for ch in ": \t\r\n") or "\r" in value or "\n" in value:
                raise ConfigError(f"invalid NATS header {name!r}: {value!r}")
            parts.append(f"{name}: {value}\r\n".encode())
        parts.append(b"\r\n")
        block = b"".join(parts)
        if len(_HEADER_CACHE) < 256:
            _HEADER_CACHE[key] = block
    return block


def check_subject(subject: str) -> None:
    """Raise :class:`ConfigError` for a subject that is empty or has white space."""
    if not subject or " " in subject or "\t" in subject or "\r" in subject or "\n" in subject:
        raise ConfigError(f"invalid NATS subject {subject!r}")


def frame(subject: bytes, reply: bytes, payload: bytes, headers: Headers) -> bytes:
    if headers:
        block = encode_headers(headers)
        size = len(block)
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, size, size + len(payload), block, payload)
    return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)
