"""Fork safety: a Bus made (and used) before os.fork() works in the children and goes on in the parent."""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import attrs
import pytest
from waiting import wait_until
from webserver import gunicorn, stop

from natsbus import Bus, Command, CommandBus, NatsServer, Query, QueryBus, QueryCache, WorkerPool

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.filterwarnings(
    # Python 3.12+ warns on any fork() from a process with threads; forking one
    # (the Bus's loop thread runs) is exactly what is tested here.
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)


@attrs.frozen
class Echo(Command[str]):
    text: str


@attrs.frozen
class EchoQuery(Query[str]):
    text: str


@attrs.frozen
class PreloadEcho(Command[str], type_name="PreloadEcho"):  # served for tests/preload_app.py
    text: str


@pytest.fixture(scope="module")
def server() -> Iterator[NatsServer]:
    with NatsServer(jetstream=False, monitor=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def echo_pool(server: NatsServer) -> Iterator[WorkerPool]:
    bus = Bus(server.url, name="fork-echo-worker")
    pool = WorkerPool(bus, service_id="fork-echo", max_workers=8)
    pool.register(lambda cmd: cmd.text.upper(), message_type=Echo)
    pool.register(lambda query: query.text.upper(), message_type=EchoQuery)
    pool.register(lambda cmd: cmd.text.upper(), message_type=PreloadEcho)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop(drain_timeout=5)
        bus.close()


def _connections(server: NatsServer, name: str) -> List[int]:
    """The server-side ids of the client connections named ``name``."""
    connz = server.monitor_json("connz?limit=1024")
    return sorted(c["cid"] for c in connz.get("connections") or [] if c.get("name") == name)


# -- multiprocessing with the fork start method ------------------------------------


def _child(commands: CommandBus, index: int, out: Any) -> None:
    bus = commands.bus
    report: Dict[str, Any] = {"index": index, "pid": os.getpid()}
    try:
        report["connected_before"] = bus.is_connected  # the parent's connection is not ours
        texts = [f"child{index}-{j}" for j in range(20)]
        report["results_ok"] = [commands.execute(Echo(t)) for t in texts] == [t.upper() for t in texts]
        report["future"] = commands.submit(Echo("future")).result(5)
        report["connected_after"] = bus.is_connected
        if index % 2:
            bus.close()  # closes the child's connection, never the parent's
            report["closed"] = bus.closed
    except BaseException as exc:
        report["error"] = repr(exc)
    out.put(report)


@pytest.mark.timeout(60)
def test_a_bus_used_before_fork_works_in_children_and_goes_on_in_the_parent(
    server: NatsServer, echo_pool: WorkerPool
) -> None:
    parent = Bus(server.url, name="fork-parent")
    commands = CommandBus(parent, timeout=5.0)
    try:
        assert commands.execute(Echo("before")) == "BEFORE"
        assert commands.submit(Echo("future")).result(5) == "FUTURE"  # the completer thread runs
        (parent_cid,) = _connections(server, "fork-parent")

        # Parent threads keep calling while the children are forked.
        stop_calling = threading.Event()
        parent_errors: List[BaseException] = []
        parent_calls = Counter[int]()

        def keep_calling(n: int) -> None:
            i = 0
            while not stop_calling.is_set():
                try:
                    assert commands.execute(Echo(f"p{n}-{i}")) == f"P{n}-{i}"
                    parent_calls[n] += 1
                except BaseException as exc:
                    parent_errors.append(exc)
                i += 1

        callers = [threading.Thread(target=keep_calling, args=(n,)) for n in range(4)]
        for t in callers:
            t.start()
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        children = [ctx.Process(target=_child, args=(commands, i, out)) for i in range(4)]
        try:
            for child in children:
                child.start()
            reports = sorted((out.get(timeout=30) for _ in children), key=lambda r: r["index"])
            for child in children:
                child.join(10)
        finally:
            stop_calling.set()
            for t in callers:
                t.join(10)
            for child in children:
                if child.is_alive():
                    child.kill()
        assert [c.exitcode for c in children] == [0, 0, 0, 0]
        for report in reports:
            assert "error" not in report, report
            assert report["results_ok"] and report["future"] == "FUTURE", report
            assert (report["connected_before"], report["connected_after"]) == (False, True), report
        assert [r.get("closed") for r in reports] == [None, True, None, True]
        assert len({r["pid"] for r in reports}) == 4 and os.getpid() not in {r["pid"] for r in reports}

        # The parent never stopped, and still has its one original connection.
        assert parent_errors == [] and all(parent_calls[n] > 0 for n in range(4))
        assert commands.execute(Echo("after")) == "AFTER"
        assert parent.is_connected
        wait_until(lambda: _connections(server, "fork-parent") == [parent_cid], 10, "the children's went")
    finally:
        parent.close()


def _hold(event: Any) -> None:
    event.wait(30)


def test_the_server_sees_the_parent_close_while_a_forked_child_lives(server: NatsServer) -> None:
    parent = Bus(server.url, name="fork-closing-parent")
    parent.flush()
    assert len(_connections(server, "fork-closing-parent")) == 1
    ctx = multiprocessing.get_context("fork")
    release = ctx.Event()
    child = ctx.Process(target=_hold, args=(release,))
    child.start()
    try:
        # The child closed its copy of the socket when forked: closing the
        # parent's Bus ends the connection now, not when the child exits.
        parent.close()
        wait_until(lambda: _connections(server, "fork-closing-parent") == [], 5, "the server saw the close")
        assert child.is_alive()
    finally:
        release.set()
        child.join(10)
    assert child.exitcode == 0


def _use_after_fork(commands: CommandBus, queries: QueryBus, out: Any) -> None:
    try:
        out.put((commands.execute(Echo("child")), queries.ask(EchoQuery("cached")), queries.ask(EchoQuery("new"))))
    except BaseException as exc:
        out.put(repr(exc))


def test_locks_held_by_other_threads_at_fork_time_do_not_deadlock_the_child(
    server: NatsServer, echo_pool: WorkerPool
) -> None:
    bus = Bus(server.url)
    commands = CommandBus(bus)
    queries = QueryBus(bus, cache=QueryCache())
    assert queries.ask(EchoQuery("cached")) == "CACHED"
    assert queries.cache is not None
    held, release = threading.Event(), threading.Event()

    def hold_the_locks() -> None:
        assert queries.cache is not None
        with bus._lock, queries.cache._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_locks)
    holder.start()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_use_after_fork, args=(commands, queries, out))
    try:
        assert held.wait(10)
        child.start()  # forked while another thread holds both locks
        answer = out.get(timeout=20)
        child.join(10)
    finally:
        release.set()
        holder.join(10)
        bus.close()
        if child.is_alive():
            child.kill()  # deadlocked: do not leave it behind
            child.join(5)
    assert answer == ("CHILD", "CACHED", "NEW")
    assert child.exitcode == 0


# -- gunicorn --preload: the Bus is made in the master, used by the workers --------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_gunicorn_preload_workers_use_a_bus_made_in_the_master(
    server: NatsServer, echo_pool: WorkerPool, tmp_path: Path
) -> None:
    env = {"NATS_URL": server.url}
    with gunicorn("preload_app:app", cwd=HERE, env=env, log_path=tmp_path / "gunicorn.log", workers=3) as web:
        # Before any request only the master is connected: the workers
        # inherited its Bus but have not used it.
        (master_cid,) = _connections(server, "preload-app")
        assert re.search(rf"\[{web.proc.pid}\] preload-app: the master called the bus", web.log())

        answers: List[Tuple[int, Any]] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            for j in range(12):
                text = f"req-{n}-{j}"
                status, body = web.call("GET", f"/echo?text={text}")
                with lock:
                    answers.append((status, body))
                assert body["result"] == text.upper(), body

        clients = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in clients:
            t.start()
        for t in clients:
            t.join(60)
        assert len(answers) == 16 * 12
        assert {status for status, _ in answers} == {200}
        assert all(body["connected"] for _, body in answers)
        served_by = Counter(body["pid"] for _, body in answers)
        assert web.proc.pid not in served_by
        assert len(served_by) >= 2, served_by
        # One connection per worker that served, plus the master's, untouched.
        connections = _connections(server, "preload-app")
        assert master_cid in connections and len(connections) == 1 + len(served_by)
    assert stop(web) == 0
    log = web.log()
    for noise in ("Traceback", "Task was destroyed", "Event loop is closed", "unclosed", "Exception ignored"):
        assert noise not in log, log
    # Every process closed its own Bus on the way out (the exit hook).
    wait_until(lambda: _connections(server, "preload-app") == [], 10, "every connection closed")
