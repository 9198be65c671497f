"""In a forked child, the first use of a parent's Bus that is not a call (publish, a WorkerPool's start) works.

The child's connection opens in the background; calls wait for it within their
own timeouts, and every other first use waits for it within connect_timeout.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import attrs
import pytest
from fork_support import run_forked

from natsbus import Bus, Command, CommandBus, NatsServer, WorkerPool

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"),
]


@attrs.frozen
class Ping2(Command[str]):
    text: str


def _report(target: Callable[[Dict[str, Any]], None], out: Any) -> None:
    """In the forked child: ``target(report)``, then the report (with the error, if any)."""
    report: Dict[str, Any] = {}
    try:
        target(report)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
    out.put(report)


def _run_in_child(target: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    return run_forked(_report, target)


def test_a_forked_childs_first_publish_is_sent(server: NatsServer) -> None:
    parent = Bus(server.url)
    listener = Bus(server.url)
    try:
        sub_received: list = []
        import threading

        got = threading.Event()

        async def subscribe() -> Any:
            def handler(subject: str, reply: str, data: bytes, headers: Any) -> None:
                sub_received.append(data)
                got.set()

            sub = await listener.live_transport().subscribe("fork.first.publish", "", handler)
            await listener.live_transport().flush()
            return sub

        listener.run(subscribe)

        def child(report: Dict[str, Any]) -> None:
            parent.publish("fork.first.publish", b"from-child")  # the child's first use of the Bus
            parent.flush(5.0)
            report["sent"] = True

        report = _run_in_child(child)
        assert report == {"sent": True}, report
        assert got.wait(5.0)
        assert sub_received == [b"from-child"]
    finally:
        parent.close()
        listener.close()


class _SlowProxy:
    """A TCP proxy to ``upstream`` whose server-to-client bytes arrive ``delay`` seconds late (a distant server)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        import socket
        import threading

        self.delay = delay
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self.delay), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, delay: float) -> None:
        import time

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if delay:
                    time.sleep(delay)  # network latency being simulated, not a synchronisation
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_a_worker_pool_started_in_a_forked_child_on_the_parents_bus_serves(server: NatsServer) -> None:
    proxy = _SlowProxy(server.port, 0.3)
    parent = Bus(f"nats://127.0.0.1:{proxy.port}", connect_timeout=5.0)  # a server 0.3 s away
    caller = Bus(server.url)
    try:

        def child(report: Dict[str, Any]) -> None:
            pool = WorkerPool(parent, service_id="fork-first-pool", max_workers=2)
            pool.register(lambda cmd: cmd.text.upper(), message_type=Ping2)
            pool.start()  # the child's first use of the Bus
            try:
                report["served"] = CommandBus(caller).execute(Ping2("x"), timeout=5.0)
            finally:
                pool.stop(drain_timeout=5.0)

        report = _run_in_child(child)
        assert report == {"served": "X"}, report
    finally:
        parent.close()
        caller.close()
        proxy.close()


def test_a_forked_childs_first_submit_leaves_no_completer_thread_after_close(server: NatsServer) -> None:
    import threading

    worker_bus = Bus(server.url)
    pool = WorkerPool(worker_bus, service_id="fork-first-submit", max_workers=2)
    pool.register(lambda cmd: cmd.text.upper(), message_type=Ping2)
    pool.start()
    parent = Bus(server.url)
    try:

        def child(report: Dict[str, Any]) -> None:
            report["result"] = CommandBus(parent).submit(Ping2("s"), timeout=5.0).result(10)  # first use
            parent.close(5.0)  # docs: "joins every natsbus thread: none outlives it"
            report["completers"] = [t.name for t in threading.enumerate() if t.name == "natsbus-completer"]

        report = _run_in_child(child)
        assert report == {"result": "S", "completers": []}, report
    finally:
        parent.close()
        pool.stop(drain_timeout=5)
        worker_bus.close()
