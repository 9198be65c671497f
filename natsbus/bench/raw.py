"""The raw nats-py baseline that ``natsbus bench`` measures natsbus against.

This module is the one deliberate exception to "only ``natsbus._transport``
imports nats": it is the yardstick, so it must use nats-py directly, the way
a plain asyncio application would. Nothing in natsbus imports it.

It never imports natsbus either, so a baseline process holds nats-py and
asyncio only and its memory is a fair reference. For the same reason the
bench starts it by file path (see ``natsbus.bench.runner``), not as
``natsbus.bench.raw``, which would import the natsbus package first. The
few helpers it shares with ``natsbus.bench.roles`` (memory and
context-switch readings, the line protocol) are repeated here on purpose.

Roles, each a process speaking JSON lines on stdin/stdout with the bench:

* ``responder``: on ``serve`` subscribes ``commands.CreateUserCommand`` in
  queue group ``user-service`` with an asyncio callback that parses the
  request envelope, builds the spec's response envelope and replies; on
  ``pause`` drains the subscription.
* ``client``: on ``run`` measures one scenario with N asyncio tasks calling
  ``nc.request()`` (sequential = 1 task), or batches drained by 64 tasks of
  one task group; each reply is parsed and checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

SUBJECT = "commands.CreateUserCommand"
QUEUE_GROUP = "user-service"
REQUEST_TIMEOUT = 10.0

try:  # the same JSON library natsbus.codec picks, so both sides do equal work
    import orjson

    JSON_BACKEND = "orjson"

    def dumps(obj: Any) -> bytes:
        data: bytes = orjson.dumps(obj)
        return data

    loads: Callable[[bytes], Any] = orjson.loads

except ImportError:
    JSON_BACKEND = "json"
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def dumps(obj: Any) -> bytes:
        return _encoder.encode(obj).encode("utf-8")

    loads = json.loads


_stamp: Tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """RFC 3339 UTC to the second, formatted once per second."""
    global _stamp
    second = int(time.time())
    if second != _stamp[0]:
        _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second)))
    return _stamp[1]


def memory() -> Dict[str, int]:
    """This process's resident set now and at its peak, in KiB."""
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


def send(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def payload_for(size: int) -> Dict[str, Any]:
    """The CreateUserCommand payload; ``size`` > 0 adds a ``bio`` of that many bytes."""
    payload: Dict[str, Any] = {"name": "Alice", "email": "alice@example.com"}
    if size > 0:
        payload["bio"] = "x" * size
    return payload


# -- responder ------------------------------------------------------------------


async def _responder(nc: Client, commands: asyncio.StreamReader) -> None:
    handled = 0

    work_us = 0

    async def on_request(msg: Msg) -> None:
        nonlocal handled
        handled += 1
        if work_us:  # the handler's own work (the processes figure)
            end = time.thread_time() + work_us / 1e6
            while time.thread_time() < end:
                pass
        command_id = ""
        try:
            request = loads(msg.data)
            command_id = request["command_id"]
            if request["command_type"] != "CreateUserCommand":
                raise ValueError(f"unexpected command_type {request['command_type']!r}")
            payload = request["payload"]
            if not isinstance(payload["name"], str) or not isinstance(payload["email"], str):
                raise ValueError("'name' and 'email' must be strings")
            body = dumps(
                {
                    "success": True,
                    "command_id": command_id,
                    "timestamp": utc_timestamp(),
                    "payload": {"user_id": f"user-{uuid.uuid4()}", "created_at": utc_timestamp()},
                    "error": None,
                }
            )
        except Exception as exc:
            body = dumps(
                {
                    "success": False,
                    "command_id": command_id,
                    "timestamp": utc_timestamp(),
                    "payload": None,
                    "error": f"Invalid request format: {exc}",
                }
            )
        await msg.respond(body)

    sub: Optional[Subscription] = None
    cpu = 0.0
    csw = 0
    while True:
        op = await _next_op(commands)
        if op is None or op["op"] == "quit":
            return
        if op["op"] == "serve":
            if op.get("types", 0):
                send({"error": "the raw responder serves CreateUserCommand only"})
                continue
            work_us = int(op.get("work_us", 0))
            if sub is None:
                sub = await nc.subscribe(SUBJECT, queue=QUEUE_GROUP, cb=on_request)
                await nc.flush()  # the server has the SUB before we say so
                handled, cpu, csw = 0, time.process_time(), switches()
            send({"ok": True})
        elif op["op"] == "pause":
            work = {"handled": handled, "cpu_seconds": time.process_time() - cpu, "switches": switches() - csw}
            if sub is not None:
                await sub.drain()  # type: ignore[no-untyped-call]
                sub = None
            await nc.flush()
            send({"ok": True, "memory": memory(), **work})
        elif op["op"] == "memory":
            send({"ok": True, "memory": memory()})
        else:
            send({"error": f"unknown op {op['op']!r}"})


# -- client ---------------------------------------------------------------------


class _Caller:
    """One request as a client application would make it: build, send, parse, check."""

    def __init__(self, nc: Client, payload: Dict[str, Any]) -> None:
        self.nc = nc
        self.payload = payload

    async def call(self) -> Dict[str, Any]:
        command_id = f"cmd-{uuid.uuid4()}"
        body = dumps(
            {
                "command_type": "CreateUserCommand",
                "command_id": command_id,
                "service_id": "bench-client",
                "timestamp": utc_timestamp(),
                "payload": self.payload,
            }
        )
        msg = await self.nc.request(SUBJECT, body, timeout=REQUEST_TIMEOUT)
        reply = loads(msg.data)
        if reply.get("success") is not True:
            raise RuntimeError(f"the responder failed: {reply.get('error')}")
        if reply.get("command_id") != command_id:
            raise RuntimeError("the reply answers another request")
        created: Dict[str, Any] = reply["payload"]
        if not isinstance(created["user_id"], str) or not isinstance(created["created_at"], str):
            raise RuntimeError("the reply's payload is not a UserCreated")
        return created


async def _run_window(caller: _Caller, op: Dict[str, Any]) -> Dict[str, Any]:
    """``concurrency`` tasks loop until the window closes; count what completes inside it."""
    concurrency = int(op["concurrency"])
    cap = int(op["max_requests"]) // concurrency + 1
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    start = clock()
    t0 = start + float(op["warmup"])
    t1 = t0 + float(op["duration"])

    # requests, errors, latencies, first error text, when it stopped counting
    async def worker() -> Tuple[int, int, List[float], str, float]:
        count = errors = 0
        latencies: List[float] = []
        first_error = ""
        while True:
            began = clock()
            failed: Optional[BaseException] = None
            try:
                await caller.call()
            except Exception as exc:
                failed = exc
            ended = clock()
            if ended > t1:
                return count, errors, latencies, first_error, t1
            if ended >= t0:
                if failed is None:
                    count += 1
                    if began >= t0:
                        latencies.append(round((ended - began) * 1e6, 1))
                else:
                    errors += 1
                    first_error = first_error or f"{type(failed).__name__}: {failed}"
                if count + errors >= cap:
                    return count, errors, latencies, first_error, ended

    async def sample() -> Tuple[float, int, Dict[str, int]]:
        await asyncio.sleep(max(0.0, t0 - clock()))
        cpu, csw = time.process_time(), switches()
        await asyncio.sleep(max(0.0, t1 - clock()))  # the window's end, under full load
        return time.process_time() - cpu, switches() - csw, memory()

    probe = loop.create_task(sample())
    results = await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, csw, mem = await probe
    latencies = [x for r in results for x in r[2]]
    return {
        "ok": True,
        "count": sum(r[0] for r in results),
        "errors": sum(r[1] for r in results),
        "first_error": next((r[3] for r in results if r[3]), ""),
        "elapsed": max(r[4] for r in results) - t0,  # shorter when every task hit the cap
        "capped": any(r[0] + r[1] >= cap for r in results),
        "latencies_us": latencies,
        "cpu_seconds": cpu,
        "switches": csw,
        "memory": mem,
    }


async def _run_batches(caller: _Caller, op: Dict[str, Any]) -> Dict[str, Any]:
    """Batches of ``batch_size`` requests, each drained by ``concurrency`` tasks of one group."""
    size = int(op["batch_size"])
    concurrency = int(op["concurrency"])
    clock = time.perf_counter

    async def batch() -> Tuple[int, str]:
        todo = iter(range(size))
        errors = 0
        first_error = ""

        async def drain() -> None:
            nonlocal errors, first_error
            for _ in todo:  # the tasks share one iterator: `concurrency` in flight
                try:
                    await caller.call()
                except Exception as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"

        await asyncio.gather(*(drain() for _ in range(min(concurrency, size))))
        return errors, first_error

    if float(op["warmup"]) > 0:
        await batch()
    deadline = clock() + float(op["duration"])
    cpu, csw = time.process_time(), switches()
    count = errors = 0
    elapsed = 0.0
    first_error = ""
    while True:
        began = clock()
        failed, text = await batch()
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


async def _client(nc: Client, commands: asyncio.StreamReader) -> None:
    while True:
        op = await _next_op(commands)
        if op is None or op["op"] == "quit":
            return
        if op["op"] == "run":
            caller = _Caller(nc, payload_for(int(op["payload"])))
            if op["scenario"] == "batch":
                send(await _run_batches(caller, op))
            elif op["scenario"] in ("sequential", "throughput"):
                send(await _run_window(caller, op))
            else:
                send({"error": f"the raw client has no scenario {op['scenario']!r}"})
        elif op["op"] == "memory":
            send({"ok": True, "memory": memory()})
        else:
            send({"error": f"unknown op {op['op']!r}"})


# -- process --------------------------------------------------------------------


async def _next_op(commands: asyncio.StreamReader) -> Optional[Dict[str, Any]]:
    line = await commands.readline()
    if not line:
        return None  # the bench went away: stop
    op: Dict[str, Any] = json.loads(line)
    return op


async def _main(role: str, url: str) -> None:
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    connect = nats.connect(url, name=f"bench-raw-{role}", connect_timeout=5, max_reconnect_attempts=0)
    nc = await asyncio.wait_for(connect, 10.0)  # nats-py keeps retrying a refused first connect
    try:
        # natsbus_loaded proves the baseline's memory holds no natsbus code.
        send({"ready": True, "pid": os.getpid(), "json": JSON_BACKEND, "natsbus_loaded": "natsbus" in sys.modules})
        if role == "responder":
            await _responder(nc, commands)
        else:
            await _client(nc, commands)
    finally:
        await nc.close()


def main(argv: List[str]) -> int:
    """``<client|responder> <url>``: run one baseline role until stdin closes."""
    if len(argv) != 2 or argv[0] not in ("client", "responder"):
        sys.stderr.write("usage: bench/raw.py client|responder NATS_URL\n")
        return 2
    asyncio.run(_main(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
