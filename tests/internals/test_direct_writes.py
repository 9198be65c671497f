"""Direct writes: threads write frames to the socket themselves, under one lock.

On plain TCP a caller thread (with few requests in flight) and a worker
thread (its reply) write their frame straight to the socket instead of
waking the event loop. These tests check what that must not break: every
frame whole and in order when the socket takes only part of a write, the
loop's own writes interleaved correctly, and who writes what.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, List

import attrs
import pytest

from natsbus import Bus, Command, CommandBus, WorkerPool

pytestmark = pytest.mark.timeout(60)

BIG = 64_000  # far over the shrunken socket buffer: every send is partial


def _shrink_send_buffer(bus: Bus) -> None:
    sock = bus._transport._sock
    assert sock is not None, "plain TCP: direct writes are on"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def test_partial_direct_writes_keep_every_frame_whole_and_in_order(nats_url: str) -> None:
    received: Dict[int, List[int]] = {0: [], 1: [], 2: []}
    all_in = threading.Event()
    per_thread = 20

    def collect(subject: str, reply: str, data: bytes, headers: Any) -> None:  # the loop thread
        head, _, filler = data.partition(b"|")
        sender, seq = (int(x) for x in head.split(b":"))
        assert filler == bytes([65 + (seq % 26)]) * (BIG - len(head) - 1), "a frame came apart"
        received[sender].append(seq)
        if sum(map(len, received.values())) == 3 * per_thread:
            all_in.set()

    with Bus(nats_url) as listening, Bus(nats_url) as publishing:
        transport = listening._transport
        listening.run(lambda: transport.subscribe("direct.order", "", collect))
        listening.run(transport.flush)
        _shrink_send_buffer(publishing)

        def publish(sender: int) -> None:
            for seq in range(per_thread):
                head = b"%d:%d" % (sender, seq)
                publishing.publish("direct.order", head + b"|" + bytes([65 + (seq % 26)]) * (BIG - len(head) - 1))
                if seq % 7 == 0:
                    publishing.flush()  # the loop's writes (a flush marker, a PING) in between

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        publishing.flush()
        assert all_in.wait(20), {k: len(v) for k, v in received.items()}
        assert publishing._transport.partial_writes > 0, "the socket never refused part of a write"
    for sender, seqs in received.items():
        assert seqs == list(range(per_thread)), f"thread {sender}'s messages out of order or lost"


@attrs.frozen
class Echo(Command[str]):
    text: str


def _echo(cmd: Echo) -> str:
    return cmd.text.upper()  # as big as the request: the worker's reply is cut too


def test_big_requests_and_replies_survive_partial_writes(bus: Bus) -> None:
    _shrink_send_buffer(bus)  # the callers' requests and the worker's replies
    pool = WorkerPool(bus, service_id="direct-echo", handlers=[_echo]).start()
    try:
        commands = CommandBus(bus, timeout=10)
        results: List[int] = []

        def call(n: int) -> None:
            for i in range(10):
                text = commands.execute(Echo("x" * (BIG + n * 100 + i)))
                assert text == "X" * len(text)
                results.append(len(text))

        threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        pool.stop(drain_timeout=5)
    assert sorted(results) == sorted(BIG + n * 100 + i for n in range(2) for i in range(10))
    assert bus._transport.partial_writes > 0


class _RecordingSocket:
    """Stands in for the transport's socket: records which thread sends."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.senders: List[str] = []

    def send(self, data: bytes) -> int:
        self.senders.append(threading.current_thread().name)
        return self._sock.send(data)


def test_a_lone_caller_and_the_worker_write_their_own_frames(nats_url: str) -> None:
    # Client and worker on separate connections, as in production: on one
    # shared Bus the caller may still hold the write lock (waiting for the
    # GIL after its send) when the reply is ready, and then the reply
    # rightly goes the other way.
    from natsbus.demo import CreateUserCommand, build_pool

    with Bus(nats_url) as serving, Bus(nats_url) as calling:
        pool = build_pool(serving).start()
        try:
            recorders = []
            for bus in (serving, calling):
                sock = bus._transport._sock
                assert sock is not None
                recorder = _RecordingSocket(sock)
                bus._transport._sock = recorder  # type: ignore[assignment]
                recorders.append(recorder)
            worker_side, caller_side = recorders
            result: List[Any] = []
            caller = threading.Thread(
                target=lambda: result.append(
                    CommandBus(calling).execute(CreateUserCommand("Direct", "direct@example.com"))
                ),
                name="the-caller",
            )
            caller.start()
            caller.join(10)
        finally:
            pool.stop(drain_timeout=5)
    assert result and result[0].user_id
    assert caller_side.senders == ["the-caller"]  # the request: no loop wake-up to send it
    assert [name[: len("natsbus-worker-")] for name in worker_side.senders] == ["natsbus-worker-"]  # the reply


def test_a_frame_left_for_the_loop_goes_before_the_threads_later_loop_writes(nats_url: str) -> None:
    # Thread T publishes A while another thread holds the write lock, so A
    # waits in the outbox; T's next publish goes through nats-py on the loop
    # (as JetStream calls do). The server must still see A first.
    got: List[bytes] = []
    both_in = threading.Event()

    def collect(subject: str, reply: str, data: bytes, headers: Any) -> None:
        got.append(data)
        if len(got) == 2:
            both_in.set()

    with Bus(nats_url) as listening, Bus(nats_url) as publishing:
        transport = listening._transport
        listening.run(lambda: transport.subscribe("direct.paths", "", collect))
        listening.run(transport.flush)
        sending = publishing._transport
        holder_has_it = threading.Event()
        let_go = threading.Event()

        def hold_the_lock() -> None:
            with sending.write_lock:  # a long write by another thread
                holder_has_it.set()
                let_go.wait(5)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        assert holder_has_it.wait(5)
        publishing.publish("direct.paths", b"A")  # the lock is taken: A stays queued
        assert any(b"A" in item[0] for item in sending.frames if isinstance(item, tuple)), "A was not left for the loop"
        let_go.set()
        holder.join()
        # B goes through nats-py on the loop; without the ring A would follow it.
        publishing.run(lambda: sending._nc.publish("direct.paths", b"B"))
        publishing.flush()
        assert both_in.wait(5), got
    assert got == [b"A", b"B"]
