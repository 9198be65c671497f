"""``natsbus bench``: natsbus against raw nats-py, on the same workload, in the same run.

How a run goes::

    bench (this process)       starts the embedded nats-server (or uses --server / NATS_URL),
                               then four child processes, and drives them over JSON lines
    natsbus responder          python -m natsbus.bench.roles responder URL: a WorkerPool
    natsbus client             python -m natsbus.bench.roles client URL: threads calling execute()
    raw responder              natsbus/bench/raw.py responder URL: an asyncio nats-py callback
    raw client                 natsbus/bench/raw.py client URL: asyncio tasks calling nc.request()

The workload is the spec's ``CreateUserCommand`` request envelope; a payload
size N > 0 adds a ``bio`` of N bytes to its payload. Each responder parses the
request, builds the spec's response envelope (``UserCreated``) and replies;
each client parses and checks the reply.

Only one responder serves at a time (``serve`` / ``pause``), so both
implementations share the subject, the queue group and the server. Each
measurement runs in ``rounds`` rounds whose order alternates (raw, natsbus,
natsbus, raw, ...), so drift hits both alike; its figures pool the rounds.
Throughput counts the requests completed inside a window that opens after a
warm-up, while every caller is still busy; latencies are those of requests
sent and answered inside it. CPU time per request (all threads of a process,
from ``time.process_time()``) is reported beside the rates: on a shared
machine it is steadier than they are, and it shows which side costs more.
So are context switches per request (``getrusage``, all threads): what
handing work between threads costs, which raw asyncio never pays.

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

import attrs

from ..bus import Bus
from ..errors import NatsBusError
from ..server import NatsServer
from ..worker import WorkerPool
from .roles import (
    BATCH_IN_FLIGHT,
    EXTRA_TYPES,
    LARGE_PAYLOAD,
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

# Starts the raw baseline by file path, so its process never imports natsbus.
_RAW_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('natsbus_bench_raw', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.main(sys.argv[2:]))\n"
)


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


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the children import this natsbus
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONSTARTUP", None)
    return env


# -- the bench side: plan and run -------------------------------------------------------


@attrs.frozen
class Options:
    """What to measure (from the command line)."""

    server: Optional[str] = None
    duration: float = 3.0
    rounds: int = 2
    concurrency: Tuple[int, ...] = (64, 256)
    payload_sizes: Tuple[int, ...] = (0, 10240)
    batch_size: int = 1024
    large_requests: int = 10
    json_path: Optional[str] = None
    chart_path: Optional[str] = None
    quick: bool = False

    @property
    def run_duration(self) -> float:
        """Seconds of one implementation's run in one round."""
        return self.duration / self.rounds

    @property
    def warmup(self) -> float:
        return min(0.5, max(0.05, self.run_duration / 4))

    @property
    def max_requests(self) -> int:
        return int(100_000 * max(1.0, self.run_duration))


@attrs.frozen
class Cell:
    """One measurement: a scenario, compared between two implementations."""

    key: str
    scenario: str  # sequential | throughput | batch
    payload: int
    concurrency: int
    impls: Tuple[str, str] = (RAW, NATSBUS)
    max_requests: Optional[int] = None
    duration: Optional[float] = None


def size_label(size: int) -> str:
    """``small``, ``10 KiB``, ``1 MiB``, or bytes."""
    if size <= 0:
        return "small"
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def plan(options: Options, execute_many: bool) -> Tuple[List[Cell], List[Cell]]:
    """The main cells (memory is read after them), then the growth checks."""
    main: List[Cell] = []
    for size in options.payload_sizes:
        main.append(Cell(f"sequential/1/{size}", "sequential", size, 1))
        for n in options.concurrency:
            main.append(Cell(f"throughput/{n}/{size}", "throughput", size, n))
        if execute_many:
            main.append(Cell(f"batch/{BATCH_IN_FLIGHT}/{size}", "batch", size, BATCH_IN_FLIGHT))
    first = options.concurrency[0]
    growth = [
        Cell(f"types/{first}/0", "throughput", 0, first, impls=(NATSBUS, NATSBUS_TYPES)),
        Cell(
            f"sequential/1/{LARGE_PAYLOAD}",
            "sequential",
            LARGE_PAYLOAD,
            1,
            max_requests=max(1, options.large_requests // options.rounds),
            duration=min(2.0, options.run_duration),
        ),
    ]
    return main, growth


class _Runner:
    def __init__(self, options: Options, url: str, out: IO[str]) -> None:
        self.options = options
        self.url = url
        self.out = out
        self.children: Dict[str, _Child] = {}
        self.ready: Dict[str, Dict[str, Any]] = {}
        self.runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
        self.memory: Dict[str, Dict[str, int]] = {RAW: {}, NATSBUS: {}}

    def start(self) -> None:
        env = _child_env()
        raw_file = str(Path(__file__).with_name("raw.py"))
        specs = {
            "raw responder": [sys.executable, "-c", _RAW_BOOT, raw_file, "responder", self.url],
            "raw client": [sys.executable, "-c", _RAW_BOOT, raw_file, "client", self.url],
            "natsbus responder": [sys.executable, "-m", "natsbus.bench.roles", "responder", self.url],
            "natsbus client": [sys.executable, "-m", "natsbus.bench.roles", "client", self.url],
        }
        for name, argv in specs.items():  # all start at once; then wait for each to be ready
            self.children[name] = _Child(name, argv, env)
        for name, child in self.children.items():
            self.ready[name] = child.receive(timeout=60.0)

    def close(self) -> None:
        for child in self.children.values():
            child.close()

    def _roles(self, impl: str) -> Tuple[_Child, _Child, int]:
        if impl == RAW:
            return self.children["raw client"], self.children["raw responder"], 0
        types = EXTRA_TYPES if impl == NATSBUS_TYPES else 0
        return self.children["natsbus client"], self.children["natsbus responder"], types

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
        for round_no in range(opts.rounds):
            order = cell.impls if round_no % 2 == 0 else cell.impls[::-1]
            for impl in order:
                client, responder, types = self._roles(impl)
                responder.call({"op": "serve", "types": types}, timeout=60.0)
                try:
                    result = client.call(dict(op, types=types), timeout=limit)
                finally:
                    paused = responder.call({"op": "pause"}, timeout=60.0)
                result["round"] = round_no
                result["responder_memory"] = paused["memory"]
                result["responder_cpu_seconds"] = paused["cpu_seconds"]
                result["responder_switches"] = paused["switches"]
                result["responder_handled"] = paused["handled"]
                self.runs.setdefault((cell.key, impl), []).append(result)

    def read_memory(self) -> None:
        """Peaks so far, and each client's RSS under load in the first throughput measurement."""
        key = f"throughput/{self.options.concurrency[0]}/{self.options.payload_sizes[0]}"
        for impl, prefix in ((RAW, "raw"), (NATSBUS, "natsbus")):
            client = self.children[f"{prefix} client"].call({"op": "memory"}, timeout=30.0)["memory"]
            responder = self.children[f"{prefix} responder"].call({"op": "memory"}, timeout=30.0)["memory"]
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


# -- targets -------------------------------------------------------------------------


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def _target(
    name: str,
    ratio: Optional[float],
    goal: Optional[Tuple[str, float]],
    raw: str,
    natsbus: str,
    note: str = "",
    result: Optional[str] = None,
) -> Dict[str, Any]:
    if result is None:
        if goal is None:
            result = "-"
        elif ratio is None:
            result = "MISS"
        else:
            op, value = goal
            result = "PASS" if (ratio >= value if op == ">=" else ratio <= value) else "MISS"
    return {
        "name": name,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "target": f"{goal[0]} {goal[1]:.2f}x" if goal else "",
        "result": result,
        "raw": raw,
        "natsbus": natsbus,
        "note": note,
    }


def _fmt_rate(cell: Optional[Dict[str, Any]]) -> str:
    return f"{cell['throughput']:,.0f} req/s" if cell and "throughput" in cell else "-"


def _fmt_us(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:,.1f} ms" if value >= 10_000 else f"{value:,.0f} us"


def _fmt_switches(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt_kib(kib: Optional[int]) -> str:
    return f"{kib / 1024:,.1f} MiB" if kib else "-"


def _errors_note(*cells: Optional[Dict[str, Any]]) -> str:
    notes = [f"{c['errors']} errors ({c['first_error']})" for c in cells if c and c.get("errors")]
    notes += ["hit the request cap" for c in cells if c and c.get("capped")]
    return "; ".join(notes)


def _gate(target: Dict[str, Any], *cells: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """A measurement with errors does not pass, whatever its ratio."""
    if target["result"] == "PASS" and any(c and c.get("errors") for c in cells):
        target["result"] = "MISS"
    return target


def _val(cell: Optional[Dict[str, Any]], key: str) -> Optional[float]:
    value = cell.get(key) if cell else None
    return float(value) if value is not None else None


def targets(
    options: Options, cells: Dict[str, Dict[str, Dict[str, Any]]], memory: Dict[str, Dict[str, int]]
) -> List[Dict[str, Any]]:
    """The issue's targets, each as a ratio natsbus / raw from this run."""
    rows: List[Dict[str, Any]] = []
    first, last = options.concurrency[0], options.concurrency[-1]

    def get(key: str, impl: str) -> Optional[Dict[str, Any]]:
        return cells.get(key, {}).get(impl)

    def rate_row(name: str, key: str, goal: Optional[Tuple[str, float]]) -> Dict[str, Any]:
        raw, nb = get(key, RAW), get(key, NATSBUS)
        ratio = _ratio(_val(nb, "throughput"), _val(raw, "throughput"))
        row = _target(name, ratio, goal, _fmt_rate(raw), _fmt_rate(nb), _errors_note(raw, nb))
        return _gate(row, raw, nb)

    def latency_text(cell: Optional[Dict[str, Any]]) -> str:
        return f"{_fmt_us(_val(cell, 'p50_us'))} (p99 {_fmt_us(_val(cell, 'p99_us'))})"

    for size in options.payload_sizes:
        label = f"{size_label(size)} payload"
        rows.append(rate_row(f"throughput, {first} callers, {label}", f"throughput/{first}/{size}", (">=", 0.75)))
        raw, nb = get(f"sequential/1/{size}", RAW), get(f"sequential/1/{size}", NATSBUS)
        ratio = _ratio(_val(nb, "p50_us"), _val(raw, "p50_us"))
        row = _target(
            f"sequential p50, {label}", ratio, ("<=", 1.2), latency_text(raw), latency_text(nb), _errors_note(raw, nb)
        )
        rows.append(_gate(row, raw, nb))
        name = f"execute_many, {BATCH_IN_FLIGHT} in flight, {label}"
        key = f"batch/{BATCH_IN_FLIGHT}/{size}"
        nb = get(key, NATSBUS)
        if nb is None or "missing" in nb:
            rows.append(_target(name, None, (">=", 1.0), "-", "n/a (execute_many missing)", result="n/a"))
        else:
            rows.append(rate_row(name, key, (">=", 1.0)))
        for n in options.concurrency[1:]:
            rows.append(rate_row(f"throughput, {n} callers, {label}", f"throughput/{n}/{size}", None))

    raw_mem, nb_mem = memory.get(RAW, {}), memory.get(NATSBUS, {})
    for key, name, limit in (
        (
            "client_under_load_kib",
            f"client RSS under load, {first} callers, {size_label(options.payload_sizes[0])}",
            1.25,
        ),
        ("responder_peak_kib", "worker RSS, peak", 1.5),
    ):
        ratio = _ratio(_val(nb_mem, key), _val(raw_mem, key))
        rows.append(_target(name, ratio, ("<=", limit), _fmt_kib(raw_mem.get(key)), _fmt_kib(nb_mem.get(key))))

    if last != first:
        for size in options.payload_sizes:
            hi, lo = get(f"throughput/{last}/{size}", NATSBUS), get(f"throughput/{first}/{size}", NATSBUS)
            raw_hi, raw_lo = get(f"throughput/{last}/{size}", RAW), get(f"throughput/{first}/{size}", RAW)
            raw_ratio = _ratio(_val(raw_hi, "throughput"), _val(raw_lo, "throughput"))
            row = _target(
                f"natsbus {last} vs {first} callers, {size_label(size)} payload",
                _ratio(_val(hi, "throughput"), _val(lo, "throughput")),
                (">=", 0.8),
                f"{raw_ratio:.2f}x" if raw_ratio is not None else "-",
                f"{_fmt_rate(hi)} vs {_fmt_rate(lo)}",
                "natsbus vs itself; raw column: raw's own ratio",
            )
            rows.append(_gate(row, hi, lo))

    key = f"sequential/1/{LARGE_PAYLOAD}"
    raw, nb = get(key, RAW), get(key, NATSBUS)
    works = bool(nb and nb.get("requests") and not nb.get("errors"))
    raw_works = bool(raw and raw.get("requests") and not raw.get("errors"))
    rows.append(
        _target(
            f"{size_label(LARGE_PAYLOAD)} payload works (sequential p50)",
            _ratio(_val(nb, "p50_us"), _val(raw, "p50_us")),
            None,
            _fmt_us(_val(raw, "p50_us")) if raw_works else "failed",
            _fmt_us(_val(nb, "p50_us")) if works else "failed",
            "; ".join(
                f"{impl}: {c['errors']} errors ({c['first_error']})"
                for impl, c in ((RAW, raw), (NATSBUS, nb))
                if c and c.get("errors")
            )
            or "the target is that it works; the ratio is for information",
            result="PASS" if works else "MISS",
        )
    )

    key = f"types/{first}/0"
    one, many = get(key, NATSBUS), get(key, NATSBUS_TYPES)
    row = _target(
        f"{EXTRA_TYPES} more registered types vs none, {first} callers",
        _ratio(_val(many, "throughput"), _val(one, "throughput")),
        (">=", 0.95),
        _fmt_rate(one),
        _fmt_rate(many),
        f"natsbus vs itself: raw column 1 type, natsbus column {EXTRA_TYPES + 1}",
    )
    rows.append(_gate(row, one, many))
    return rows


# -- output ---------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cols: Sequence[str]) -> str:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cols, widths))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render(report: Dict[str, Any]) -> str:
    """The printed report: the targets (ratios first), then every measurement."""
    meta = report["meta"]
    lines = [
        f"natsbus bench: natsbus {meta['natsbus']} vs raw nats-py {meta['nats_py']} "
        f"(Python {meta['python']}, {meta['cpus']} CPUs, JSON {meta['json']})",
        f"server: {meta['server']}",
        f"each measurement: {meta['duration']:g} s per implementation in {meta['rounds']} alternating "
        f"round(s) ({meta['order']}); WorkerPool max_workers {meta['max_workers']}",
        "",
        "Targets: natsbus / raw nats-py, same run",
    ]
    rows = [
        [
            f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-",
            t["target"],
            t["result"],
            t["name"],
            t["raw"],
            t["natsbus"],
            t["note"],
        ]
        for t in report["targets"]
    ]
    lines += _table(["ratio", "target", "result", "measurement", "raw", "natsbus", "note"], rows, right=(0,))
    lines += ["", "Measurements"]
    rows = []
    for cell in report["cells"]:
        for impl, s in cell["results"].items():
            row = [cell["scenario"], size_label(cell["payload"]), str(cell["concurrency"]), impl]
            if "missing" in s:
                rows.append([*row, "n/a", "", "", "", "", "", "", "", "", f"{s['missing']} missing"])
                continue
            runs = " / ".join(f"{r['throughput']:,.0f}" for r in s["runs"])
            note = ", ".join(x for x in (f"rounds: {runs}", "capped" if s["capped"] else "") if x)
            rows.append(
                [
                    *row,
                    f"{s['throughput']:,.0f}",
                    _fmt_us(s["p50_us"]),
                    _fmt_us(s["p99_us"]),
                    _fmt_us(s["client_cpu_us"]),
                    _fmt_us(s["responder_cpu_us"]),
                    _fmt_switches(s.get("client_switches")),
                    _fmt_switches(s.get("responder_switches")),
                    f"{s['requests']:,}",
                    str(s["errors"]),
                    note,
                ]
            )
    headers = [
        "scenario",
        "payload",
        "callers",
        "implementation",
        "req/s",
        "p50",
        "p99",
        "client CPU/req",
        "responder CPU/req",
        "client csw/req",
        "responder csw/req",
        "requests",
        "errors",
        "note",
    ]
    lines += _table(headers, rows, right=(2, 4, 5, 6, 7, 8, 9, 10, 11, 12))
    mem = report["memory"]
    lines += [""]
    lines += _table(
        ["memory (RSS)", "raw", "natsbus"],
        [
            [label, _fmt_kib(mem[RAW].get(key)), _fmt_kib(mem[NATSBUS].get(key))]
            for key, label in (
                ("client_under_load_kib", "client, under load"),
                ("client_peak_kib", "client, peak"),
                ("responder_peak_kib", "responder, peak"),
            )
        ],
        right=(1, 2),
    )
    return "\n".join(lines) + "\n"


def draw_chart(report: Dict[str, Any], path: str) -> None:
    """A PNG: throughput and sequential latency, raw beside natsbus, ratios on top."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    by_key = {c["key"]: c for c in report["cells"]}

    def bars(ax: Any, groups: List[Tuple[str, str]], metric: str, unit: str) -> None:
        labels, raws, nbs = [], [], []
        for key, label in groups:
            results = by_key[key]["results"]
            raw, nb = results.get(RAW, {}), results.get(NATSBUS, {})
            if "missing" in nb or metric not in raw or nb.get(metric) is None:
                continue
            labels.append(label)
            raws.append(raw[metric])
            nbs.append(nb[metric])
        xs = list(range(len(labels)))
        ax.bar([x - 0.2 for x in xs], raws, 0.4, label="raw nats-py", color="#999999")
        ax.bar([x + 0.2 for x in xs], nbs, 0.4, label="natsbus", color="#2a6fbb")
        for x, a, b in zip(xs, raws, nbs):
            if a:
                ax.annotate(f"{b / a:.2f}x", (x + 0.2, b), ha="center", va="bottom", fontsize=8)
        ax.margins(y=0.15)  # room for the ratio labels
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel(unit)

    throughput, latency = [], []
    for cell in report["cells"]:
        if cell["impls"] != [RAW, NATSBUS] or cell["payload"] == LARGE_PAYLOAD:
            continue
        size = size_label(cell["payload"])
        if cell["scenario"] == "throughput":
            throughput.append((cell["key"], f"{cell['concurrency']} callers\n{size}"))
        elif cell["scenario"] == "batch":
            throughput.append((cell["key"], f"execute_many\n{size}"))
        else:
            latency.append((cell["key"], f"sequential\n{size}"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    bars(left, throughput, "throughput", "requests per second")
    left.set_title("Throughput (higher is better)")
    bars(right, latency, "p50_us", "microseconds")
    right.set_title("Sequential p50 latency (lower is better)")
    meta = report["meta"]
    fig.suptitle(f"natsbus {meta['natsbus']} vs raw nats-py {meta['nats_py']} (ratio = natsbus / raw)")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    work = tempfile.TemporaryDirectory(prefix="natsbus-bench-")
    runner: Optional[_Runner] = None
    try:
        if not url:
            server = _start_server(work.name)
            url = server.url
        else:
            Bus(url, connect_timeout=5.0).close()  # fail fast, naming the URL, before any child starts
        out.write(f"natsbus bench against {_server_text(url, server is not None)}; about {_estimate(options):.0f} s\n")
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
        "nats_py": _version("nats-py"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "json": ready["natsbus client"].get("json", "?"),
        "raw_json": ready["raw client"].get("json", "?"),
        "raw_imports_natsbus": bool(ready["raw client"].get("natsbus_loaded")),
        "server": _server_text(url, server is not None),
        "duration": options.duration,
        "rounds": options.rounds,
        "order": "raw, natsbus" if options.rounds == 1 else "raw, natsbus, then natsbus, raw, and so on",
        "warmup": options.warmup,
        "concurrency": list(options.concurrency),
        "payload_sizes": list(options.payload_sizes),
        "batch_size": options.batch_size,
        "batch_in_flight": BATCH_IN_FLIGHT,
        "max_workers": inspect.signature(WorkerPool).parameters["max_workers"].default,
        "execute_many": execute_many,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"meta": meta, "targets": targets(options, by_key, memory_read), "cells": cells, "memory": memory_read}


def _estimate(options: Options) -> float:
    cells = len(options.payload_sizes) * (len(options.concurrency) + 2) + 2
    return cells * 2 * (options.duration + options.rounds * (options.warmup + 0.1)) + 3


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
        default=(64, 256),
        metavar="N,N",
        help="concurrent callers for the throughput runs; the first is the target's (default 64,256)",
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
