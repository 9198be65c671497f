"""nats-py's errors become natsbus's in one place: the ``mapped`` context managers.

Unit tests of the context managers themselves, then every JetStream call
against a real server: what it answers when the thing is absent, and the
exact natsbus error (text, code) when the server refuses.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import nats.errors as nerr
import nats.js.errors as jserr
import pytest

from natsbus import Bus, ConfigError, JetStreamError, NoHandlerError, TransportError
from natsbus._transport import errors as transport_errors
from natsbus._transport.errors import mapped, mapped_core
from natsbus._transport.jetstream import JetStream, jetstream_for

pytestmark = pytest.mark.timeout(60)


# -- the context managers -----------------------------------------------------------


def _raising(exc: BaseException) -> Callable[[], None]:
    def fail() -> None:
        raise exc

    return fail


def test_mapped_raises_the_natsbus_error_chained_to_the_nats_one() -> None:
    cause = jserr.APIError(code=400, err_code=10058, description="stream name in use")
    with pytest.raises(JetStreamError) as info, mapped("create stream S"):
        raise cause
    assert str(info.value) == "create stream S: stream name in use (code 400, error 10058)"
    assert (info.value.code, info.value.err_code) == (400, 10058)
    assert info.value.__cause__ is cause


def test_mapped_maps_an_asyncio_timeout_as_jetstream_did_not_answer() -> None:
    expected = r"^read stream S: JetStream did not answer in time$"
    with pytest.raises(JetStreamError, match=expected) as info, mapped("read stream S"):
        raise TimeoutError()
    assert info.value.code == 408


def test_mapped_lets_an_absent_case_fall_through_to_the_code_after_the_block() -> None:
    def delete(fail: Optional[BaseException]) -> bool:
        with mapped("delete stream S", absent=(jserr.NotFoundError,)):
            if fail is not None:
                raise fail
            return True
        return False  # it did not exist

    assert delete(None) is True
    assert delete(jserr.NotFoundError(code=404, err_code=10059, description="stream not found")) is False
    with pytest.raises(JetStreamError, match=r"^delete stream S: server error"):
        delete(jserr.ServerError(code=500, description="server error"))


def test_mapped_absent_if_decides_on_the_error_itself() -> None:
    def wrong_last_sequence(exc: BaseException) -> bool:
        return isinstance(exc, jserr.BadRequestError) and exc.err_code == 10071

    def delete(fail: BaseException) -> bool:
        with mapped("delete k from bucket B", absent_if=wrong_last_sequence):
            raise fail
        return False

    assert delete(jserr.BadRequestError(code=400, err_code=10071, description="wrong last sequence")) is False
    with pytest.raises(JetStreamError, match=r"\(code 400, error 10001\)$"):
        delete(jserr.BadRequestError(code=400, err_code=10001, description="bad request"))


def test_mapped_leaves_errors_that_are_not_nats_ones_alone() -> None:
    with pytest.raises(KeyError), mapped("anything", absent_if=lambda exc: True):
        raise KeyError("x")
    with pytest.raises(asyncio.CancelledError), mapped("anything"):
        raise asyncio.CancelledError()


def test_mapped_core_names_the_subject_as_map_error_does() -> None:
    with pytest.raises(NoHandlerError) as info, mapped_core("commands.X"):
        raise nerr.NoRespondersError()
    assert info.value.subject == "commands.X"
    assert str(info.value) == "nats: no responders available for request (subject commands.X)"
    with pytest.raises(ConfigError), mapped_core("bad subject"):
        raise nerr.BadSubjectError()


def test_mapped_core_leaves_a_plain_asyncio_timeout_alone_as_before() -> None:
    with pytest.raises(asyncio.TimeoutError), mapped_core("commands.X"):
        raise TimeoutError()
    with pytest.raises(TransportError), mapped_core("commands.X"):
        raise nerr.TimeoutError()


def test_no_call_site_maps_nats_errors_by_hand() -> None:
    here = Path(transport_errors.__file__).resolve().parent
    by_hand = {
        path.name: len(re.findall(r"raise map_(?:js_)?error\(", path.read_text()))
        for path in here.glob("*.py")
        if path.name != "errors.py"
    }
    assert {name: n for name, n in by_hand.items() if n} == {}


# -- every JetStream call, against the server ------------------------------------------


@pytest.fixture()
def js(bus: Bus) -> JetStream:
    return jetstream_for(bus)


@pytest.fixture()
def stream(bus: Bus, js: JetStream) -> Iterator[str]:
    name = f"MAP_{uuid.uuid4().hex[:8]}"
    settings = {
        "subjects": [f"{name.lower()}.>"],
        "retention": "limits",
        "storage": "memory",
        "replicas": 1,
        "max_age": 0.0,
    }
    bus.run(lambda: js.create_stream(name, settings))
    try:
        yield name
    finally:
        bus.run(lambda: js.delete_stream(name))


@pytest.fixture()
def bucket(bus: Bus, js: JetStream) -> Iterator[str]:
    name = f"map_{uuid.uuid4().hex[:8]}"
    bus.run(lambda: js.create_bucket(name, {"ttl": 0.0, "history": 1, "replicas": 1, "storage": "memory"}))
    try:
        yield name
    finally:
        bus.run(lambda: js.delete_stream(f"KV_{name}"))


def _refused(bus: Bus, call: Callable[[], Any]) -> JetStreamError:
    with pytest.raises(JetStreamError) as info:
        bus.run(call)
    return info.value


def test_jetstream_calls_on_things_that_do_not_exist_answer_none_false_or_empty(
    bus: Bus, js: JetStream, stream: str
) -> None:
    assert bus.run(lambda: js.stream_settings("NO_SUCH_STREAM")) is None
    assert bus.run(lambda: js.stream_state("NO_SUCH_STREAM")) is None
    assert bus.run(lambda: js.delete_stream("NO_SUCH_STREAM")) is False
    assert bus.run(lambda: js.consumer_settings(stream, "nobody")) is None
    assert bus.run(lambda: js.consumers("NO_SUCH_STREAM")) == []
    assert bus.run(lambda: js.delete_consumer(stream, "nobody")) is False
    assert bus.run(lambda: js.bucket_settings("no_such_bucket")) is None
    assert bus.run(lambda: js.kv_get("no_such_bucket", "k")) is None
    assert bus.run(lambda: js.get_message(stream, 1)) is None
    assert bus.run(lambda: js.next_message(stream, 1, f"{stream.lower()}.x")) is None
    assert bus.run(lambda: js.streams_capturing("nothing.captures.this")) == []


def test_jetstream_kv_answers_the_optimistic_concurrency_cases(bus: Bus, js: JetStream, bucket: str) -> None:
    assert bus.run(lambda: js.kv_get(bucket, "k")) is None
    first = bus.run(lambda: js.kv_create(bucket, "k", b"1"))
    assert isinstance(first, int)
    assert bus.run(lambda: js.kv_create(bucket, "k", b"again")) is None  # the key exists
    assert bus.run(lambda: js.kv_update(bucket, "k", b"2", first + 100)) is None  # the revision moved
    second = bus.run(lambda: js.kv_update(bucket, "k", b"2", first))
    assert bus.run(lambda: js.kv_get(bucket, "k")) == (b"2", second)
    assert bus.run(lambda: js.kv_delete(bucket, "k", first)) is False  # not at that revision any more
    assert bus.run(lambda: js.kv_delete(bucket, "k", second)) is True
    assert bus.run(lambda: js.kv_get(bucket, "k")) is None


def test_jetstream_calls_the_server_refuses_raise_jetstream_errors_naming_the_call(
    bus: Bus, js: JetStream, stream: str
) -> None:
    overlap = {"subjects": [f"{stream.lower()}.>"], "retention": "limits", "storage": "memory", "replicas": 1}
    error = _refused(bus, lambda: js.create_stream("MAP_OVERLAP", {**overlap, "max_age": 0.0}))
    assert re.fullmatch(r"create stream MAP_OVERLAP: .+ \(code 400, error 10065\)", str(error)), str(error)
    assert (error.code, error.err_code) == (400, 10065)

    settings = {
        "filter_subjects": ["elsewhere.>"],
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": 30.0,
        "max_deliver": -1,
        "max_ack_pending": 10,
    }
    error = _refused(bus, lambda: js.create_consumer("NO_SUCH_STREAM", "c", settings))
    assert re.fullmatch(r"create consumer c on stream NO_SUCH_STREAM: .+ \(code 404, error 10059\)", str(error))

    error = _refused(bus, lambda: js.publish("captured.by.no.stream", b"x"))
    assert str(error) == (
        "publish to captured.by.no.stream: no JetStream stream answered; is JetStream enabled on the server?"
    )
    assert error.code == 503

    error = _refused(bus, lambda: js.kv_put("no_such_bucket", "k", b"x"))
    assert str(error) == "key-value bucket no_such_bucket does not exist"
    assert error.code == 404
