"""What a caller (a web request) sees while NATS is down: a fast, typed failure, never its whole timeout.

The issue behind these tests: with NATS down every call held its thread for
its whole timeout (a connect for ``connect_timeout``), so an outage took
every web thread with it. Now a connect fails as soon as every server
refused, a call made while the Bus is disconnected fails once its reconnect
grace passed, and the Bus serves again by itself once NATS is back.

The only timed assertions are the issue's own bounds: a call fails within
its grace plus 100 ms, and a connect does not wait out ``connect_timeout``.
The 100 ms margin holds on a loaded 2-core machine: a failing call is a
timed wait on an event and the building of one exception, nothing more.
"""

from __future__ import annotations

import concurrent.futures
import re
import socket
import threading
import time
from typing import Any, Callable, List, Tuple

import attrs
import pytest
from waiting import wait_until

from natsbus import (
    Bus,
    BusClosedError,
    Command,
    CommandBus,
    ConnectError,
    ConnectionState,
    NatsConfig,
    NatsServer,
    NoHandlerError,
    NotConnectedError,
    Query,
    QueryBus,
    TransportError,
    WorkerPool,
)

#: The issue's bound: a call made while disconnected fails within its grace plus this.
MARGIN = 0.1


@attrs.frozen
class Echo(Command[str]):
    text: str


@attrs.frozen
class Shout(Query[str]):
    text: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="outage", max_workers=4)

    @pool.register
    def echo(cmd: Echo) -> str:
        return cmd.text.upper()

    @pool.register
    def shout(query: Shout) -> str:
        return query.text.upper() + "!"

    return pool.start()


def _failure(call: Callable[[], Any]) -> Tuple[BaseException, float]:
    """The error ``call()`` raised and the seconds it took."""
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return exc, time.monotonic() - started
    raise AssertionError("the call succeeded")


# -- connecting --------------------------------------------------------------------


def test_a_connect_to_a_port_where_nothing_listens_fails_at_once_naming_the_url_and_reason() -> None:
    url = f"nats://127.0.0.1:{_free_port()}"
    error, elapsed = _failure(lambda: Bus(url, connect_timeout=10))
    assert isinstance(error, ConnectError) and not isinstance(error, NotConnectedError)
    assert str(error) == f"could not connect to NATS at {url} (Connection refused)"
    assert error.servers == (url,)
    assert elapsed < 10  # it used to wait out the whole connect_timeout
    assert not [t for t in threading.enumerate() if t.name == "natsbus-loop"]


def test_a_connect_names_each_server_and_its_own_reason(tmp_path: Any) -> None:
    nobody = f"nats://127.0.0.1:{_free_port()}"
    with NatsServer(jetstream=False, args=["--user", "u", "--pass", "p"]) as guarded:
        wrong = f"nats://u:wrong@127.0.0.1:{guarded.port}"
        error, elapsed = _failure(lambda: Bus(NatsConfig(servers=[nobody, wrong], connect_timeout=10)))
    assert isinstance(error, ConnectError)
    shown = f"nats://u:***@127.0.0.1:{guarded.port}"
    assert str(error) == (
        f"could not connect to NATS at {nobody} (Connection refused), {shown} (login refused: Authorization Violation)"
    )
    assert error.servers == (nobody, shown)
    assert elapsed < 10


# -- calls while the server is down ------------------------------------------------------


def test_calls_against_a_stopped_server_fail_within_the_grace_and_the_first_after_it_is_back_succeeds(
    server: NatsServer,
) -> None:
    bus = Bus(server.url, reconnect_time_wait=0.2)  # the default reconnect_grace: 1 s
    pool = _serve(bus)
    commands, queries = CommandBus(bus, timeout=3.0), QueryBus(bus, timeout=3.0)
    try:
        assert bus.reconnect_grace == 1.0
        assert commands.execute(Echo("up")) == "UP"
        assert bus.state is ConnectionState.CONNECTED and bus.is_connected
        server.stop()
        wait_until(lambda: not bus.is_connected, 5, "the bus saw the server go")
        assert bus.state is ConnectionState.RECONNECTING

        # Each kind of call, with the default grace and with its own.
        cases: List[Tuple[float, Callable[[], Any]]] = [
            (1.0, lambda: commands.execute(Echo("down"))),
            (0.2, lambda: commands.execute(Echo("down"), reconnect_grace=0.2)),
            (0.0, lambda: commands.execute(Echo("down"), reconnect_grace=0)),
            (0.3, lambda: queries.ask(Shout("down"), reconnect_grace=0.3)),
            (0.5, lambda: commands.submit(Echo("down"), reconnect_grace=0.5)),
            (1.0, lambda: bus.request("commands.Echo", b"{}")),
            (0.4, lambda: commands.execute(Echo("down"), timeout=0.4)),  # never longer than its timeout
            # One outage costs a batch one grace, not one per message.
            (0.2, lambda: commands.execute_many([Echo(str(i)) for i in range(20)], reconnect_grace=0.2)),
        ]
        for grace, call in cases:
            error, elapsed = _failure(call)
            assert isinstance(error, NotConnectedError), repr(error)
            assert isinstance(error, ConnectError) and isinstance(error, TransportError)
            assert elapsed <= grace + MARGIN, (grace, elapsed, str(error))
            waited = f" after waiting {grace:g}s for a reconnect" if grace else ""
            # Why: the connection was lost, or (once nats-py tried again) the server refused it.
            why = r"\(reconnecting: (the connection was lost|Connection refused)\)"
            assert re.match(rf"not connected to NATS {why}; cannot send to ", str(error)), str(error)
            assert str(error).endswith(waited)
        results = commands.execute_many([Echo(str(i)) for i in range(5)], reconnect_grace=0.2, return_exceptions=True)
        assert [type(r) for r in results] == [NotConnectedError] * 5

        # Sixteen threads at once (a web server's), three calls each: each fails within its grace.
        def three_calls(n: int) -> List[Tuple[BaseException, float]]:
            return [_failure(lambda: commands.execute(Echo(str(n)))) for _ in range(3)]

        with concurrent.futures.ThreadPoolExecutor(16) as threads:
            outcomes = [o for per_thread in threads.map(three_calls, range(16)) for o in per_thread]
        assert {type(error) for error, _ in outcomes} == {NotConnectedError}
        assert max(elapsed for _, elapsed in outcomes) <= 1.0 + MARGIN

        # Reconnecting went on meanwhile: once it is back, the first call succeeds.
        server.start()
        assert bus.wait_connected(10)
        assert bus.state is ConnectionState.CONNECTED
        assert commands.execute(Echo("back")) == "BACK"
    finally:
        pool.stop(drain_timeout=5)
        bus.close()
    assert bus.state is ConnectionState.CLOSED and not bus.is_connected
    assert isinstance(_failure(lambda: commands.execute(Echo("x")))[0], BusClosedError)


def test_a_call_waiting_out_its_grace_is_sent_when_the_connection_comes_back_within_it(server: NatsServer) -> None:
    bus = Bus(server.url, reconnect_time_wait=0.1)
    pool = _serve(bus)
    commands = CommandBus(bus, timeout=5.0)
    try:
        server.stop()
        wait_until(lambda: not bus.is_connected, 5, "the bus saw the server go")
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            waiting = thread.submit(commands.execute, Echo("patient"), reconnect_grace=30.0)
            server.start()
            assert waiting.result(30) == "PATIENT"
    finally:
        pool.stop(drain_timeout=5)
        bus.close()


def test_a_bus_that_gave_up_reconnecting_says_so_at_once(server: NatsServer) -> None:
    with Bus(server.url, allow_reconnect=False) as bus:
        server.stop()
        wait_until(lambda: bus.state is ConnectionState.DISCONNECTED, 5, "the bus gave up")
        error, elapsed = _failure(lambda: CommandBus(bus).execute(Echo("x"), reconnect_grace=30))
        assert isinstance(error, NotConnectedError)
        assert str(error).startswith("not connected to NATS (closed, no more reconnects: ")
        assert elapsed <= MARGIN  # no use waiting for a reconnect that will not come


# -- a Bus made before NATS was there ------------------------------------------------------


def test_a_bus_created_while_nats_is_down_serves_once_nats_starts() -> None:
    port = _free_port()
    server = NatsServer(port=port, jetstream=False)
    url = f"nats://127.0.0.1:{port}"
    bus = Bus(url, connect_in_background=True, reconnect_time_wait=0.1)
    worker_bus = None
    try:
        assert bus.state is ConnectionState.CONNECTING and not bus.is_connected
        commands = CommandBus(bus, timeout=3.0)
        error, elapsed = _failure(lambda: commands.execute(Echo("early")))
        assert isinstance(error, NotConnectedError)
        assert str(error) == (
            f"not connected to NATS (could not connect yet: {url} (Connection refused); trying again in "
            "the background); cannot send to commands.Echo after waiting 1s for a reconnect"
        )
        assert elapsed <= 1.0 + MARGIN
        # A pool needs a connection to subscribe on.
        with pytest.raises(NotConnectedError, match="cannot subscribe to "):
            _serve(bus)
        with pytest.raises(NotConnectedError):
            bus.publish("anything", b"")

        server.start()
        assert bus.wait_connected(10)
        assert bus.state is ConnectionState.CONNECTED and bus.connected_url == url
        worker_bus = Bus(url)
        pool = _serve(worker_bus)
        try:
            assert commands.execute(Echo("late")) == "LATE"
        finally:
            pool.stop(drain_timeout=5)
    finally:
        if worker_bus is not None:
            worker_bus.close()
        bus.close()
        server.close()


def test_a_bus_connecting_in_background_closes_cleanly() -> None:
    before = {t.ident for t in threading.enumerate()}
    bus = Bus(f"nats://127.0.0.1:{_free_port()}", connect_in_background=True, reconnect_time_wait=0.05)
    assert bus.state is ConnectionState.CONNECTING
    bus.close()
    assert bus.state is ConnectionState.CLOSED
    assert [t for t in threading.enumerate() if t.ident not in before and t.is_alive()] == []


def test_no_handler_still_fails_at_once_while_connected(server: NatsServer) -> None:
    # The fail-fast paths must not change a connected Bus's answers.
    with Bus(server.url) as bus:
        error, _ = _failure(lambda: CommandBus(bus).execute(Echo("nobody")))
        assert isinstance(error, NoHandlerError)
