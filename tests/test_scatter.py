"""Scatter-gather: QueryBus.ask_all() asks every instance serving a query, against a real nats-server."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import attrs
import pytest

from natsbus import (
    Bus,
    BusyError,
    ConfigError,
    InstanceResult,
    MessageTypeError,
    NatsServer,
    NotFoundError,
    Query,
    QueryBus,
    WorkerPool,
    create_request_envelope,
    decode_response,
    scatter_subject,
)
from natsbus.envelope import INSTANCE_HEADER, SERVICE_HEADER, new_id
from natsbus.messages import Kind
from natsbus.testing import InMemoryBus

SERVICE = "scatter-svc"


@attrs.frozen
class Snapshot:
    label: str
    answered: int


@attrs.frozen
class ScatterProbeQuery(Query[Snapshot]):
    fail_on: str = ""


@attrs.frozen
class UnservedScatterQuery(Query[Snapshot]):
    pass


@attrs.define
class Instance:
    """One pool of the service, on a connection of its own, and what its handler saw."""

    label: str
    pool: WorkerPool
    answered: int = 0
    gate: Optional[threading.Event] = None  # when set, the handler waits for it
    started: threading.Event = attrs.Factory(threading.Event)

    @property
    def id(self) -> str:
        return self.pool.micro.id


def _handler(instance: Instance) -> Callable[[ScatterProbeQuery], Snapshot]:
    def probe(query: ScatterProbeQuery) -> Snapshot:
        instance.started.set()
        if instance.gate is not None:
            instance.gate.wait(30)
        if query.fail_on == instance.label:
            raise NotFoundError(f"nothing here on {instance.label}")
        instance.answered += 1
        return Snapshot(instance.label, instance.answered)

    return probe


@contextlib.contextmanager
def _instances(
    nats_url: str, count: int = 3, gates: Optional[Dict[str, threading.Event]] = None, **pool_options: int
) -> Iterator[List[Instance]]:
    with contextlib.ExitStack() as stack:
        instances = []
        for i in range(count):
            label = f"p{i}"
            bus = stack.enter_context(Bus(nats_url))
            pool = WorkerPool(bus, service_id=SERVICE, **pool_options)
            instance = Instance(label, pool, gate=(gates or {}).get(label))
            pool.register(_handler(instance), message_type=ScatterProbeQuery)
            pool.start()
            stack.callback(pool.stop, 5.0)
            instances.append(instance)
        try:
            yield instances
        finally:
            for gate in (gates or {}).values():
                gate.set()  # let blocked handlers finish before their pools drain


@pytest.fixture()
def three(nats_url: str) -> Iterator[List[Instance]]:
    with _instances(nats_url) as instances:
        yield instances


def test_ask_all_returns_the_typed_result_of_every_instance(bus: Bus, three: List[Instance]) -> None:
    results = QueryBus(bus).ask_all(ScatterProbeQuery(), timeout=2.0)

    by_id = {instance.id: instance for instance in three}
    assert sorted(r.instance_id for r in results) == sorted(by_id)
    for result in results:
        assert result.error is None and result.ok
        assert result.service == SERVICE
        assert result.result == Snapshot(by_id[result.instance_id].label, 1)
        assert result.unwrap() == result.result
    # The instance ids are the ones the instances report to $SRV.PING.
    assert sorted(p.id for p in bus.ping(SERVICE)) == sorted(r.instance_id for r in results)


def test_ask_all_stops_after_max_replies(bus: Bus, three: List[Instance]) -> None:
    # With an hour's timeout, only max_replies can end this call in time.
    results = QueryBus(bus).ask_all(ScatterProbeQuery(), timeout=3600.0, max_replies=2)

    assert len(results) == 2
    assert {r.instance_id for r in results} < {instance.id for instance in three}
    assert all(isinstance(r.result, Snapshot) for r in results)


def test_ask_all_stops_when_no_reply_came_for_stall_seconds(bus: Bus, nats_url: str) -> None:
    gate = threading.Event()
    with _instances(nats_url, gates={"p2": gate}) as instances:
        stuck = instances[2]
        # p2's handler waits for the gate, which opens only after ask_all()
        # returned: with an hour's timeout, only the stall can end the call.
        results = QueryBus(bus).ask_all(ScatterProbeQuery(), timeout=3600.0, stall=1.0)
        assert stuck.started.is_set()  # it was asked; it just did not answer
        gate.set()

    ids = {r.instance_id for r in results}
    assert stuck.id not in ids
    assert ids and ids <= {instances[0].id, instances[1].id}
    assert all(r.ok for r in results)


def test_ask_all_reports_errors_per_instance(bus: Bus, three: List[Instance]) -> None:
    results = QueryBus(bus).ask_all(ScatterProbeQuery(fail_on="p1"), timeout=30.0, max_replies=3)

    by_id: Dict[str, InstanceResult[Snapshot]] = {r.instance_id: r for r in results}
    assert sorted(by_id) == sorted(instance.id for instance in three)
    failed = by_id[three[1].id]
    assert isinstance(failed.error, NotFoundError)
    assert str(failed.error) == "nothing here on p1"
    assert (failed.ok, failed.result) == (False, None)
    with pytest.raises(NotFoundError):
        failed.unwrap()
    assert [by_id[i.id].result for i in (three[0], three[2])] == [Snapshot("p0", 1), Snapshot("p2", 1)]


def test_ask_all_with_nobody_serving_returns_no_results_at_once(bus: Bus) -> None:
    # An hour's timeout: the server's "no responders" ends the call.
    assert QueryBus(bus).ask_all(UnservedScatterQuery(), timeout=3600.0) == []


def test_ordinary_ask_stays_load_balanced_across_the_instances(bus: Bus, nats_url: str) -> None:
    queries = QueryBus(bus)
    with _instances(nats_url) as instances:
        for _ in range(30):
            queries.ask(ScatterProbeQuery())
    # Every pool is stopped (drained) here: each ask ran on exactly one instance.
    per_pool = [instance.pool.stats().endpoint("ScatterProbeQuery") for instance in instances]
    assert sum(e.num_requests for e in per_pool if e is not None) == 30
    assert sum(instance.answered for instance in instances) == 30


def test_a_busy_instance_refuses_with_its_instance_id(bus: Bus, nats_url: str) -> None:
    gate = threading.Event()
    with _instances(nats_url, count=1, gates={"p0": gate}, max_workers=1, max_pending=0) as (only,):
        queries = QueryBus(bus)
        first = queries.submit(ScatterProbeQuery(), timeout=30.0)  # takes the only thread
        assert only.started.wait(10)
        results = queries.ask_all(ScatterProbeQuery(), timeout=30.0, max_replies=1)
        gate.set()
        assert first.result(10) == Snapshot("p0", 1)

    (refused,) = results
    assert refused.instance_id == only.id
    assert isinstance(refused.error, BusyError)


def test_scatter_replies_are_ordinary_envelopes_with_the_instance_headers(bus: Bus, three: List[Instance]) -> None:
    # What a client in another language does: a plain request to the scatter subject.
    envelope = create_request_envelope("ScatterProbeQuery", new_id(Kind.QUERY), "raw", {}, kind=Kind.QUERY)
    reply = bus.request(scatter_subject("ScatterProbeQuery"), envelope.to_bytes(), timeout=10.0)

    response = decode_response(reply.data, Kind.QUERY)
    assert (response.success, response.id, response.error) == (True, envelope.id, None)
    assert sorted(json.loads(reply.data)) == ["error", "payload", "query_id", "success", "timestamp"]
    headers = reply.headers or {}
    assert headers[SERVICE_HEADER] == SERVICE
    by_id = {instance.id: instance.label for instance in three}
    assert response.payload == {"label": by_id[headers[INSTANCE_HEADER]], "answered": 1}


def test_scatter_subject_cannot_collide_with_query_subjects() -> None:
    assert scatter_subject("all") == "scatter.queries.all"
    assert not scatter_subject("GetUserQuery").startswith(("queries.", "commands."))
    with pytest.raises(MessageTypeError):
        scatter_subject("a.b")


def test_ask_all_refuses_bad_arguments(bus: Bus) -> None:
    queries = QueryBus(bus)
    for kwargs in ({"timeout": None}, {"max_replies": 0}, {"stall": 0.0}):
        with pytest.raises(ConfigError):
            queries.ask_all(ScatterProbeQuery(), **kwargs)  # type: ignore[arg-type]
    with InMemoryBus() as memory, pytest.raises(ConfigError, match=r"needs a natsbus\.Bus"):
        memory.queries.ask_all(ScatterProbeQuery(), timeout=1.0)


def test_a_pool_denied_the_scatter_subject_still_serves_ask(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "server.conf"
    config.write_text(
        "authorization { users = ["
        ' { user: w, password: w, permissions: { subscribe: { deny: ["scatter.queries.>"] } } },'
        " { user: c, password: c } ] }"
    )
    with (
        NatsServer(jetstream=False, args=["--config", str(config)]) as server,
        Bus(server.url, user="w", password="w") as serving,
        Bus(server.url, user="c", password="c") as calling,
    ):
        pool = WorkerPool(serving, service_id=SERVICE)
        pool.register(_handler(Instance("p0", pool)), message_type=ScatterProbeQuery)
        with caplog.at_level(logging.WARNING, logger="natsbus.worker"), pool:
            queries = QueryBus(calling, timeout=10.0)
            assert queries.ask(ScatterProbeQuery()) == Snapshot("p0", 1)
            assert queries.ask_all(ScatterProbeQuery(), timeout=3600.0) == []  # nobody subscribes it
    assert any("scatter.queries.ScatterProbeQuery" in r.getMessage() for r in caplog.records)
