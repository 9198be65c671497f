"""``natsbus execute-many`` / ``natsbus ask-many``: a JSON Lines file through ``execute_many``.

Each non-blank line of FILE (``-``: standard input) is one payload, sent
as a ``TYPE`` envelope, at most ``--concurrency`` in flight. Standard
output gets one JSON line per payload, in input order::

    {"line": 1, "ok": true, "result": {...}}
    {"line": 2, "ok": false, "type": "ConflictError", "error": "User already exists ..."}

Standard error gets a progress bar while it runs, when it is a terminal
(``--progress always`` / ``never`` overrides that), and a summary line at
the end. Exit status: 0 when every payload succeeded, 1 when any failed or
NATS could not be reached, 2 for a usage error (a line that is not JSON,
a missing file, a bad type name), before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Iterator, List, Optional, TextIO, Tuple

import attrs

from .. import codec
from ..messages import Command, Kind, Query

__all__ = ["BATCH_COMMANDS", "ProgressBar", "add_batch_commands", "run_batch"]

BATCH_COMMANDS = ("execute-many", "ask-many")


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
        text = f"send each line of a JSON Lines file as a {kind} to {prefix}.TYPE, pipelined, with progress"
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("type", help=f"the {kind} type name")
        cmd.add_argument("file", help="JSON Lines, one payload per line ('-' reads standard input)")
        cmd.add_argument("--server", help="NATS URL(s) (default: NATS_URL, else nats://127.0.0.1:4222)")
        cmd.add_argument("--timeout", type=float, default=timeout, help=f"seconds per {kind} (default {timeout:g})")
        cmd.add_argument("--concurrency", type=int, default=64, help="requests in flight at most (default 64)")
        cmd.add_argument("--service-id", default="natsbus-cli", help="the service_id put in each envelope")
        cmd.add_argument(
            "--progress",
            choices=("auto", "always", "never"),
            default="auto",
            help="a progress bar on standard error: auto shows it when that is a terminal",
        )


class ProgressBar:
    """A one-line progress bar redrawn with ``\\r``; a ``progress=`` callback for ``execute_many``.

    Args:
        stream: Where to draw (standard error).
        total: How many items, when known.
        label: Shown before the bar.
        width: Characters of the bar itself.
        interval: Seconds between redraws at least (the last one always draws).
    """

    def __init__(
        self, stream: TextIO, total: Optional[int], label: str, *, width: int = 30, interval: float = 0.1
    ) -> None:
        self.stream = stream
        self.total = total
        self.label = label
        self.width = width
        self.interval = interval
        self._started = time.monotonic()
        self._drawn_at = -1.0
        self._drawn = False

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        now = time.monotonic()
        total = self.total if self.total is not None else total
        if total is not None and done < total and now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        self.stream.write("\r" + self.render(done, total, now - self._started) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def render(self, done: int, total: Optional[int], elapsed: float) -> str:
        """The line for ``done`` of ``total`` after ``elapsed`` seconds."""
        rate = done / elapsed if elapsed > 0 else 0.0
        if not total:
            return f"{self.label} {done} done {rate:.0f}/s"
        filled = min(self.width, self.width * done // total)
        eta = f" eta {(total - done) / rate:.0f}s" if 0 < done < total and rate > 0 else ""
        bar = "#" * filled + "." * (self.width - filled)
        return f"{self.label} [{bar}] {done}/{total} {100 * done // total:3d}% {rate:.0f}/s{eta}"

    def close(self) -> None:
        """End the bar's line (only if something was drawn; once)."""
        if self._drawn:
            self._drawn = False
            self.stream.write("\n")
            self.stream.flush()


class _Usage(Exception):
    """A usage error found before anything is sent (exit status 2)."""


def _parse_lines(lines: Iterator[str], source: str) -> Iterator[Tuple[int, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:
            raise _Usage(f"line {number} of {source} is not valid JSON: {exc}") from None


def _payloads(path: str, stdin: TextIO) -> Tuple[Iterator[Tuple[int, Any]], int]:
    """``(line number, payload)`` pairs and their count; every line is checked before any is sent.

    A file is read twice (checked and counted, then streamed), so it need
    not fit in memory; standard input is read once, into memory.
    """
    if path == "-":
        items = list(_parse_lines(iter(stdin.readline, ""), "standard input"))
        return iter(items), len(items)
    try:
        with open(path, encoding="utf-8") as handle:
            count = sum(1 for _ in _parse_lines(handle, path))
    except OSError as exc:
        raise _Usage(f"cannot read {path}: {exc.strerror or exc}") from None

    def stream() -> Iterator[Tuple[int, Any]]:
        with open(path, encoding="utf-8") as handle:
            yield from _parse_lines(handle, path)

    return stream(), count


def run_batch(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: Optional[TextIO] = None) -> int:
    """Run ``execute-many`` / ``ask-many``; return the exit status."""
    from ..bus import Bus
    from ..cqrs import CommandBus, QueryBus
    from ..errors import NatsBusError

    name = args.command
    kind = Kind.COMMAND if name == "execute-many" else Kind.QUERY
    if args.concurrency < 1:
        err.write(f"natsbus {name}: --concurrency must be >= 1, got {args.concurrency}\n")
        return 2
    try:
        cls = _message_class(kind, args.type)
        pairs, total = _payloads(args.file, stdin or sys.stdin)
    except (_Usage, NatsBusError) as exc:
        err.write(f"natsbus {name}: {exc}\n")
        return 2
    lines: List[int] = []

    def messages() -> Iterator[Any]:
        for number, payload in pairs:
            lines.append(number)
            yield cls(payload)

    show = args.progress == "always" or (args.progress == "auto" and err.isatty())
    bar = ProgressBar(err, total, name) if show else None
    started = time.monotonic()
    try:
        with Bus(args.server, name="natsbus-cli") if args.server else Bus(name="natsbus-cli") as bus:
            many: Any = CommandBus(bus, timeout=args.timeout, service_id=args.service_id).execute_many
            if kind is Kind.QUERY:
                many = QueryBus(bus, timeout=args.timeout, service_id=args.service_id).ask_many

            def progress(done: int, _total: Optional[int]) -> None:
                if bar is not None:
                    bar(done, total)

            results = many(messages(), concurrency=args.concurrency, return_exceptions=True, progress=progress)
    except _Usage as exc:  # pragma: no cover - every line was checked already
        err.write(f"natsbus {name}: {exc}\n")
        return 2
    except NatsBusError as exc:
        if bar is not None:
            bar.close()
        err.write(f"natsbus {name}: {exc}\n")
        return 1
    finally:
        if bar is not None:
            bar.close()
    failed = 0
    for number, result in zip(lines, results):
        if isinstance(result, NatsBusError):
            failed += 1
            row = {"line": number, "ok": False, "type": type(result).__name__, "error": str(result)}
        else:
            row = {"line": number, "ok": True, "result": result}
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()
    elapsed = time.monotonic() - started
    noun = {Kind.COMMAND: ("commands", "command"), Kind.QUERY: ("queries", "query")}[kind][len(results) == 1]
    err.write(
        f"natsbus {name}: {len(results)} {noun}, {len(results) - failed} succeeded, {failed} failed in {elapsed:.2f}s\n"
    )
    return 1 if failed else 0
