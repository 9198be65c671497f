"""The transport at its edges: a close racing a drain, a loop gone under a request.

Each test reproduces its race deterministically: the close is made to
happen at the exact point in question (through the one call the transport
makes there), never by sleeping and hoping.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List

import pytest
from transport_support import Echo, running_transport

from natsbus import BusClosedError
from natsbus._transport import Transport

pytestmark = pytest.mark.timeout(60)

PATHS = [pytest.param(True, id="fast-path"), pytest.param(False, id="public-api-path")]


@pytest.fixture(params=PATHS)
def transport(request: pytest.FixtureRequest, nats_url: str) -> Iterator[Transport]:
    with running_transport(nats_url, fast_path=request.param) as transport:
        yield transport


def _hold_back_barriers(transport: Transport, monkeypatch: pytest.MonkeyPatch, then: Any) -> threading.Event:
    """Barrier messages are not sent; ``then()`` runs (on the loop) where each would be.

    Returns an event set once a barrier has been held back.
    """
    held = threading.Event()
    publish = transport._nc.publish

    async def publish_but_barriers(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        if subject.startswith(transport._prefix + "barrier-"):
            held.set()
            then()
            return
        await publish(subject, payload, **kwargs)

    monkeypatch.setattr(transport._nc, "publish", publish_but_barriers)
    return held


def _subscribed(transport: Transport) -> Any:
    sub = transport.portal.call(lambda: transport.subscribe("bugs.drain", "q", Echo(transport)))
    transport.portal.call(transport.flush)
    return sub


# -- bug 4: a barrier failed by close is no confirmation ---------------------------


def test_a_drain_whose_barrier_the_close_failed_is_not_confirmed(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = _subscribed(transport)
    closing = BusClosedError("the Bus was closed while waiting for a reply")
    # The close comes while the barrier is on its way: it fails every waiter.
    _hold_back_barriers(transport, monkeypatch, lambda: transport._fail_waiters(closing))
    with pytest.raises(BusClosedError) as info:
        transport.portal.call(lambda: transport.drain_subscriptions([sub]), timeout=5.0)
    assert info.value is closing
    assert transport._waiters == {}


def test_a_close_from_another_thread_fails_a_waiting_barrier_at_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The barrier's own timeout is 10s; the drain is given 5: only a close
    # that wakes the loop ends it in time.
    sub = _subscribed(transport)
    held = _hold_back_barriers(transport, monkeypatch, lambda: None)
    outcome: Dict[str, BaseException] = {}

    def drain() -> None:
        try:
            transport.portal.call(lambda: transport.drain_subscriptions([sub]), timeout=5.0)
        except BaseException as exc:
            outcome["error"] = exc

    drainer = threading.Thread(target=drain)
    drainer.start()
    assert held.wait(5)
    transport.mark_closed()  # as Bus.close does when it cannot reach the loop
    drainer.join(10)
    assert type(outcome.get("error")) is BusClosedError


def test_a_flush_whose_barrier_the_close_failed_is_not_confirmed(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing = BusClosedError("the Bus was closed while waiting for a reply")
    _hold_back_barriers(transport, monkeypatch, lambda: transport._fail_waiters(closing))
    with pytest.raises(BusClosedError):
        transport.portal.call(transport.flush, timeout=5.0)


def test_a_barrier_still_confirms_a_drain_when_nothing_closes(transport: Transport) -> None:
    sub = _subscribed(transport)
    transport.portal.call(lambda: transport.drain_subscriptions([sub]), timeout=5.0)
    replies: List[Any] = transport.portal.call(lambda: transport.gather("bugs.drain", b"anyone?", timeout=2, quiet=0.2))
    assert replies == []  # nobody subscribes any more


# -- the loop gone before the transport knew: bugs 5 and 6 ---------------------------


@contextlib.contextmanager
def _loop_gone(nats_url: str, fast_path: bool) -> Iterator[Transport]:
    """A transport whose loop has closed while its ``_closed`` flag is still unset.

    That is the window between a caller's send check and its hand-off to
    the loop, held open: the connection is closed, then the loop stopped,
    and nobody told the transport.
    """
    with running_transport(nats_url, fast_path=fast_path) as transport:
        transport.portal.call(transport._nc.close, timeout=10.0)
        transport.portal.stop()
        assert transport.portal._loop is not None and transport.portal._loop.is_closed()
        assert not transport._closed
        # nats-py's closed callback marked the connection down; a caller that
        # passed the check before that still goes on to the hand-off.
        transport._up = True
        yield transport


def test_a_request_on_the_public_api_path_after_the_loop_closed_raises_bus_closed(nats_url: str) -> None:
    with _loop_gone(nats_url, fast_path=False) as transport:
        with pytest.raises(BusClosedError):
            transport.request("bugs.gone", b"x")
        assert transport._waiters == {}  # nothing waits for a reply that cannot come
        assert transport._outbox is not None and len(transport._outbox) == 0


def test_a_publish_on_the_public_api_path_after_the_loop_closed_raises_bus_closed(nats_url: str) -> None:
    with _loop_gone(nats_url, fast_path=False) as transport:
        with pytest.raises(BusClosedError):
            transport.publish("bugs.gone", b"x")
        assert transport._outbox is not None and len(transport._outbox) == 0


@pytest.mark.parametrize("fast_path", PATHS)
def test_a_request_that_could_not_be_queued_leaves_no_waiter_and_no_frame(nats_url: str, fast_path: bool) -> None:
    with _loop_gone(nats_url, fast_path) as transport:
        with pytest.raises(BusClosedError):
            transport.request("bugs.gone", b"x")
        assert transport._waiters == {}
        assert list(transport.frames) == []
        assert transport._outbox is None or len(transport._outbox) == 0


@pytest.mark.parametrize("fast_path", PATHS)
def test_a_publish_that_could_not_be_queued_leaves_no_frame(nats_url: str, fast_path: bool) -> None:
    with _loop_gone(nats_url, fast_path) as transport:
        with pytest.raises(BusClosedError):
            transport.publish("bugs.gone", b"x")
        assert list(transport.frames) == []
        assert transport._outbox is None or len(transport._outbox) == 0
