"""``natsbus execute-many`` / ``natsbus ask-many``: a file of payloads, each result written as it finishes.

FILE (``-``: standard input) is JSON Lines, one payload per non-blank line,
or CSV (``--format csv``, or a ``.csv`` file): a header row, then one
payload per row, an object of the header's names and the row's cells.
Cells are strings; a header ``age:int`` makes its column an ``int`` (also
``float``, ``bool``, ``json``; an empty cell there is ``null``). Every line
is checked before anything is sent. At most ``--concurrency`` requests are
in flight.

Results go to standard output (or ``--output FILE``) as they finish, one
JSON line per payload with its input line number, in input order
(``--order completion``: as they finish)::

    {"line": 1, "ok": true, "result": {...}}
    {"line": 2, "ok": false, "type": "ConflictError", "error": "User already exists ..."}

Nothing finished is lost. On SIGINT (Ctrl-C) or SIGTERM it stops sending,
waits at most ``--grace`` seconds for the replies in flight, writes every
finished result, prints the summary and exits 130 / 143. ``--resume
--output FILE`` runs the same input again and sends only the lines whose
result is not in FILE yet. Each command's ``command_id`` is
``cmd-<run key>-<line>``, the run key derived from the type and the input
(or ``--run-key``): a re-run sends the same ids, so a pool with
``idempotency=`` answers a command that already ran (its reply lost to the
interruption) without running it again.

Standard error gets a progress bar while it runs when it is a terminal, a
progress line every ``--progress-interval`` seconds (10) when it is not,
and a summary at the end counting successes and failures by error type.

Exit status: 0 every payload succeeded; 1 some failed; 2 usage error (a
line that is not JSON, a bad CSV row, a missing file, a bad type name), before
anything is sent; 3 no NATS server; 130 / 143 interrupted.

Why ``submit()`` futures, not ``execute_many()`` on chunks: a chunk's
results come back only when its slowest request is done (the others wait,
and the next chunk is not sent meanwhile), and an interruption inside a
chunk would lose the chunk's finished results. Here a window of futures
keeps ``--concurrency`` requests in flight all the time, and each result is
written as soon as every earlier line's is (``--order input``; finished
results waiting behind a slow line are bounded, after which sending pauses).
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import os
import queue
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Set, TextIO, Tuple

import attrs

from .. import codec
from ..messages import Command, Kind, Query
from .options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_options,
    add_json_option,
    error_code,
    exit_code,
    fail,
    non_negative_float,
    open_bus,
    positive_float,
    positive_int,
    write_json,
)

__all__ = ["BATCH_COMMANDS", "ProgressBar", "add_batch_commands", "run_batch"]

BATCH_COMMANDS = ("execute-many", "ask-many")

#: Seconds between progress lines when standard error is not a terminal.
LINES_INTERVAL = 10.0
#: Seconds between redraws of the progress bar.
BAR_INTERVAL = 0.1
#: Seconds to wait for the replies in flight after a signal, by default.
DEFAULT_GRACE = 5.0


@attrs.frozen
class _RawCommand(Command[Any]):
    """A command whose payload is sent as given (JSON data, not attrs fields)."""

    payload: Any


@attrs.frozen
class _RawQuery(Query[Any]):
    """A query whose payload is sent as given."""

    payload: Any


codec.converter.register_unstructure_hook(_RawCommand, lambda message: message.payload)
codec.converter.register_unstructure_hook(_RawQuery, lambda message: message.payload)


def _message_class(kind: Kind, name: str) -> type:
    """A message class with the wire type name ``name`` (validated) that sends raw payloads."""
    base = _RawCommand if kind is Kind.COMMAND else _RawQuery
    return type(name, (base,), {"__module__": __name__}, type_name=name)


def add_batch_commands(sub: Any) -> None:
    """Add ``execute-many`` and ``ask-many`` to the ``natsbus`` sub-commands."""
    for name, kind, prefix, timeout in (
        ("execute-many", "command", "commands", 5.0),
        ("ask-many", "query", "queries", 3.0),
    ):
        text = (
            f"send each payload of a JSON Lines or CSV file as a {kind} to {prefix}.TYPE, pipelined; "
            "each result is written as it finishes, and an interrupted run keeps them (see --resume)"
        )
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("type", help=f"the {kind} type name")
        cmd.add_argument("file", help="JSON Lines or CSV, one payload per line ('-' reads standard input)")
        add_connection_options(cmd)
        add_json_option(cmd)
        cmd.add_argument(
            "--format",
            choices=("auto", "jsonl", "csv"),
            default="auto",
            help="the input's format (default auto: csv for a .csv file, else jsonl)",
        )
        cmd.add_argument("-o", "--output", help="write the results to this file (default: standard output)")
        cmd.add_argument(
            "--resume",
            action="store_true",
            help="run the same input again, sending only the lines whose result is not in --output yet",
        )
        if kind == "command":
            cmd.add_argument(
                "--run-key",
                help="the key in each command_id, cmd-KEY-LINE (default: derived from the type and the input)",
            )
        cmd.add_argument(
            "--order",
            choices=("input", "completion"),
            default="input",
            help="write the results in input order (default), or as they finish",
        )
        cmd.add_argument(
            "--timeout", type=positive_float, default=timeout, help=f"seconds per {kind} (default {timeout:g})"
        )
        cmd.add_argument("--concurrency", type=positive_int, default=64, help="requests in flight at most (default 64)")
        cmd.add_argument(
            "--grace",
            type=non_negative_float,
            default=DEFAULT_GRACE,
            help=f"seconds to wait for the replies in flight after SIGINT/SIGTERM (default {DEFAULT_GRACE:g})",
        )
        cmd.add_argument("--service-id", default="natsbus-cli", help="the service_id put in each envelope")
        cmd.add_argument(
            "--progress",
            choices=("auto", "bar", "lines", "never"),
            default="auto",
            help="progress on standard error: a bar, or a line every --progress-interval seconds "
            "(default auto: the bar on a terminal, else lines; never with --json)",
        )
        cmd.add_argument(
            "--progress-interval",
            type=non_negative_float,
            help=f"seconds between progress lines (default {LINES_INTERVAL:g}) or bar redraws ({BAR_INTERVAL:g})",
        )


class ProgressBar:
    """Progress on a stream: a one-line bar redrawn with ``\\r``, or one line per interval.

    Args:
        stream: Where to draw (standard error).
        total: How many items, when known.
        label: Shown before the bar.
        width: Characters of the bar itself.
        interval: Seconds between redraws at least (the bar's last one always draws).
        lines: Write a new line each ``interval`` (for a log, not a terminal)
            instead of redrawing one; the first after ``interval``, none at the end.
    """

    def __init__(
        self,
        stream: TextIO,
        total: Optional[int],
        label: str,
        *,
        width: int = 30,
        interval: float = BAR_INTERVAL,
        lines: bool = False,
    ) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.width = width
        self.interval = interval
        self.lines = lines
        self._started = time.monotonic()
        self._drawn_at = self._started if lines else -1.0
        self._drawn = False

    def __call__(self, done: int, total: Optional[int] = None, failed: int = 0) -> None:
        now = time.monotonic()
        total = self.total if self.total is not None else total
        if self.lines:
            if now - self._drawn_at < self.interval:
                return
            self._drawn_at = now
            self.stream.write(self.render_line(done, total, now - self._started, failed) + "\n")
            self.stream.flush()
            return
        if total is not None and done < total and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        self.stream.write("\r" + self.render(done, total, now - self._started) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def render(self, done: int, total: Optional[int], elapsed: float) -> str:
        """The bar for ``done`` of ``total`` after ``elapsed`` seconds."""
        rate = done / elapsed if elapsed > 0 else 0.0
        if not total:
            return f"{self.label} {done} done {rate:.0f}/s"
        filled = min(self.width, self.width * done // total)
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label} [{bar}] {done}/{total} {100 * done // total:3d}% {rate:.0f}/s{_eta(done, total, rate)}"

    def render_line(self, done: int, total: Optional[int], elapsed: float, failed: int = 0) -> str:
        """The progress line for a log: no bar, the failures so far."""
        rate = done / elapsed if elapsed > 0 else 0.0
        failures = f", {failed} failed" if failed else ""
        if not total:
            return f"{self.label}: {done} done {rate:.0f}/s{failures}"
        return f"{self.label}: {done}/{total} {100 * done // total}% {rate:.0f}/s{_eta(done, total, rate)}{failures}"

    def close(self) -> None:
        """End the bar's line (only if something was drawn; once)."""
        if self._drawn:
            self._drawn = False
            self.stream.write("\n")
            self.stream.flush()


def _eta(done: int, total: int, rate: float) -> str:
    return f" eta {(total - done) / rate:.0f}s" if 0 < done < total and rate > 0 else ""


class _Usage(Exception):
    """A usage error found before anything is sent (exit status 2)."""


# -- input -------------------------------------------------------------------------


def _decoded(raw_lines: Iterable[bytes], source: str, digest: Optional[Any]) -> Iterator[str]:
    """The lines as text (a UTF-8 BOM dropped), each fed to ``digest`` as bytes first."""
    for number, raw in enumerate(raw_lines, 1):
        if digest is not None:
            digest.update(raw)
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise _Usage(f"line {number} of {source} is not UTF-8") from None


def _json_lines(lines: Iterable[str], source: str) -> Iterator[Tuple[int, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise _Usage(f"line {number} of {source} is not valid JSON: {exc}") from None


_CSV_TYPES: Dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda cell: {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}[
        cell.strip().lower()
    ],
    "json": json.loads,
}


def _csv_header(row: List[str], number: int, source: str) -> List[Tuple[str, str]]:
    columns = []
    for cell in row:
        name, sep, kind = cell.strip().rpartition(":")
        if not sep or kind not in _CSV_TYPES:
            name, kind = cell.strip(), "str"
        if not name:
            raise _Usage(f"line {number} of {source}: the header has an empty column name")
        columns.append((name, kind))
    names = [name for name, _ in columns]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise _Usage(f"line {number} of {source}: the header names {', '.join(map(repr, twice))} more than once")
    return columns


def _csv_rows(lines: Iterable[str], source: str) -> Iterator[Tuple[int, Any]]:
    reader = csv.reader(lines)
    columns: Optional[List[Tuple[str, str]]] = None
    start = 1
    try:
        for row in reader:
            number, start = start, reader.line_num + 1  # a quoted cell may span lines: where the row starts
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns = _csv_header(row, number, source)
                continue
            if len(row) != len(columns):
                raise _Usage(f"line {number} of {source} has {len(row)} fields; the header has {len(columns)}")
            payload: Dict[str, Any] = {}
            for (name, kind), cell in zip(columns, row):
                if kind == "str":
                    payload[name] = cell
                    continue
                try:
                    payload[name] = _CSV_TYPES[kind](cell) if cell.strip() else None
                except (ValueError, KeyError):
                    raise _Usage(f"line {number} of {source}, column {name!r}: {cell!r} is not a {kind}") from None
            yield number, payload
    except csv.Error as exc:
        raise _Usage(f"line {reader.line_num} of {source} is not valid CSV: {exc}") from None


@attrs.frozen
class _Input:
    """The payloads, checked: a way to stream them, how many, their line numbers (if kept), a digest."""

    stream: Callable[[], Iterator[Tuple[int, Any]]]
    total: int
    lines: Set[int]
    digest: str


def _read_input(path: str, fmt: str, stdin: TextIO, label: str, keep_lines: bool) -> _Input:
    """Every line checked before any is sent (the line numbers kept when ``keep_lines``).

    A file is read twice (checked, then streamed), so it need not fit in
    memory; standard input is read once, into memory.
    """
    if fmt == "auto":
        fmt = "csv" if path.lower().endswith(".csv") else "jsonl"
    parse = _csv_rows if fmt == "csv" else _json_lines
    digest = hashlib.sha256(f"{label}\0{fmt}\0".encode())
    if path == "-":
        buffer: Optional[BinaryIO] = getattr(stdin, "buffer", None)
        data = buffer.read() if buffer is not None else stdin.read().encode("utf-8")
        items = list(parse(_decoded(data.splitlines(keepends=True), "standard input", digest), "standard input"))
        return _Input(lambda: iter(items), len(items), {n for n, _ in items}, digest.hexdigest())
    numbers: Set[int] = set()
    count = 0
    try:
        with open(path, "rb") as handle:
            for number, _ in parse(_decoded(handle, path, digest), path):
                count += 1
                if keep_lines:
                    numbers.add(number)
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror or exc}") from None

    def stream() -> Iterator[Tuple[int, Any]]:
        with open(path, "rb") as handle:
            yield from parse(_decoded(handle, path, None), path)

    return _Input(stream, count, numbers, digest.hexdigest())


# -- output ------------------------------------------------------------------------


def _finished_lines(path: str, warn: Callable[[str], None], name: str) -> Set[int]:
    """The input line numbers that have a result in ``path``.

    A last row without its newline (the process was killed while writing
    it) is cut off: its line runs again.
    """
    done: Set[int] = set()
    try:
        handle = open(path, "r+b")
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        complete = 0
        for number, raw in enumerate(handle, 1):
            if not raw.endswith(b"\n"):
                handle.truncate(complete)
                warn(f"the last row of {path} was incomplete; dropped (its line runs again)")
                break
            complete += len(raw)
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)["line"]
                if not isinstance(line, int):
                    raise TypeError(line)
            except (ValueError, KeyError, TypeError):
                raise _Usage(f"line {number} of {path} is not a result row of natsbus {name}") from None
            done.add(line)
    return done


def _row(line: int, future: Future[Any]) -> Dict[str, Any]:
    error = future.exception()
    if error is None:
        return {"line": line, "ok": True, "result": future.result()}
    return {"line": line, "ok": False, "type": type(error).__name__, "error": str(error)}


# -- signals -----------------------------------------------------------------------


_WAKE = -1  # put in the completion queue by the signal handler


class _Interrupted(BaseException):  # as KeyboardInterrupt: no `except Exception` on the way swallows it
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT / SIGTERM while the batch runs.

    Before anything is sent a signal interrupts at once (nothing to keep).
    Once sending has begun, the handler only records it and wakes the loop
    (``SimpleQueue.put`` is reentrant, safe in a handler); the loop then
    stops sending and finishes in order.
    """

    def __init__(self, wake: queue.SimpleQueue[int]) -> None:
        self.received: List[int] = []
        self.sending = False
        self._wake = wake
        self._previous: Dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if not self.sending:
            raise _Interrupted(signum)
        self._wake.put(_WAKE)

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# -- the run -----------------------------------------------------------------------


class _Run:
    """Sends the payloads, ``concurrency`` in flight, and writes each result as it may be written."""

    def __init__(
        self,
        send: Callable[[int, Any], Future[Any]],
        out: TextIO,
        *,
        concurrency: int,
        in_order: bool,
        grace: float,
        signals: _Signals,
        done: queue.SimpleQueue[int],
        progress: Optional[ProgressBar],
    ) -> None:
        self.send = send
        self.out = out
        self.concurrency = concurrency
        self.in_order = in_order
        self.grace = grace
        self.signals = signals
        self.done = done
        self.progress = progress
        # Finished results held back behind an earlier line still running, at most.
        self.backlog = max(1024, 16 * concurrency)
        self.inflight: Dict[int, Tuple[int, Future[Any]]] = {}  # sequence -> (line, future)
        self.held: Dict[int, Dict[str, Any]] = {}  # sequence -> row, waiting for its turn
        self.next_to_write = 0
        self.sent = 0
        self.written = 0
        self.failures: Counter[str] = Counter()
        self.error: Optional[BaseException] = None  # what stopped sending, other than a signal

    def run(self, items: Iterator[Tuple[int, Any]]) -> None:
        exhausted = False
        stop_at: Optional[float] = None  # the grace period's end, once a signal came
        while True:
            while not exhausted and not self.stopping and len(self.inflight) < self.concurrency:
                if len(self.held) >= self.backlog:
                    break  # an early line is slow: wait for it before sending more
                try:
                    line, payload = next(items)
                except StopIteration:
                    exhausted = True
                    break
                self._send(line, payload)
            if not self.inflight:
                break
            if self.signals.received and stop_at is None:
                stop_at = time.monotonic() + self.grace
            if len(self.signals.received) > 1:
                break  # a second signal: do not wait for the replies in flight
            wait = 0.25  # a signal that another thread took wakes the loop at the latest then
            if stop_at is not None:
                wait = min(wait, stop_at - time.monotonic())
                if wait <= 0:
                    break
            self._collect(wait)
        self._collect(0)  # replies that came in with the signal are finished results too
        self._write(everything=True)

    @property
    def stopping(self) -> bool:
        return bool(self.signals.received) or self.error is not None

    @property
    def abandoned(self) -> int:
        """Requests sent whose result was not written (in flight when it stopped)."""
        return len(self.inflight)

    def _send(self, line: int, payload: Any) -> None:
        from ..errors import LifecycleError, TransportError

        sequence = self.sent
        try:
            future = self.send(line, payload)
        except (LifecycleError, TransportError) as exc:  # the connection is gone: stop
            self.error = exc
            return
        except Exception as exc:  # this payload cannot be sent (too large, say): its result is the error
            future = Future()
            future.set_running_or_notify_cancel()
            future.set_exception(exc)
        self.sent += 1
        self.inflight[sequence] = (line, future)
        future.add_done_callback(functools.partial(self._finished, sequence))

    def _finished(self, sequence: int, future: Future[Any]) -> None:
        """A future's callback (a natsbus helper thread): hand the news to the loop, nothing more."""
        self.done.put(sequence)

    def _collect(self, wait: float) -> None:
        ready: List[int] = []
        try:
            ready.append(self.done.get(timeout=wait))
        except queue.Empty:
            pass
        while True:
            try:
                ready.append(self.done.get_nowait())
            except queue.Empty:
                break
        for sequence in ready:
            entry = self.inflight.pop(sequence, None)
            if entry is None:
                continue  # _WAKE
            row = _row(*entry)
            if not row["ok"]:
                self.failures[row["type"]] += 1
            self.held[sequence] = row
        self._write()
        if self.progress is not None:
            self.progress(self.written, None, sum(self.failures.values()))

    def _write(self, everything: bool = False) -> None:
        """Write the rows whose turn it is (all that finished, when ``everything``), then flush."""
        if not self.held:
            return
        if not self.in_order or everything:
            rows = [self.held.pop(sequence) for sequence in sorted(self.held)]
        else:
            rows = []
            while self.next_to_write in self.held:
                rows.append(self.held.pop(self.next_to_write))
                self.next_to_write += 1
        if not rows:
            return
        self.out.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self.out.flush()
        self.written += len(rows)


# -- the command -------------------------------------------------------------------


def run_batch(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: Optional[TextIO] = None) -> int:
    """Run ``execute-many`` / ``ask-many``; return the exit status."""
    done: queue.SimpleQueue[int] = queue.SimpleQueue()
    signals = _Signals(done)
    try:
        with signals:
            return _run_batch(args, out, err, stdin or sys.stdin, signals, done)
    except _Interrupted as exc:  # before anything was sent
        message = f"interrupted by {signal.Signals(exc.signum).name}; nothing was sent"
        if not getattr(args, "json", False):
            err.write("\n")  # after the ^C the terminal echoed
        fail(args, err, message, "interrupted")
        return 128 + exc.signum


def _run_batch(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stdin: TextIO,
    signals: _Signals,
    done: queue.SimpleQueue[int],
) -> int:
    from ..cqrs import CommandBus, QueryBus
    from ..errors import NatsBusError

    name = args.command
    kind = Kind.COMMAND if name == "execute-many" else Kind.QUERY
    try:
        if args.resume and not args.output:
            raise _Usage("--resume needs --output FILE: the results of the run to continue")
        if args.progress == "never" and args.progress_interval is not None:
            raise _Usage("--progress-interval would be ignored with --progress never")
        if getattr(args, "run_key", None) == "":
            raise _Usage("--run-key must not be empty")
        cls = _message_class(kind, args.type)
        data = _read_input(args.file, args.format, stdin, f"{kind.value}\0{args.type}", bool(args.resume))
        finished: Set[int] = set()
        if args.output and args.resume:
            finished = _finished_lines(args.output, functools.partial(_warn, args, err), name)
            strangers = sorted(finished - data.lines)
            if strangers:
                raise _Usage(
                    f"{args.output} has a result for line {strangers[0]}, which {args.file} has no payload on: "
                    "is it the output of another input?"
                )
        elif args.output and os.path.exists(args.output) and os.path.getsize(args.output):
            raise _Usage(f"{args.output} exists: --resume to continue the run that wrote it, or choose another file")
    except (_Usage, NatsBusError) as exc:
        fail(args, err, str(exc), "usage")
        return EXIT_USAGE
    run_key = getattr(args, "run_key", None) or data.digest[:16]
    total = data.total - len(finished)
    nouns = ("commands", "command") if kind is Kind.COMMAND else ("queries", "query")
    started = time.monotonic()
    try:
        bus = open_bus(args, name="natsbus-cli")
    except NatsBusError as exc:
        fail(args, err, str(exc), error_code(exc))
        return exit_code(exc)
    signals.sending = True  # from now on a signal stops sending and keeps what finished
    try:
        target: TextIO = open(args.output, "a", encoding="utf-8") if args.output else out
    except OSError as exc:
        bus.close()
        fail(args, err, f"cannot write {args.output}: {exc.strerror or exc}", "usage")
        return EXIT_USAGE
    with bus:
        if kind is Kind.COMMAND:
            commands = CommandBus(bus, timeout=args.timeout, service_id=args.service_id)

            def send(line: int, payload: Any) -> Future[Any]:
                return commands.submit(cls(payload), command_id=f"cmd-{run_key}-{line}")

        else:
            queries = QueryBus(bus, timeout=args.timeout, service_id=args.service_id)

            def send(line: int, payload: Any) -> Future[Any]:
                return queries.submit(cls(payload))

        progress = _progress(args, err, total, name)
        run = _Run(
            send,
            target,
            concurrency=args.concurrency,
            in_order=args.order == "input",
            grace=args.grace,
            signals=signals,
            done=done,
            progress=progress,
        )
        try:
            run.run(item for item in data.stream() if item[0] not in finished)
        finally:
            if progress is not None:
                progress.close()
            if target is not out:
                target.close()
    elapsed = time.monotonic() - started
    if args.json:
        return _json_summary(args, err, run, total, len(finished), elapsed, signals.received)
    failed = sum(run.failures.values())
    by_type = ", ".join(f"{n} {t}" for t, n in sorted(run.failures.items(), key=lambda item: (-item[1], item[0])))
    outcome = f"{run.written - failed} succeeded, {failed} failed{f' ({by_type})' if by_type else ''}"
    skipped = f"; {len(finished)} already in {args.output}, skipped" if finished else ""
    if signals.received:
        signum = signals.received[0]
        err.write(
            f"natsbus {name}: interrupted by {signal.Signals(signum).name}: {run.written} of {total} "
            f"{nouns[0]} finished, {outcome} in {elapsed:.2f}s; {run.abandoned} in flight abandoned, "
            f"{total - run.written - run.abandoned} not sent{skipped}\n"
        )
        again = "--resume" if args.output else "--resume --output FILE, FILE holding the results written so far"
        err.write(f"natsbus {name}: to finish, run the same command with {again}\n")
        return 128 + signum
    if run.error is not None:
        err.write(
            f"natsbus {name}: stopped: {run.error}; {run.written} of {total} {nouns[0]} finished, {outcome}{skipped}\n"
        )
        return exit_code(run.error)
    noun = nouns[run.written == 1]
    err.write(f"natsbus {name}: {run.written} {noun}, {outcome} in {elapsed:.2f}s{skipped}\n")
    return EXIT_FAILED if failed else EXIT_OK


def _json_summary(
    args: argparse.Namespace,
    err: TextIO,
    run: _Run,
    total: int,
    skipped: int,
    elapsed: float,
    received: List[int],
) -> int:
    """With ``--json``: the summary as one JSON object on standard error; return the exit status.

    It has ``error`` and ``code`` exactly when the exit status is not 0,
    as every ``--json`` error object (``docs/cli-json.rst`` lists the keys).
    """
    failed = sum(run.failures.values())
    summary: Dict[str, Any] = {
        "command": args.command,
        "type": args.type,
        "total": total,
        "written": run.written,
        "succeeded": run.written - failed,
        "failed": failed,
        "failures": dict(sorted(run.failures.items())),
        "skipped": skipped,
        "abandoned": run.abandoned,
        "not_sent": total - run.written - run.abandoned,
        "elapsed": round(elapsed, 3),
        "output": args.output,
        "interrupted": signal.Signals(received[0]).name if received else None,
    }
    if received:
        status = 128 + received[0]
        again = "--resume" if args.output else "--resume --output FILE, FILE holding the results written so far"
        summary.update(
            error=f"interrupted by {summary['interrupted']}; to finish, run the same command with {again}",
            code="interrupted",
        )
    elif run.error is not None:
        status = exit_code(run.error)
        summary.update(error=f"stopped: {run.error}", code=error_code(run.error))
    elif failed:
        status = EXIT_FAILED
        summary.update(error=f"{failed} of {run.written} failed", code="failed")
    else:
        status = EXIT_OK
    write_json(err, summary)
    return status


def _warn(args: argparse.Namespace, err: TextIO, message: str) -> None:
    """A warning on standard error: text, or ``{"warning": ...}`` with ``--json``."""
    if args.json:
        write_json(err, {"warning": message})
    else:
        err.write(f"natsbus {args.command}: {message}\n")


def _progress(args: argparse.Namespace, err: TextIO, total: int, name: str) -> Optional[ProgressBar]:
    mode = args.progress
    if mode == "auto":
        mode = "never" if args.json else "bar" if err.isatty() else "lines"
    if mode == "never":
        return None
    interval = args.progress_interval
    if mode == "bar":
        return ProgressBar(err, total, name, interval=BAR_INTERVAL if interval is None else interval)
    return ProgressBar(err, total, name, interval=LINES_INTERVAL if interval is None else interval, lines=True)
