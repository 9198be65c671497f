"""The transport: the only package that imports nats; it maps every nats error to ours.

One module a concept:

* :mod:`~natsbus._transport.portal`: the loop thread and the blocking hand-off into it.
* :mod:`~natsbus._transport.wire`: header blocks, subjects, frames.
* :mod:`~natsbus._transport.pending`: a request's reply, waited for by a thread.
* :mod:`~natsbus._transport.errors`: nats-py's errors mapped to natsbus's, in one place.
* :mod:`~natsbus._transport.nats_client`: every nats-py internal natsbus uses, and its probe.
* :mod:`~natsbus._transport.writer`: the outbox, direct writes, the write lock.
* :mod:`~natsbus._transport.core`: :class:`Transport`, one connection (core NATS).
* :mod:`~natsbus._transport.connection`: :class:`Connection`, the seam features use.
* :mod:`~natsbus._transport.jetstream`: JetStream and key-value, for the features above.
"""

from .connection import Connection
from .core import ConnectionState, Transport
from .errors import ERROR_MAP, map_error
from .nats_client import FAST_PATH, new_nuid
from .pending import GatheredReply, PendingReply, Reply, WaitTimeout
from .wire import Handler, Headers, RawHeaders, as_headers, header_value, parse_headers

__all__ = [
    "Connection",
    "ConnectionState",
    "ERROR_MAP",
    "FAST_PATH",
    "GatheredReply",
    "Handler",
    "Headers",
    "PendingReply",
    "RawHeaders",
    "Reply",
    "Transport",
    "WaitTimeout",
    "as_headers",
    "header_value",
    "map_error",
    "new_nuid",
    "parse_headers",
]
