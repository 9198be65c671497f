"""KeyboardInterrupt and SystemExit raised by a handler are never swallowed: the dispatcher and the pool."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Callable, List, Optional

import attrs
import pytest
from durable_app import Apply, config_for
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, HandlerError, WorkerPool, current_request
from natsbus._transport.jetstream import jetstream_for
from natsbus.dispatch import Dispatcher
from natsbus.middleware import HandlerMiddleware, HandlerRequest

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Quit(Command[int]):
    code: int


@attrs.frozen
class Echo(Command[int]):
    n: int


BODY = b'{"command_type":"Quit","command_id":"cmd-q","payload":{"code":3}}'


def quitter(exc: BaseException) -> Callable[[Quit], int]:
    def quit_(cmd: Quit) -> int:
        raise exc

    return quit_


def echo(cmd: Echo) -> int:
    return cmd.n


class Seen(HandlerMiddleware):
    def __init__(self) -> None:
        self.errors: List[str] = []

    def on_error(self, call: HandlerRequest, error: BaseException) -> None:
        self.errors.append(type(error).__name__)


# -- the dispatcher ------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("with_middleware", [False, True], ids=["plain", "middleware"])
def test_dispatch_lets_keyboard_interrupt_and_system_exit_propagate(exc: BaseException, with_middleware: bool) -> None:
    seen = Seen()
    dispatcher = Dispatcher("svc", [seen] if with_middleware else [])
    route = dispatcher.register(quitter(exc))
    with pytest.raises(type(exc)) as raised:
        dispatcher.dispatch(route, BODY)
    assert raised.value is exc
    assert current_request() is None  # the request context was left
    assert (route.stats.num_requests, route.stats.num_errors) == (1, 1)
    assert route.stats.last_error == f"the handler raised {type(exc).__name__}"
    assert seen.errors == ([type(exc).__name__] if with_middleware else [])


def test_dispatch_still_turns_exceptions_into_500_replies() -> None:
    dispatcher = Dispatcher("svc")
    route = dispatcher.register(quitter(RuntimeError("disk on fire")))
    body, headers = dispatcher.dispatch(route, BODY)
    assert headers == {"Nats-Service-Error": "disk on fire", "Nats-Service-Error-Code": "500"}
    assert b'"error":"disk on fire"' in body


# -- the pool ------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)], ids=["KeyboardInterrupt", "SystemExit"])
def test_run_answers_the_caller_drains_and_reraises_what_the_handler_raised(
    bus: Bus, exc: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WorkerPool(bus, service_id="quitter", max_workers=2, handlers=[quitter(exc), echo])
    outcome: List[Optional[BaseException]] = []

    def serve() -> None:  # not the main thread: run() installs no signal handlers
        try:
            pool.run(drain_timeout=5)
        except BaseException as raised:
            outcome.append(raised)
        else:
            outcome.append(None)

    server = threading.Thread(target=serve)
    server.start()
    try:
        wait_until(lambda: bus.has_handler(Quit, timeout=0.5), what="the pool serving")
        commands = CommandBus(bus, timeout=20)
        with pytest.raises(HandlerError) as info:  # an error reply now, not a timeout
            commands.execute(Quit(3))
        server.join(20)
        assert not server.is_alive()
    finally:
        pool.request_stop()
        server.join(20)
    assert outcome == [exc]  # run() re-raised the very exception, after the drain
    assert info.value.code == 500
    assert str(info.value) == f"Handler for Quit raised {type(exc).__name__}; quitter is stopping"
    assert pool.inflight == 0
    assert not pool.running
    [error] = [r for r in caplog.records if r.name == "natsbus.worker" and r.levelno == logging.ERROR]
    prefix = f"handler quitter.<locals>.quit_ raised {type(exc).__name__} on commands.Quit cmd-"
    assert error.getMessage().startswith(prefix) and error.getMessage().endswith(": stopping the pool")
    assert error.exc_info is not None and error.exc_info[1] is exc


def test_a_started_pool_answers_the_caller_and_stops_itself(bus: Bus) -> None:
    exc = SystemExit(3)
    pool = WorkerPool(bus, service_id="quitter", max_workers=2, handlers=[quitter(exc), echo])
    pool.start()
    try:
        commands = CommandBus(bus, timeout=20)
        assert commands.execute(Echo(1)) == 1
        with pytest.raises(HandlerError, match="Handler for Quit raised SystemExit; quitter is stopping"):
            commands.execute(Quit(3))
        wait_until(lambda: not pool.running and pool.inflight == 0, what="the pool stopped")
        wait_until(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("natsbus-worker-quitter")],
            what="its threads ended",
        )
    finally:
        pool.stop(5)


def test_a_durable_command_whose_handler_raises_system_exit_is_handed_back_and_the_pool_stops(
    bus: Bus, nats_url: str
) -> None:
    config = config_for(uuid.uuid4().hex[:10])
    runs: List[str] = []

    def apply_or_quit(cmd: Apply) -> int:
        runs.append("quit" if not runs else "ran")
        if runs == ["quit"]:
            raise SystemExit(3)
        return cmd.n * 2

    try:
        pool_a = WorkerPool(bus, service_id="appliers", durable=config, handlers=[apply_or_quit])
        pool_a.start()
        command_id = CommandBus(bus).send(Apply(5), durable=config)
        wait_until(lambda: not pool_a.running and pool_a.inflight == 0, what="pool A stopped")
        with WorkerPool(bus, service_id="appliers", durable=config, handlers=[apply_or_quit]):
            assert CommandBus(bus).result(command_id, wait=10, durable=config) == 10
        assert runs == ["quit", "ran"]
    finally:
        js = jetstream_for(bus)
        for stream in (config.stream, config.dead_letter_stream, f"KV_{config.results_bucket}"):
            bus.run(lambda s=stream: js.delete_stream(s))
