"""The natsbus side of ``natsbus bench``: the responder and client child processes.

``python -m natsbus.bench.roles responder|client URL`` runs one role,
driven over JSON lines by :mod:`natsbus.bench.runner`. It is kept apart from the
bench driver (argument parsing, reports, charts) so a natsbus child holds
what an application would (natsbus and its dependencies), as the raw
baseline's child holds only nats-py: the memory figures compare like with
like. Nothing here is public API.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import attrs

from ..bus import Bus
from ..cqrs import CommandBus
from ..demo import CreateUserCommand, UserCreated
from ..envelope import utc_timestamp
from ..messages import Command

if TYPE_CHECKING:  # the responder imports it when it starts; the client never does
    from ..worker import WorkerPool

#: The queue group (and service id) both responders serve in.
SERVICE_ID = "user-service"
#: Seconds a single request may take before it counts as an error.
REQUEST_TIMEOUT = 10.0
#: ``execute_many`` and its raw counterpart keep this many requests in flight.
BATCH_IN_FLIGHT = 64
#: Extra message types registered for the "200 types cost nothing" check.
EXTRA_TYPES = 200
#: The "1 MiB payloads work" check.
LARGE_PAYLOAD = 1024 * 1024
#: The embedded server's max payload: a 1 MiB payload plus its envelope must fit.
SERVER_MAX_PAYLOAD = 8 * 1024 * 1024

RAW = "raw"
NATSBUS = "natsbus"
NATSBUS_TYPES = f"natsbus+{EXTRA_TYPES} types"


# -- the workload --------------------------------------------------------------------


@attrs.frozen
class BenchCreateUser(Command[UserCreated], type_name="CreateUserCommand"):
    """The spec's CreateUserCommand with an optional ``bio`` to make it larger."""

    name: str
    email: str
    bio: str = ""


def create_user(command: BenchCreateUser) -> UserCreated:
    """The responder's handler: what the raw responder does, through natsbus."""
    return UserCreated(user_id=f"user-{uuid.uuid4()}", created_at=utc_timestamp())


def message_for(size: int) -> Any:
    """The request message: the spec's exact payload, or with ``size`` bytes of bio."""
    if size <= 0:
        return CreateUserCommand(name="Alice", email="alice@example.com")
    return BenchCreateUser(name="Alice", email="alice@example.com", bio="x" * size)


_EXTRA: List[type] = []


def extra_types(count: int) -> List[type]:
    """``count`` more command classes (``BenchType000Command`` ...), made once per process."""
    while len(_EXTRA) < count:
        name = f"BenchType{len(_EXTRA):03d}Command"
        _EXTRA.append(attrs.make_class(name, {"value": attrs.field(type=str)}, bases=(Command,), frozen=True))
    return _EXTRA[:count]


def _acknowledge(message: Any) -> Dict[str, bool]:
    return {"ok": True}


def spin(microseconds: int) -> None:
    """Spend ``microseconds`` of this thread's CPU time: a handler's own work."""
    end = time.thread_time() + microseconds / 1e6
    while time.thread_time() < end:
        pass


def build_pool(bus: Bus, types: int, *, store: bool = True, work_us: int = 0) -> WorkerPool:
    """The bench's WorkerPool (default size, default reply store unless ``store=False``).

    It serves ``types`` extra message types; its handler spends ``work_us``
    of CPU per request.
    """
    from ..worker import WorkerPool

    pool = WorkerPool(bus, service_id=SERVICE_ID) if store else WorkerPool(bus, service_id=SERVICE_ID, idempotency=None)
    if work_us:

        def create_user_working(command: BenchCreateUser) -> UserCreated:
            spin(work_us)
            return create_user(command)

        pool.register(create_user_working, message_type=BenchCreateUser)
    else:
        pool.register(create_user)
    for cls in extra_types(types):
        pool.register(_acknowledge, message_type=cls)
    return pool


# -- child processes: the line protocol -----------------------------------------------


def memory() -> Dict[str, int]:
    """This process's resident set now and at its peak, in KiB (same as the raw baseline's)."""
    found: Dict[str, int] = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    if "VmHWM" not in found:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found["VmHWM"] = peak // 1024 if sys.platform == "darwin" else peak
    return {"rss_kib": found.get("VmRSS", found["VmHWM"]), "peak_kib": found["VmHWM"]}


def switches() -> int:
    """Context switches of this process so far, all threads (0 where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int(usage.ru_nvcsw + usage.ru_nivcsw)


def _send(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _ready(**extra: Any) -> None:
    _send({"ready": True, "pid": os.getpid(), "json": "orjson" if "orjson" in sys.modules else "json", **extra})


def _responder_main(url: str) -> int:
    with Bus(url, name="bench-natsbus-responder") as bus:
        _ready()
        pool: Optional[WorkerPool] = None
        cpu = 0.0
        csw = 0
        try:
            for line in sys.stdin:
                op = json.loads(line)
                if op["op"] == "quit":
                    break
                if op["op"] == "serve":
                    if pool is None:
                        pool = build_pool(  # start() returns once subscribed
                            bus, int(op.get("types", 0)), store=op.get("store", True), work_us=int(op.get("work_us", 0))
                        ).start()
                        cpu, csw = time.process_time(), switches()
                    _send({"ok": True})
                elif op["op"] == "pause":
                    work = {"handled": 0, "cpu_seconds": time.process_time() - cpu, "switches": switches() - csw}
                    if pool is not None:
                        work["handled"] = sum(route.stats.num_requests for route in pool.dispatcher.routes)
                        pool.stop(drain_timeout=REQUEST_TIMEOUT)
                        pool = None
                    _send({"ok": True, "memory": memory(), **work})
                elif op["op"] == "memory":
                    _send({"ok": True, "memory": memory()})
                else:
                    _send({"error": f"unknown op {op['op']!r}"})
        finally:
            if pool is not None:
                pool.stop(drain_timeout=2.0)
    return 0


def _client_main(url: str) -> int:
    with Bus(url, name="bench-natsbus-client") as bus:
        commands = CommandBus(bus, timeout=REQUEST_TIMEOUT, service_id="bench-client")
        _ready(execute_many=hasattr(commands, "execute_many"))
        for line in sys.stdin:
            op = json.loads(line)
            if op["op"] == "quit":
                break
            if op["op"] == "run":
                _send(_client_run(commands, op))
            elif op["op"] == "memory":
                _send({"ok": True, "memory": memory()})
            else:
                _send({"error": f"unknown op {op['op']!r}"})
    return 0


def _client_run(commands: CommandBus, op: Dict[str, Any]) -> Dict[str, Any]:
    for cls in extra_types(int(op.get("types", 0))):
        commands.execute(cls(value="x"))  # every extra type's route is in use
    message = message_for(int(op["payload"]))
    if op["scenario"] == "batch":
        execute_many = getattr(commands, "execute_many", None)
        if execute_many is None:
            return {"ok": True, "missing": "execute_many"}
        return _run_batches(execute_many, message, op)
    if op["scenario"] in ("sequential", "throughput"):
        return _run_window(lambda: commands.execute(message), op)
    return {"error": f"the natsbus client has no scenario {op['scenario']!r}"}


# requests, errors, latencies, first error text, when it stopped counting
_Outcome = Tuple[int, int, List[float], str, float]


def _run_window(call: Callable[[], Any], op: Dict[str, Any]) -> Dict[str, Any]:
    """``concurrency`` threads loop until the window closes; count what completes inside it."""
    concurrency = int(op["concurrency"])
    cap = int(op["max_requests"]) // concurrency + 1
    clock = time.perf_counter
    window = [0.0, 0.0]
    outcomes: List[Optional[_Outcome]] = [None] * concurrency
    start = threading.Barrier(concurrency + 1)

    def caller(index: int) -> None:
        start.wait()
        t0, t1 = window
        count = errors = 0
        latencies: List[float] = []
        first_error = ""
        stopped = t1
        while True:
            began = clock()
            failed: Optional[BaseException] = None
            try:
                call()
            except Exception as exc:
                failed = exc
            ended = clock()
            if ended > t1:
                break
            if ended >= t0:
                if failed is None:
                    count += 1
                    if began >= t0:
                        latencies.append(round((ended - began) * 1e6, 1))
                else:
                    errors += 1
                    first_error = first_error or f"{type(failed).__name__}: {failed}"
                if count + errors >= cap:
                    stopped = ended
                    break
        outcomes[index] = (count, errors, latencies, first_error, stopped)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    window[0] = clock() + float(op["warmup"])
    window[1] = window[0] + float(op["duration"])
    start.wait(timeout=30.0)  # every caller is ready: the clock is running
    time.sleep(max(0.0, window[0] - clock()))
    cpu, csw = time.process_time(), switches()
    time.sleep(max(0.0, window[1] - clock()))
    cpu, csw = time.process_time() - cpu, switches() - csw
    mem = memory()  # at the window's end, under full load
    for thread in threads:
        thread.join(REQUEST_TIMEOUT + 5.0)
    done = [o for o in outcomes if o is not None]
    if len(done) < concurrency:
        return {"error": f"{concurrency - len(done)} caller thread(s) did not finish"}
    return {
        "ok": True,
        "count": sum(o[0] for o in done),
        "errors": sum(o[1] for o in done),
        "first_error": next((o[3] for o in done if o[3]), ""),
        "elapsed": max(o[4] for o in done) - window[0],  # shorter when every caller hit the cap
        "capped": any(o[0] + o[1] >= cap for o in done),
        "latencies_us": [x for o in done for x in o[2]],
        "cpu_seconds": cpu,
        "switches": csw,
        "memory": mem,
    }


def _run_batches(execute_many: Callable[..., List[Any]], message: Any, op: Dict[str, Any]) -> Dict[str, Any]:
    """``execute_many`` over batches of ``batch_size``, ``concurrency`` in flight, from one thread."""
    size = int(op["batch_size"])
    concurrency = int(op["concurrency"])
    batch = [message] * size
    clock = time.perf_counter

    def one() -> Tuple[int, str]:
        results = execute_many(batch, concurrency=concurrency, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        return len(failed), (f"{type(failed[0]).__name__}: {failed[0]}" if failed else "")

    if float(op["warmup"]) > 0:
        one()
    deadline = clock() + float(op["duration"])
    cpu, csw = time.process_time(), switches()
    count = errors = 0
    elapsed = 0.0
    first_error = ""
    while True:
        began = clock()
        failed, text = one()
        ended = clock()
        elapsed += ended - began
        count += size - failed
        errors += failed
        first_error = first_error or text
        if ended >= deadline or count + errors >= int(op["max_requests"]):
            break
    return {
        "ok": True,
        "count": count,
        "errors": errors,
        "first_error": first_error,
        "elapsed": elapsed,
        "capped": ended < deadline,
        "latencies_us": [],
        "cpu_seconds": time.process_time() - cpu,
        "switches": switches() - csw,
        "memory": memory(),
    }


def child_main(argv: Sequence[str]) -> int:
    """``python -m natsbus.bench.roles client|responder URL``: one natsbus role of the bench."""
    if len(argv) != 2 or argv[0] not in ("client", "responder"):
        sys.stderr.write("usage: python -m natsbus.bench.roles client|responder NATS_URL\n")
        return 2
    return _client_main(argv[1]) if argv[0] == "client" else _responder_main(argv[1])


if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
