"""JetStream access, inside the transport package (the only one that imports nats).

Everything JetStream that
:mod:`natsbus.durable` and :mod:`natsbus.idempotency` do reaches the server
through :class:`JetStream` here, which

* runs only on the Bus's loop thread: callers on other threads hand its
  coroutines over with ``Bus.run`` (``Portal.call``), never touching nats;
* speaks natsbus types: settings as plain dicts with natsbus's names and
  units (seconds, ``"workqueue"``), :class:`JsMessage`,
  :class:`StoredMessage`, :class:`KvEntry`; nats-py's classes stay here;
* maps every nats and nats JetStream error to a natsbus one, each call in
  a :func:`~natsbus._transport.errors.mapped` block (the map itself,
  :data:`JS_ERROR_MAP`, lives in :mod:`natsbus._transport.errors`;
  ``tests/test_durable.py`` fails when nats-py grows an unmapped JetStream
  error class), and turns the expected "errors" of optimistic concurrency
  (a key that exists, a revision that moved, a message that is gone) into
  return values, as the blocks' ``absent`` cases.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional

import attrs
import nats.errors as nerr
import nats.js.errors as jserr
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ..errors import JetStreamError
from . import Headers, Transport
from .errors import JS_ERROR_MAP, map_js_error, mapped

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "JS_ERROR_MAP",
    "ConsumerState",
    "JetStream",
    "JsMessage",
    "KvEntry",
    "PubAck",
    "Puller",
    "StoredMessage",
    "StreamState",
    "jetstream_for",
    "map_js_error",
]

logger = logging.getLogger("natsbus.transport.jetstream")

#: The JetStream header carrying a message's deduplication id.
MSG_ID_HEADER = api.Header.MSG_ID.value


class KvEntry(NamedTuple):
    """A key's current value and revision."""

    value: bytes
    revision: int


class PubAck(NamedTuple):
    """JetStream stored a message: where, and whether it was a duplicate it dropped."""

    stream: str
    seq: int
    duplicate: bool


@attrs.frozen
class StoredMessage:
    """A message read back from a stream.

    Attributes:
        stream: The stream.
        seq: Its sequence number there.
        subject: The subject it was published to.
        data: Its body.
        headers: Its headers (``{}`` when none).
        time: When the stream stored it, RFC 3339 UTC (``""`` when unknown).
    """

    stream: str
    seq: int
    subject: str
    data: bytes
    headers: Dict[str, str]
    time: str


@attrs.frozen
class StreamState:
    """A stream's subjects and counts."""

    name: str
    subjects: List[str]
    messages: int
    first_seq: int
    last_seq: int
    consumer_count: int


@attrs.frozen
class ConsumerState:
    """A consumer's progress, as ``natsbus durable pending`` shows it.

    Attributes:
        name: The durable name.
        stream: Its stream.
        filter_subjects: The subjects it delivers.
        num_pending: Messages not delivered yet.
        num_ack_pending: Delivered and not acknowledged yet (running, or lost with a worker).
        num_redelivered: Delivered more than once and not acknowledged yet.
        num_waiting: Pull requests waiting (roughly: idle workers).
        ack_floor: The stream sequence up to which everything is acknowledged.
    """

    name: str
    stream: str
    filter_subjects: List[str]
    num_pending: int
    num_ack_pending: int
    num_redelivered: int
    num_waiting: int
    ack_floor: int


class JsMessage:
    """One delivered JetStream message, acknowledged through the coroutines below.

    Attributes:
        subject: Where it was published.
        data: Its body.
        headers: Its headers, or ``None``.
        num_delivered: How many times it has been delivered, this time included.
        stream_seq: Its sequence in the stream.
    """

    __slots__ = ("_msg", "data", "headers", "num_delivered", "stream_seq", "subject")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject: str = msg.subject
        self.data: bytes = msg.data
        self.headers: Headers = msg.headers
        meta = msg.metadata
        self.num_delivered: int = meta.num_delivered
        self.stream_seq: int = meta.sequence.stream

    async def ack(self) -> None:
        """Done: JetStream will not deliver it again."""
        await self._reply("ack", self._msg.ack)

    async def nak(self, delay: Optional[float] = None) -> None:
        """Failed: deliver it again after ``delay`` seconds (at once when ``None``)."""
        await self._reply("nak", lambda: self._msg.nak(delay=delay))

    async def in_progress(self) -> None:
        """Still working on it: restart its ack timer."""
        await self._reply("in_progress", self._msg.in_progress)

    async def term(self) -> None:
        """Never deliver it again (without counting it as done)."""
        await self._reply("term", self._msg.term)

    async def _reply(self, what: str, fn: Any) -> None:
        with mapped(f"{what} of a message from {self.subject}", absent=(nerr.MsgAlreadyAckdError,)):
            await fn()
            return
        logger.debug("%s of %s#%d after it was answered; ignored", what, self.subject, self.stream_seq)


class Puller:
    """A bound pull subscription on a durable consumer (see :meth:`JetStream.pull`)."""

    def __init__(self, sub: JetStreamContext.PullSubscription, consumer: str) -> None:
        self._sub = sub
        self.consumer = consumer

    async def fetch(self, batch: int, timeout: float) -> List[JsMessage]:
        """Up to ``batch`` messages; ``[]`` when none came within ``timeout`` seconds."""
        msgs: List[Msg] = []  # none came in time
        with mapped(f"fetch from consumer {self.consumer}", absent=(asyncio.TimeoutError, nerr.TimeoutError)):
            msgs = await self._sub.fetch(batch, timeout=timeout)
        return [JsMessage(msg) for msg in msgs]

    async def close(self) -> None:
        """Unsubscribe (messages still unacknowledged are redelivered after their ack wait)."""
        try:
            await self._sub.unsubscribe()
        except (nerr.Error, ValueError) as exc:
            logger.debug("unsubscribing the pull subscription of %s failed: %r", self.consumer, exc)


def _wrong_last_sequence(exc: BaseException) -> bool:
    """A KV delete at a revision that moved on: a 400 with these codes (kv_update gets a KeyWrongLastSequenceError)."""
    return isinstance(exc, jserr.BadRequestError) and exc.err_code in (10071, 10164)


def _no_message_found(exc: BaseException) -> bool:
    """A message delete of a message that is not there."""
    return isinstance(exc, jserr.APIError) and (exc.code == 404 or exc.err_code == 10057)


def _seconds(value: Optional[float]) -> float:
    return float(value or 0.0)


def _enum(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def _time(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value or "")


class JetStream:
    """JetStream through one Bus's connection. Every coroutine runs on the Bus's loop.

    Args:
        transport: The Bus's transport.
        timeout: Seconds for each JetStream API call.
    """

    def __init__(self, transport: Transport, timeout: float = 5.0) -> None:
        self._transport = transport
        self._api_prefix = api.DEFAULT_PREFIX
        self._js: JetStreamContext = transport._nc.jetstream(prefix=self._api_prefix, timeout=timeout)
        self._buckets: Dict[str, KeyValue] = {}
        self.timeout = timeout

    # -- streams ---------------------------------------------------------------

    async def _stream_info(self, name: str) -> Any:
        """nats-py's StreamInfo for ``name``, or ``None`` when it does not exist."""
        with mapped(f"read stream {name}", absent=(jserr.NotFoundError,)):
            return await self._js.stream_info(name)
        return None

    async def stream_settings(self, name: str) -> Optional[Dict[str, Any]]:
        """A stream's settings in natsbus's terms, or ``None`` when it does not exist."""
        info = await self._stream_info(name)
        if info is None:
            return None
        cfg = info.config
        return {
            "subjects": list(cfg.subjects or []),
            "retention": _enum(cfg.retention) or "limits",
            "storage": _enum(cfg.storage) or "file",
            "replicas": int(cfg.num_replicas or 1),
            "max_age": _seconds(cfg.max_age),
            "duplicate_window": _seconds(cfg.duplicate_window),
            "discard": _enum(cfg.discard) or "old",
            "history": int(cfg.max_msgs_per_subject or 0),
        }

    async def create_stream(self, name: str, settings: Dict[str, Any], description: str = "") -> None:
        """Create a stream from natsbus-named ``settings`` (subjects, retention, storage, ...)."""
        config = api.StreamConfig(
            name=name,
            description=description or None,
            subjects=list(settings["subjects"]),
            retention=api.RetentionPolicy(settings["retention"]),
            storage=api.StorageType(settings["storage"]),
            num_replicas=int(settings["replicas"]),
            max_age=float(settings["max_age"]) or None,
            duplicate_window=float(settings.get("duplicate_window") or 0.0),
            discard=api.DiscardPolicy(settings.get("discard", "old")),
        )
        with mapped(f"create stream {name}"):
            await self._js.add_stream(config)

    async def streams_capturing(self, subject: str) -> List[str]:
        """The streams whose subjects overlap ``subject`` (wildcards allowed)."""
        with mapped(f"list the streams capturing {subject}"):
            resp = await self._api_call("STREAM.NAMES", json.dumps({"subject": subject}).encode())
        return list(resp.get("streams") or [])

    async def _api_call(self, what: str, body: bytes) -> Dict[str, Any]:
        """One JetStream API call nats-py's public API lacks, as nats-py makes them.

        (``STREAM.NAMES`` with a subject: nats-py's manager offers it only
        as ``find_stream_name_by_subject``, which returns the first name.)
        """
        try:
            msg = await self._transport._nc.request(f"{self._api_prefix}.{what}", body, timeout=self.timeout)
        except nerr.NoRespondersError:
            raise jserr.ServiceUnavailableError() from None  # no JetStream, as nats-py's own calls say
        resp: Dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            jserr.APIError.from_error(resp["error"])  # raises the APIError subclass for its code
        return resp

    async def stream_state(self, name: str) -> Optional[StreamState]:
        """A stream's subjects and counts, or ``None`` when it does not exist."""
        info = await self._stream_info(name)
        if info is None:
            return None
        state = info.state
        return StreamState(
            name=name,
            subjects=list(info.config.subjects or []),
            messages=state.messages,
            first_seq=state.first_seq,
            last_seq=state.last_seq,
            consumer_count=state.consumer_count,
        )

    async def delete_stream(self, name: str) -> bool:
        """Delete a stream; ``False`` when it did not exist."""
        with mapped(f"delete stream {name}", absent=(jserr.NotFoundError,)):
            return bool(await self._js.delete_stream(name))
        return False

    # -- consumers ---------------------------------------------------------------

    @staticmethod
    def _consumer_filters(cfg: api.ConsumerConfig) -> List[str]:
        filters = list(cfg.filter_subjects or [])
        if cfg.filter_subject:
            filters.append(cfg.filter_subject)
        return filters

    async def consumer_settings(self, stream: str, name: str) -> Optional[Dict[str, Any]]:
        """A durable consumer's settings in natsbus's terms, or ``None`` when it does not exist."""
        info = None
        with mapped(f"read consumer {name} of stream {stream}", absent=(jserr.NotFoundError,)):
            info = await self._js.consumer_info(stream, name)
        if info is None:
            return None
        cfg = info.config
        return {
            "filter_subjects": self._consumer_filters(cfg),
            "ack_policy": _enum(cfg.ack_policy),
            "deliver_policy": _enum(cfg.deliver_policy),
            "ack_wait": _seconds(cfg.ack_wait),
            "max_deliver": int(cfg.max_deliver or -1),
            "max_ack_pending": int(cfg.max_ack_pending or 0),
            "push": bool(cfg.deliver_subject),
        }

    async def create_consumer(self, stream: str, name: str, settings: Dict[str, Any], description: str = "") -> None:
        """Create (or, where the server allows it, update) a durable pull consumer."""
        filters = list(settings["filter_subjects"])
        config = api.ConsumerConfig(
            name=name,
            durable_name=name,
            description=description or None,
            deliver_policy=api.DeliverPolicy(settings["deliver_policy"]),
            ack_policy=api.AckPolicy(settings["ack_policy"]),
            ack_wait=float(settings["ack_wait"]),
            max_deliver=int(settings["max_deliver"]),
            max_ack_pending=int(settings["max_ack_pending"]),
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )
        with mapped(f"create consumer {name} on stream {stream}"):
            await self._js.add_consumer(stream, config)

    async def consumers(self, stream: str) -> List[ConsumerState]:
        """Every consumer of ``stream`` with its progress."""
        infos: List[api.ConsumerInfo] = []  # no such stream
        with mapped(f"list the consumers of stream {stream}", absent=(jserr.NotFoundError,)):
            infos = await self._js.consumers_info(stream)
        return [
            ConsumerState(
                name=info.name,
                stream=stream,
                filter_subjects=self._consumer_filters(info.config),
                num_pending=info.num_pending or 0,
                num_ack_pending=info.num_ack_pending or 0,
                num_redelivered=info.num_redelivered or 0,
                num_waiting=info.num_waiting or 0,
                ack_floor=info.ack_floor.stream_seq if info.ack_floor else 0,
            )
            for info in infos
        ]

    async def delete_consumer(self, stream: str, name: str) -> bool:
        """Delete a consumer; ``False`` when it did not exist."""
        with mapped(f"delete consumer {name} of stream {stream}", absent=(jserr.NotFoundError,)):
            return bool(await self._js.delete_consumer(stream, name))
        return False

    async def pull(self, stream: str, consumer: str) -> Puller:
        """Bind a pull subscription to an existing durable consumer."""
        with mapped(f"bind to consumer {consumer} of stream {stream}"):
            sub = await self._js.pull_subscribe_bind(consumer, stream=stream)
        return Puller(sub, consumer)

    # -- key-value buckets ------------------------------------------------------------

    async def bucket_settings(self, bucket: str) -> Optional[Dict[str, Any]]:
        """A KV bucket's settings (ttl, history, replicas, storage), or ``None``."""
        settings = await self.stream_settings(f"KV_{bucket}")
        if settings is None:
            return None
        return {
            "ttl": settings["max_age"],
            "history": settings["history"],
            "replicas": settings["replicas"],
            "storage": settings["storage"],
        }

    async def create_bucket(self, bucket: str, settings: Dict[str, Any], description: str = "") -> None:
        """Create a KV bucket (ttl, history, replicas, storage)."""
        config = api.KeyValueConfig(
            bucket=bucket,
            description=description or None,
            ttl=float(settings["ttl"]) or None,
            history=int(settings["history"]),
            replicas=int(settings["replicas"]),
            storage=api.StorageType(settings["storage"]),
        )
        with mapped(f"create key-value bucket {bucket}"):
            self._buckets[bucket] = await self._js.create_key_value(config)

    async def _bucket(self, bucket: str) -> Optional[KeyValue]:
        kv = self._buckets.get(bucket)
        if kv is None:
            with mapped(f"open key-value bucket {bucket}", absent=(jserr.BucketNotFoundError,)):
                kv = self._buckets[bucket] = await self._js.key_value(bucket)
        return kv

    async def _kv(self, bucket: str) -> KeyValue:
        kv = await self._bucket(bucket)
        if kv is None:
            raise JetStreamError(f"key-value bucket {bucket} does not exist", code=404)
        return kv

    async def kv_get(self, bucket: str, key: str) -> Optional[KvEntry]:
        """The key's value, or ``None`` when the key (or the whole bucket) does not exist."""
        kv = await self._bucket(bucket)
        if kv is None:
            return None
        with mapped(f"read {key} from bucket {bucket}", absent=(jserr.KeyNotFoundError,)):
            entry = await kv.get(key)
            return KvEntry(entry.value or b"", entry.revision or 0)
        return None

    async def kv_create(self, bucket: str, key: str, value: bytes) -> Optional[int]:
        """Store ``value`` only if ``key`` has none; its revision, or ``None`` when the key exists."""
        kv = await self._kv(bucket)
        with mapped(f"create {key} in bucket {bucket}", absent=(jserr.KeyWrongLastSequenceError,)):
            return int(await kv.create(key, value))
        return None

    async def kv_update(self, bucket: str, key: str, value: bytes, revision: int) -> Optional[int]:
        """Store ``value`` only if ``key`` is still at ``revision``; the new one, or ``None``."""
        kv = await self._kv(bucket)
        with mapped(f"update {key} in bucket {bucket}", absent=(jserr.KeyWrongLastSequenceError,)):
            return int(await kv.update(key, value, last=revision))
        return None

    async def kv_put(self, bucket: str, key: str, value: bytes) -> int:
        """Store ``value`` whatever is there; the new revision."""
        kv = await self._kv(bucket)
        with mapped(f"put {key} in bucket {bucket}"):
            revision = int(await kv.put(key, value))
        return revision

    async def kv_delete(self, bucket: str, key: str, revision: Optional[int] = None) -> bool:
        """Delete ``key`` (only if still at ``revision`` when given); ``False`` if it moved on."""
        kv = await self._kv(bucket)
        with mapped(
            f"delete {key} from bucket {bucket}",
            absent=(jserr.KeyWrongLastSequenceError,),
            absent_if=_wrong_last_sequence,
        ):
            if revision is None:
                return bool(await kv.delete(key))
            return bool(await kv.delete(key, last=revision))
        return False

    # -- messages --------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: bytes,
        headers: Headers = None,
        *,
        msg_id: Optional[str] = None,
        stream: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> PubAck:
        """Publish and wait until JetStream stored it (its ack).

        Args:
            subject: Where.
            data: The body.
            headers: Extra headers.
            msg_id: The ``Nats-Msg-Id``: JetStream drops a second message
                with the same id within the stream's duplicate window.
            stream: The stream that must store it (``Nats-Expected-Stream``);
                any other stream capturing the subject refuses it.
            timeout: Seconds to wait for the ack.
        """
        hdrs = dict(headers or {})
        if msg_id:
            hdrs[MSG_ID_HEADER] = msg_id
        with mapped(f"publish to {subject}"):
            ack = await self._js.publish(
                subject, data, timeout=timeout or self.timeout, stream=stream, headers=hdrs or None
            )
        return PubAck(ack.stream, ack.seq, bool(ack.duplicate))

    async def get_message(self, stream: str, seq: int) -> Optional[StoredMessage]:
        """The message at ``seq``, or ``None`` when there is none (deleted, or past the end)."""
        return await self._get(stream, seq, None)

    async def next_message(self, stream: str, seq: int, subject: str) -> Optional[StoredMessage]:
        """The first message at or after ``seq`` on ``subject`` (wildcards allowed), or ``None``."""
        return await self._get(stream, seq, subject)

    async def _get(self, stream: str, seq: int, subject: Optional[str]) -> Optional[StoredMessage]:
        raw = None
        with mapped(f"read message {seq} of stream {stream}", absent=(jserr.NotFoundError,)):
            if subject is None:
                raw = await self._js.get_msg(stream, seq=seq)
            else:
                raw = await self._js.get_msg(stream, seq=seq, subject=subject, next=True)
        if raw is None:
            return None
        return StoredMessage(
            stream=stream,
            seq=int(raw.seq or 0),
            subject=raw.subject or "",
            data=raw.data or b"",
            headers=dict(raw.headers or {}),
            time=_time(raw.time),
        )

    async def delete_message(self, stream: str, seq: int) -> bool:
        """Delete one message from a stream; ``False`` when it was not there."""
        with mapped(
            f"delete message {seq} of stream {stream}", absent=(jserr.NotFoundError,), absent_if=_no_message_found
        ):
            return bool(await self._js.delete_msg(stream, seq))
        return False


_CONTEXTS: weakref.WeakKeyDictionary[Transport, JetStream] = weakref.WeakKeyDictionary()


def jetstream_for(connection: Connection) -> JetStream:
    """The :class:`JetStream` of the connection's current transport (one per transport)."""
    transport = connection.live_transport()
    js = _CONTEXTS.get(transport)
    if js is None:
        if not transport.started:  # connect_in_background, not in yet: no client to build it on
            raise transport.not_connected_error("JetStream", action="use")
        # Built on the loop thread: nats-py's JetStreamContext makes asyncio
        # objects that Python 3.9 binds to the loop of the thread building them.
        if transport.portal.in_loop_thread():
            made = JetStream(transport)
        else:

            async def make() -> JetStream:
                return JetStream(transport)

            made = transport.portal.call(make, timeout=30.0)
        js = _CONTEXTS.setdefault(transport, made)
    return js
