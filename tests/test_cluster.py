"""A 3-node NATS cluster on loopback: calls cross nodes, and clients fail over when their node dies."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Callable, Iterator, List, Optional, Tuple

import attrs
import pytest
from waiting import wait_until

from natsbus import (
    Bus,
    Command,
    CommandBus,
    ConnectionState,
    NatsCluster,
    NoHandlerError,
    RequestTimeoutError,
    WorkerPool,
)
from natsbus.server import ServerError

#: Seconds a call may overrun its own timeout (scheduling on a busy 2-core box).
GRACE = 0.75


@attrs.frozen
class WhereAmI(Command[str]):
    text: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3, name="natsbus-test") as c:
        yield c


def _serve(url: str, service: str) -> Tuple[Bus, WorkerPool]:
    bus = Bus(url, reconnect_time_wait=0.2, name=f"{service}-worker")
    pool = WorkerPool(bus, service_id=service, max_workers=4)

    @pool.register
    def where(cmd: WhereAmI) -> str:
        return f"{cmd.text} via {bus.connected_url}"

    pool.start()
    return bus, pool


def _until_served(call: Callable[[], str], timeout: float = 10.0) -> str:
    """Call until a worker answers: interest crosses routes asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (NoHandlerError, RequestTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_the_cluster_forms_and_knows_its_nodes(cluster: NatsCluster) -> None:
    assert len(cluster.urls) == 3 and len(set(cluster.urls)) == 3
    assert all(cluster.routed_peers(i) == 2 for i in range(3))
    assert [cluster.node_of(url) for url in cluster.urls] == [0, 1, 2]
    with pytest.raises(ServerError, match="not a client URL"):
        cluster.node_of("nats://127.0.0.1:1")


def test_clients_and_workers_on_different_nodes_reach_each_other(cluster: NatsCluster) -> None:
    worker_bus, pool = _serve(cluster.urls[1], "cross-node")
    clients = [Bus(url) for url in (cluster.urls[0], cluster.urls[2])]
    try:
        for client in clients:
            answer = _until_served(lambda: CommandBus(client, timeout=2).execute(WhereAmI("hi")))  # noqa: B023
            assert answer == f"hi via {cluster.urls[1]}"
            assert client.connected_url != worker_bus.connected_url
    finally:
        pool.stop(drain_timeout=5)
        worker_bus.close()
        for client in clients:
            client.close()


@attrs.define
class Outcome:
    started: float
    ended: float
    error: Optional[BaseException]


@pytest.mark.slow
def test_killing_a_node_moves_its_clients_and_workers_and_calls_go_on(cluster: NatsCluster) -> None:
    client = Bus(cluster.url, reconnect_time_wait=0.2, name="failover-client")
    client_node = cluster.node_of(client.connected_url)
    worker_node = (client_node + 1) % 3
    worker_bus, pool = _serve(cluster.urls[worker_node], "failover")
    timeout = 2.0
    commands = CommandBus(client, timeout=timeout)
    outcomes: List[Outcome] = []
    lock = threading.Lock()
    stop = threading.Event()

    def caller(n: int) -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            error: Optional[BaseException] = None
            try:
                assert commands.execute(WhereAmI(f"{n}-{i}")).startswith(f"{n}-{i} via ")
            except BaseException as exc:
                error = exc
            with lock:
                outcomes.append(Outcome(started, time.monotonic(), error))
            i += 1

    def served_since(moment: float) -> int:
        with lock:
            return sum(1 for o in outcomes if o.error is None and o.started > moment)

    _until_served(lambda: commands.execute(WhereAmI("warm-up")))
    callers = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    try:
        for t in callers:
            t.start()
        wait_until(lambda: served_since(0.0) >= 20, 15.0, "calls flow")

        # The client's node dies: the client moves to another node.
        cluster.kill(client_node)
        killed_at = time.monotonic()
        wait_until(
            lambda: client.is_connected and client.connected_url != cluster.nodes[client_node].url,
            15.0,
            "moved",
        )
        assert cluster.node_of(client.connected_url) != client_node
        wait_until(lambda: served_since(killed_at) >= 20, 15.0, "calls go on after the client moved")

        # The worker's node dies: the pool moves and re-subscribes there.
        moved_client_node = cluster.node_of(client.connected_url)
        cluster.kill(worker_node)
        killed_at = time.monotonic()
        wait_until(
            lambda: worker_bus.is_connected and worker_bus.connected_url != cluster.nodes[worker_node].url,
            15.0,
            "w",
        )
        wait_until(lambda: served_since(killed_at) >= 20, 15.0, "calls go on after the worker moved")
        assert pool.running
        if moved_client_node != worker_node:
            assert cluster.node_of(client.connected_url) == moved_client_node
    finally:
        stop.set()
        for t in callers:
            t.join(timeout + GRACE + 5)
        pool.stop(drain_timeout=5)
        worker_bus.close()
        client.close()
        for index in (client_node, worker_node):
            if not cluster.nodes[index].running:
                cluster.start_node(index)  # rejoin, for the module's other tests
    assert not [t for t in callers if t.is_alive()], "a call hung"
    assert max(o.ended - o.started for o in outcomes) <= timeout + GRACE
    errors = [o.error for o in outcomes if o.error is not None]
    assert [e for e in errors if not isinstance(e, (RequestTimeoutError, NoHandlerError))] == []
    assert all(cluster.routed_peers(i) == 2 for i in range(3))


@pytest.mark.slow
def test_calls_made_while_a_client_fails_over_succeed_within_the_default_reconnect_grace(cluster: NatsCluster) -> None:
    # Every default (reconnect_time_wait 0.5 s, reconnect_grace 1 s): the
    # grace that keeps an outage from holding web threads still rides out a
    # failover. The client moves to another node within milliseconds, or
    # within one reconnect_time_wait when the node it tries first is one it
    # tried less than that ago (here: the dead one, connected to just now).
    client = Bus(cluster.url, name="grace-client")
    client_node = cluster.node_of(client.connected_url)
    worker_node = (client_node + 1) % 3
    worker_bus, pool = _serve(cluster.urls[worker_node], "grace")
    commands = CommandBus(client, timeout=5.0)
    try:
        _until_served(lambda: commands.execute(WhereAmI("warm-up")))
        before = client.connected_url
        cluster.kill(client_node)
        # From the moment the client knows its node is gone (or has moved on
        # already), no call is lost: it waits for the new node, then is sent.
        deadline = time.monotonic() + 10
        while client.is_connected and client.connected_url == before:
            assert time.monotonic() < deadline, "the client never noticed its node die"
            time.sleep(0.001)
        with concurrent.futures.ThreadPoolExecutor(8) as threads:
            answers = list(threads.map(lambda i: commands.execute(WhereAmI(f"over-{i}")), range(8)))
        assert answers == [f"over-{i} via {cluster.urls[worker_node]}" for i in range(8)]
        assert client.state is ConnectionState.CONNECTED
        assert cluster.node_of(client.connected_url) != client_node
    finally:
        pool.stop(drain_timeout=5)
        worker_bus.close()
        client.close()
        if not cluster.nodes[client_node].running:
            cluster.start_node(client_node)  # rejoin, for the module's other tests
