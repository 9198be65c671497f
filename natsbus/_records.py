"""What natsbus stores in JetStream key-value buckets: replies to commands, by command id.

The idempotency store (:mod:`natsbus.idempotency`) and durable commands'
results bucket (:mod:`natsbus.durable`) share this record format: JSON with
a version ``v``, a ``state`` (``running`` or ``done``), the ``command_id``,
and for ``done`` the response envelope and its error headers.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, Dict, Optional, Tuple

from . import codec
from .envelope import Headers

__all__ = ["ReplyPair", "done_record", "read_record", "record_key", "record_reply", "running_record"]

#: A reply: its body and its headers.
ReplyPair = Tuple[bytes, Headers]

_KEY_RE = re.compile(r"^[-_=A-Za-z0-9]+$")


def record_key(command_id: str) -> str:
    """The bucket key of a command id (a digest when the id is not a valid key)."""
    if len(command_id) <= 200 and _KEY_RE.match(command_id):
        return command_id
    return "sha256-" + hashlib.sha256(command_id.encode()).hexdigest()


def done_record(command_id: str, subject: str, reply: ReplyPair) -> bytes:
    """A stored reply, as JSON: the response envelope and its error headers."""
    body, headers = reply
    return codec.dumps(
        {
            "v": 1,
            "state": "done",
            "command_id": command_id,
            "subject": subject,
            "headers": dict(headers) if headers else None,
            "response": codec.loads(body),
        }
    )


def running_record(command_id: str, owner: str) -> bytes:
    """An "in progress" marker, as JSON.

    Its ``since`` is the writing host's clock, for people reading the
    bucket; the idempotency lease never reads it (it runs on the server's
    clock, see :class:`~natsbus.KeyValueIdempotencyStore`).
    """
    return codec.dumps({"v": 1, "state": "running", "command_id": command_id, "owner": owner, "since": time.time()})


def read_record(value: bytes, command_id: str) -> Optional[Dict[str, Any]]:
    """A record for ``command_id`` from a bucket value, or ``None`` when it is not one."""
    try:
        record = codec.loads(value)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("command_id") != command_id:
        return None
    return record


def record_reply(record: Dict[str, Any]) -> ReplyPair:
    """The reply in a ``done`` record."""
    headers = record.get("headers")
    return codec.dumps(record.get("response")), (dict(headers) if headers else None)
