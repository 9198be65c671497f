"""``natsbus bench``: natsbus against raw nats-py, on the same workload, in the same run.

How a run goes::

    bench (this process)       starts the embedded nats-server (or uses --server / NATS_URL),
                               then four child processes (six with --baseline), and drives
                               them over JSON lines
    natsbus responder          natsbus.bench.roles responder URL: a WorkerPool
    natsbus client             natsbus.bench.roles client URL: threads calling execute()
    raw responder              natsbus/bench/raw.py responder URL: an asyncio nats-py callback
    raw client                 natsbus/bench/raw.py client URL: asyncio tasks calling nc.request()
    baseline responder/client  with --baseline DIR: the same roles of the natsbus in DIR

The workload is the spec's ``CreateUserCommand`` request envelope; a payload
size N > 0 adds a ``bio`` of N bytes to its payload. Each responder parses the
request, builds the spec's response envelope (``UserCreated``) and replies;
each client parses and checks the reply.

Only one responder serves at a time (``serve`` / ``pause``), so every
implementation shares the subject, the queue group and the server, and a
client of one kind can be measured against a responder of the other (the
cross diagnostics). Each measurement runs in ``rounds`` rounds whose order
alternates (raw, natsbus, natsbus, raw, ...), so drift hits all alike; its
figures pool the rounds. Throughput counts the requests completed inside a
window that opens after a warm-up, while every caller is still busy;
latencies are those of requests sent and answered inside it. CPU time per
request (all threads of a process, from ``time.process_time()``) is
reported beside the rates: on a shared machine it is steadier than they
are, and it shows which side costs more. So are context switches per
request (``getrusage``, all threads): what handing work between threads
costs, which raw asyncio never pays.

Every child runs with one JSON library, ``--json-lib``: by default that of a
plain install (the standard library), so orjson is made unimportable in the
children even where it is installed (the ``fast`` extra); natsbus's codec
and the raw baseline then both fall back to ``json``, as they would without
it. Each child says which library it loaded, and the bench checks.

Every loop is bounded in time and in count; every child is ended in a
``finally`` (SIGKILL when it does not quit). Nothing here is public API.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ..bus import Bus
from ..errors import NatsBusError
from ..server import NatsServer
from ..worker import WorkerPool
from .plan import (
    BASELINE,
    CONCURRENCY,
    JSON_LIBS,
    NATSBUS_TO_RAW,
    NATSBUS_X2,
    NO_STORE,
    PLAIN_JSON,
    RAW_TO_NATSBUS,
    RAW_X2,
    REFERENCE_CALLERS,
    Cell,
    Options,
    plan,
)
from .report import draw_chart, render, targets, versus_baseline
from .roles import (
    BATCH_IN_FLIGHT,
    EXTRA_TYPES,
    NATSBUS,
    NATSBUS_TYPES,
    RAW,
    REQUEST_TIMEOUT,
    SERVER_MAX_PAYLOAD,
)

__all__ = ["BenchError", "add_arguments", "run_bench"]


class BenchError(NatsBusError):
    """The bench could not run: a child failed, exited or did not answer in time."""


# -- the bench side: children ----------------------------------------------------------

# Starts a child. With "json" (a plain install's library) first makes orjson
# unimportable, as it is where the ``fast`` extra is not installed. Then runs
# either a file by path (the raw baseline: its process never imports natsbus)
# or a module as __main__ (the natsbus roles, of this natsbus or the baseline's).
_BOOT = """\
import sys
json_lib, target = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
if json_lib == "json":
    class HideOrjson:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] == "orjson":
                raise ModuleNotFoundError(f"No module named {name!r} (natsbus bench --json-lib json)", name=name)
            return None

    sys.meta_path.insert(0, HideOrjson)
    del HideOrjson
if target.endswith(".py"):
    import importlib.util
    spec = importlib.util.spec_from_file_location("natsbus_bench_raw", target)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    sys.exit(module.main(sys.argv[1:]))
import runpy
runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def child_argv(json_lib: str, target: str, args: Sequence[str]) -> List[str]:
    """The command line of a child: ``target`` is a ``.py`` file (run by path) or a module name."""
    return [sys.executable, "-P", "-c", _BOOT, json_lib, target, *args]  # -P: not the working directory


class _Child:
    """A child process speaking JSON lines; its stderr goes to a temporary file."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str]) -> None:
        self.name = name
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._lines: queue.Queue[Optional[bytes]] = queue.Queue()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        threading.Thread(target=self._read, name=f"bench-{name}-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def send(self, op: Dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(op).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            raise BenchError(f"the {self.name} is gone: {self._stderr_tail()}") from None

    def receive(self, timeout: float) -> Dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"the {self.name} did not answer within {timeout:.0f}s") from None
        if line is None:
            try:
                code: Optional[int] = self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                code = None
            raise BenchError(f"the {self.name} exited (code {code}): {self._stderr_tail()}")
        message: Dict[str, Any] = json.loads(line)
        if "error" in message:
            raise BenchError(f"the {self.name} failed: {message['error']}")
        return message

    def call(self, op: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        self.send(op)
        return self.receive(timeout)

    def _stderr_tail(self, lines: int = 15) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    def close(self) -> None:
        """Ask it to quit; kill it when it does not within 5 s."""
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


#: This natsbus: the directory holding the package.
_ROOT = str(Path(__file__).resolve().parent.parent.parent)
#: The natsbus roles module, where each natsbus version keeps it (before the bench/ package: _bench_roles).
_ROLES_MODULES = ("natsbus.bench.roles", "natsbus._bench_roles")


def _child_env(root: str) -> Dict[str, str]:
    """The environment of a child: ``root`` (the directory holding a natsbus) first on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONSTARTUP", None)
    return env


def roles_module(root: str) -> Optional[str]:
    """The natsbus roles module under ``root``, or ``None`` when it has no natsbus with a bench."""
    for name in _ROLES_MODULES:
        if Path(root, *name.split(".")).with_suffix(".py").is_file():
            return name
    return None


def _git(root: str) -> str:
    """``git describe --always --dirty`` of ``root``, or "" when it is not a git checkout."""
    if not Path(root, ".git").exists():  # not the repository an installed natsbus happens to sit in
        return ""
    try:
        done = subprocess.run(
            ["git", "-C", root, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10.0
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _probe_baseline(root: str) -> Dict[str, str]:
    """Where the baseline's children import natsbus from, and its version; BenchError if not from ``root``."""
    code = "import json, natsbus; print(json.dumps([natsbus.__file__, getattr(natsbus, '__version__', '?')]))"
    argv = [sys.executable, "-P", "-c", code]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60.0, env=_child_env(root))
    except (OSError, subprocess.SubprocessError) as exc:
        raise BenchError(f"the baseline natsbus in {root} does not import: {exc}") from None
    try:
        where, version = json.loads(done.stdout)
    except ValueError:
        raise BenchError(f"the baseline natsbus in {root} does not import: {done.stderr.strip()[-500:]}") from None
    package = Path(root, "natsbus").resolve()
    if Path(where).resolve().parent != package:
        raise BenchError(f"the baseline's children import natsbus from {where}, not from {package}")
    return {"path": str(Path(root).resolve()), "natsbus": str(version), "git": _git(root)}


# -- the bench side: run


class _Runner:
    def __init__(self, options: Options, url: str, out: IO[str]) -> None:
        self.options = options
        self.url = url
        self.out = out
        self.children: Dict[str, _Child] = {}
        self.ready: Dict[str, Dict[str, Any]] = {}
        self.runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        self.memory: Dict[str, Dict[str, int]] = {RAW: {}, NATSBUS: {}}
        self.impls = [RAW, NATSBUS]  # each has a client and a responder child
        if options.baseline:
            self.impls.append(BASELINE)

    def start(self) -> None:
        raw_file = str(Path(__file__).with_name("raw.py"))
        kinds = {RAW: (raw_file, _ROOT), NATSBUS: ("natsbus.bench.roles", _ROOT)}
        if self.options.baseline:
            module = roles_module(self.options.baseline)
            assert module is not None  # run_bench checked
            kinds[BASELINE] = (module, self.options.baseline)
        for impl, (target, root) in kinds.items():  # all start at once; then wait for each to be ready
            env = _child_env(root)
            # A second responder each for the processes figure (not the baseline's).
            roles = ("responder", "responder 2", "client") if impl != BASELINE else ("responder", "client")
            for role in roles:
                argv = child_argv(self.options.json_lib, target, [role.split()[0], self.url])
                self.children[f"{impl} {role}"] = _Child(f"{impl} {role}", argv, env)
        for name, child in self.children.items():
            self.ready[name] = child.receive(timeout=60.0)
        for name, ready in self.ready.items():  # a baseline's codec, say, may not honour --json-lib
            if ready.get("json") != self.options.json_lib:
                raise BenchError(f"the {name} runs JSON library {ready.get('json')!r}, not {self.options.json_lib!r}")

    def close(self) -> None:
        for child in self.children.values():
            child.close()

    def _roles(self, impl: str) -> Tuple[_Child, List[_Child], Dict[str, Any]]:
        """The client, the responders and what they serve, of one implementation (or cross pair)."""
        pairs = {
            RAW_TO_NATSBUS: (RAW, NATSBUS),
            NATSBUS_TO_RAW: (NATSBUS, RAW),
            NATSBUS_TYPES: (NATSBUS, NATSBUS),
            NO_STORE: (NATSBUS, NATSBUS),
            RAW_X2: (RAW, RAW),
            NATSBUS_X2: (NATSBUS, NATSBUS),
        }
        client, responder = pairs.get(impl, (impl, impl))
        responders = [self.children[f"{responder} responder"]]
        if impl in (RAW_X2, NATSBUS_X2):
            responders.append(self.children[f"{responder} responder 2"])
        serve: Dict[str, Any] = {"types": EXTRA_TYPES if impl == NATSBUS_TYPES else 0}
        if impl == NO_STORE:
            serve["store"] = False
        return self.children[f"{client} client"], responders, serve

    def measure(self, cell: Cell) -> None:
        opts = self.options
        duration = cell.duration if cell.duration is not None else opts.run_duration
        op = {
            "op": "run",
            "scenario": cell.scenario,
            "payload": cell.payload,
            "concurrency": cell.concurrency,
            "duration": duration,
            "warmup": opts.warmup,
            "max_requests": cell.max_requests or opts.max_requests,
            "batch_size": opts.batch_size,
        }
        # Generous: a run is bounded by its window plus one request timeout
        # (a batch by one more batch), and 200 extra types are warmed first.
        limit = opts.warmup + duration + 4 * REQUEST_TIMEOUT + 30.0
        for round_no in range(cell.rounds or opts.rounds):
            order = cell.impls if round_no % 2 == 0 else cell.impls[::-1]
            for impl in order:
                client, responders, serve = self._roles(impl)
                if cell.work_us:
                    serve["work_us"] = cell.work_us
                for responder in responders:
                    responder.call({"op": "serve", **serve}, timeout=60.0)
                try:
                    result = client.call(dict(op, types=serve["types"]), timeout=limit)
                finally:
                    paused = [responder.call({"op": "pause"}, timeout=60.0) for responder in responders]
                result["round"] = round_no
                result["responder_memory"] = max((p["memory"] for p in paused), key=lambda m: m["rss_kib"])
                result["responder_cpu_seconds"] = sum(p["cpu_seconds"] for p in paused)
                result["responder_switches"] = sum(p["switches"] for p in paused)
                result["responder_handled"] = sum(p["handled"] for p in paused)
                self.runs.setdefault((cell.key, impl), []).append(result)

    def read_memory(self) -> None:
        """Peaks so far, and each client's RSS under load in the throughput measurement at the reference callers."""
        key = f"throughput/{self.options.reference}/{self.options.payload_sizes[0]}"
        for impl in self.impls:
            client = self.children[f"{impl} client"].call({"op": "memory"}, timeout=30.0)["memory"]
            responder = self.children[f"{impl} responder"].call({"op": "memory"}, timeout=30.0)["memory"]
            under_load = max(r["memory"]["rss_kib"] for r in self.runs[(key, impl)])
            self.memory[impl] = {
                "client_under_load_kib": under_load,
                "client_peak_kib": client["peak_kib"],
                "responder_peak_kib": responder["peak_kib"],
            }


def percentile(sorted_values: Sequence[float], pct: float) -> Optional[float]:
    """Nearest-rank percentile of already sorted values (``None`` when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return float(sorted_values[int(rank) - 1])


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Pool the rounds of one implementation in one cell."""
    if any("missing" in r for r in runs):
        return {"missing": runs[0]["missing"]}
    count = sum(r["count"] for r in runs)
    elapsed = sum(r["elapsed"] for r in runs)
    latencies = sorted(x for r in runs for x in r["latencies_us"])
    handled = sum(r["responder_handled"] for r in runs)
    return {
        "requests": count,
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
        "seconds": round(elapsed, 3),
        "throughput": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_us": percentile(latencies, 50),
        "p99_us": percentile(latencies, 99),
        # CPU time per request, all threads of the process: steadier than rates on a shared machine
        "client_cpu_us": round(1e6 * sum(r["cpu_seconds"] for r in runs) / count, 1) if count else None,
        "responder_cpu_us": round(1e6 * sum(r["responder_cpu_seconds"] for r in runs) / handled, 1)
        if handled
        else None,
        # context switches per request (all threads): the cost of handing work between threads
        "client_switches": round(sum(r["switches"] for r in runs) / count, 2) if count else None,
        "responder_switches": round(sum(r["responder_switches"] for r in runs) / handled, 2) if handled else None,
        "capped": any(r["capped"] for r in runs),
        "runs": [
            {
                "round": r["round"],
                "requests": r["count"],
                "errors": r["errors"],
                "throughput": round(r["count"] / r["elapsed"], 1) if r["elapsed"] > 0 else 0.0,
            }
            for r in runs
        ],
    }


# -- entry point -------------------------------------------------------------------------


def _server_text(url: str, embedded: bool) -> str:
    if embedded:
        return f"embedded nats-server at {url} (max_payload {SERVER_MAX_PAYLOAD // (1024 * 1024)} MiB)"
    return f"{url}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _start_server(work: str) -> NatsServer:
    conf = Path(work) / "bench.conf"
    conf.write_text(f"max_payload: {SERVER_MAX_PAYLOAD}\n")
    return NatsServer(jetstream=False, args=["-c", str(conf)]).start()


def bench(options: Options, out: IO[str]) -> Dict[str, Any]:
    """Run every measurement; return the report (also what ``--json`` writes)."""
    from .._version import __version__

    url = options.server or os.environ.get("NATS_URL") or ""
    server: Optional[NatsServer] = None
    baseline = _probe_baseline(options.baseline) if options.baseline else None
    work = tempfile.TemporaryDirectory(prefix="natsbus-bench-")
    runner: Optional[_Runner] = None
    try:
        if not url:
            server = _start_server(work.name)
            url = server.url
        else:
            Bus(url, connect_timeout=5.0).close()  # fail fast, naming the URL, before any child starts
        out.write(
            f"natsbus bench against {_server_text(url, server is not None)}, JSON library {options.json_lib}"
            f"{' and a baseline' if baseline else ''}; about {_estimate(options):.0f} s\n"
        )
        out.flush()
        runner = _Runner(options, url, out)
        runner.start()
        execute_many = bool(runner.ready["natsbus client"].get("execute_many"))
        main, growth = plan(options, execute_many)
        for cell in main:
            runner.measure(cell)
        runner.read_memory()
        for cell in growth:
            runner.measure(cell)
        runs, memory_read = runner.runs, runner.memory
        ready = runner.ready
    finally:
        if runner is not None:
            runner.close()
        if server is not None:
            server.close()
        work.cleanup()

    cells: List[Dict[str, Any]] = []
    by_key: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for cell in main + growth:
        results = {impl: summarise(runs[(cell.key, impl)]) for impl in cell.impls if (cell.key, impl) in runs}
        by_key[cell.key] = results
        cells.append(
            {
                "key": cell.key,
                "scenario": cell.scenario,
                "payload": cell.payload,
                "concurrency": cell.concurrency,
                "impls": list(cell.impls),
                "results": results,
            }
        )
    if not execute_many:
        for size in options.payload_sizes:
            key = f"batch/{BATCH_IN_FLIGHT}/{size}"
            missing = {"missing": "execute_many"}
            by_key[key] = {NATSBUS: missing}
            cells.append(
                {
                    "key": key,
                    "scenario": "batch",
                    "payload": size,
                    "concurrency": BATCH_IN_FLIGHT,
                    "impls": [RAW, NATSBUS],
                    "results": {NATSBUS: missing},
                }
            )
    meta = {
        "natsbus": __version__,
        "natsbus_git": _git(_ROOT),
        "baseline": baseline,
        "nats_py": _version("nats-py"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "json": options.json_lib,  # every child checked: see _Runner.start
        "json_plain_install": PLAIN_JSON,
        "raw_json": ready["raw client"].get("json", "?"),
        "raw_imports_natsbus": bool(ready["raw client"].get("natsbus_loaded")),
        "server": _server_text(url, server is not None),
        "duration": options.duration,
        "rounds": options.rounds,
        "order": "raw first" if options.rounds == 1 else "raw first, then in reverse order, and so on",
        "warmup": options.warmup,
        "quick": options.quick,
        "concurrency": list(options.concurrency),
        "reference_callers": options.reference,
        "payload_sizes": list(options.payload_sizes),
        "batch_size": options.batch_size,
        "batch_in_flight": BATCH_IN_FLIGHT,
        "max_workers": inspect.signature(WorkerPool).parameters["max_workers"].default,
        "execute_many": execute_many,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    report = {"meta": meta, "targets": targets(options, by_key, memory_read), "cells": cells, "memory": memory_read}
    if baseline is not None:
        report["baseline"] = versus_baseline(cells, memory_read)
    return report


def _estimate(options: Options) -> float:
    main, growth = plan(options, execute_many=True)
    runs = sum(len(cell.impls) for cell in main + growth)
    return runs * (options.duration + options.rounds * (options.warmup + 0.1)) + 3


# -- command line --------------------------------------------------------------------------


def _int_list(minimum: int) -> Callable[[str], Tuple[int, ...]]:
    def parse(text: str) -> Tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        return values

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"expected 0 < seconds <= 600, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``natsbus bench`` options."""
    parser.add_argument("--server", help="NATS URL to use instead of NATS_URL / the embedded server")
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=3.0,
        help="seconds each implementation is measured per measurement, split over the rounds (default 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        choices=range(1, 11),
        metavar="N",
        help="alternating rounds per measurement (default 2: raw, natsbus, natsbus, raw)",
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list(1),
        default=CONCURRENCY,
        metavar="N,N",
        help="concurrent callers for the throughput runs (default 8,32,64,256); the targets are at 8, 32 and 64, "
        f"memory and the diagnostics at {REFERENCE_CALLERS} (else at the first given)",
    )
    parser.add_argument(
        "--payload-sizes",
        type=_int_list(0),
        default=(0, 10240),
        metavar="BYTES,BYTES",
        help="bytes added to the request payload; 0 is the spec's small payload (default 0,10240)",
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="also write the report as JSON")
    parser.add_argument(
        "--chart",
        dest="chart_path",
        metavar="PATH",
        help="also draw a PNG chart (needs the chart extra: pip install 'natsbus[chart]')",
    )
    parser.add_argument(
        "--json-lib",
        choices=JSON_LIBS,
        default=PLAIN_JSON,
        help="the JSON library of every child (default json: a plain install's; orjson needs the fast extra)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the natsbus in DIR (a directory holding a natsbus package, e.g. a git worktree "
        "of another commit) in the same run, and compare the two",
    )
    parser.add_argument("--quick", action="store_true", help="a very short run, for smoke tests (numbers are noise)")


@contextlib.contextmanager
def _terminate_as_error() -> Iterator[None]:
    """On the main thread, SIGTERM raises BenchError, so the children and the server are still ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise BenchError("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_bench(args: argparse.Namespace, out: Optional[IO[str]] = None) -> int:
    """Run ``natsbus bench`` from parsed arguments; print the report; return the exit status."""
    out = out or sys.stdout
    if args.chart_path and importlib.util.find_spec("matplotlib") is None:
        sys.stderr.write("natsbus bench: --chart needs matplotlib: pip install 'natsbus[chart]'\n")
        return 2
    if args.json_lib == "orjson" and importlib.util.find_spec("orjson") is None:
        sys.stderr.write("natsbus bench: --json-lib orjson needs orjson: pip install 'natsbus[fast]'\n")
        return 2
    if args.baseline and roles_module(args.baseline) is None:
        sys.stderr.write(f"natsbus bench: --baseline {args.baseline}: no natsbus package with a bench in it\n")
        return 2
    options = Options(
        server=args.server,
        duration=0.3 if args.quick else args.duration,
        rounds=args.rounds,
        concurrency=args.concurrency,
        payload_sizes=args.payload_sizes,
        batch_size=128 if args.quick else 1024,
        large_requests=2 if args.quick else 10,
        json_path=args.json_path,
        chart_path=args.chart_path,
        quick=args.quick,
        json_lib=args.json_lib,
        baseline=str(Path(args.baseline).resolve()) if args.baseline else None,
    )
    try:
        with _terminate_as_error():
            report = bench(options, out)
    except (BenchError, NatsBusError) as exc:
        sys.stderr.write(f"natsbus bench failed: {exc}\n")
        return 1
    out.write("\n" + render(report))
    if options.json_path:
        Path(options.json_path).write_text(json.dumps(report, indent=2) + "\n")
        out.write(f"\nwrote {options.json_path}\n")
    if options.chart_path:
        draw_chart(report, options.chart_path)
        out.write(f"wrote {options.chart_path}\n")
    return 0
