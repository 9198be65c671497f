"""Thousands of malformed messages against ``natsbus worker`` in a real subprocess.

Every message with a reply subject must get a well-formed error envelope;
messages without one are dropped; the worker keeps serving valid requests
and its memory stays bounded.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
from daemon import WorkerProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_app import Add

from natsbus import Bus, CommandBus, NatsServer

pytestmark = pytest.mark.timeout(240)

SUBJECTS = {"commands.Add": "command", "commands.Sleep": "command", "queries.Remaining": "query"}


@pytest.fixture(scope="module")
def fuzz_worker(nats_server: NatsServer) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(nats_server.url).wait_ready()
    try:
        yield worker
    finally:
        worker.kill()


@pytest.fixture(scope="module")
def fuzz_bus(nats_server: NatsServer) -> Iterator[Bus]:
    with Bus(nats_server.url) as bus:
        yield bus


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def envelope_with_a_flaw(draw: Any) -> bytes:
    """Envelope-shaped JSON where at least one thing is wrong."""
    envelope: dict = {  # type: ignore[type-arg]
        "command_type": "Add",
        "command_id": "cmd-fuzz",
        "service_id": "fuzz",
        "timestamp": "2025-11-29T12:34:56Z",
        "payload": {"a": 1, "b": 2},
    }
    flaw = draw(st.sampled_from(["drop", "retype", "payload", "mismatch", "huge", "nested"]))
    if flaw == "drop":
        del envelope[draw(st.sampled_from(["command_type", "command_id", "payload"]))]
    elif flaw == "retype":
        key = draw(st.sampled_from(["command_type", "command_id"]))
        envelope[key] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif flaw == "payload":
        envelope["payload"] = draw(
            st.one_of(
                json_values.filter(lambda v: not isinstance(v, dict)),
                st.fixed_dictionaries({"a": st.text(max_size=5)}),
                st.fixed_dictionaries({"a": st.integers(), "b": st.text(max_size=5) | st.booleans() | st.none()}),
            )
        )
    elif flaw == "mismatch":
        envelope["command_type"] = draw(st.text(min_size=1, max_size=20).filter(lambda t: t not in SUBJECT_TYPES))
    elif flaw == "huge":
        envelope["payload"] = {"a": "x" * draw(st.integers(100_000, 900_000)), "b": 1}
    else:
        depth = draw(st.integers(1_000, 200_000))
        return json.dumps({**envelope, "payload": None}).encode().replace(b"null", b"[" * depth + b"]" * depth)
    return json.dumps(envelope).encode()


SUBJECT_TYPES = {"Add", "Sleep", "Remaining"}

malformed = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=1, max_size=300).map(lambda b: b"\xff\xfe" + b),  # never valid UTF-8
    json_values.map(lambda v: json.dumps(v).encode()),
    envelope_with_a_flaw(),
)


@settings(
    max_examples=600,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bodies=st.lists(malformed, min_size=1, max_size=6), subject=st.sampled_from(sorted(SUBJECTS)))
def test_every_malformed_request_gets_an_error_envelope(
    fuzz_worker: WorkerProcess,
    fuzz_bus: Bus,
    bodies: list,
    subject: str,  # type: ignore[type-arg]
) -> None:
    id_key = f"{SUBJECTS[subject]}_id"
    for body in bodies:
        reply = fuzz_bus.request(subject, body, timeout=10)
        response = json.loads(reply.data)
        assert set(response) == {"success", id_key, "timestamp", "payload", "error"}, response
        assert response["success"] is False
        assert response["payload"] is None
        assert response["error"].startswith("Invalid request format: "), response["error"]
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "400"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_worker_survives_garbage_without_reply_subjects_and_stays_bounded(
    fuzz_worker: WorkerProcess, fuzz_bus: Bus
) -> None:
    commands = CommandBus(fuzz_bus)
    huge = b'{"command_type":"Add","command_id":"c","payload":{"a":"' + b"x" * 900_000 + b'"}}'
    garbage = [b"", b"\xff", b"[]", b"{}", huge, b"[" * 100_000]

    def round_of_garbage() -> None:
        for i in range(300):
            fuzz_bus.publish("commands.Add", garbage[i % len(garbage)])  # no reply subject
            fuzz_bus.request("commands.Add", garbage[i % len(garbage)], timeout=10)
        fuzz_bus.flush()

    round_of_garbage()  # warm up: allocator pools, caches
    before = _rss_kib(fuzz_worker.proc.pid)
    peak = before
    for _ in range(6):
        round_of_garbage()
        peak = max(peak, _rss_kib(fuzz_worker.proc.pid))
    # Each round sends about 90 MB of garbage (100 payloads of 900 kB): a
    # worker that kept it would grow by over 500 MB here. glibc's per-thread
    # arenas keep some freed memory around, so the bound allows for that.
    assert peak - before < 200 * 1024, f"worker RSS grew from {before} KiB to {peak} KiB"
    assert commands.execute(Add(40, 2)) == 42
    assert fuzz_worker.proc.poll() is None
