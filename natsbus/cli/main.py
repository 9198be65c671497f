"""The ``natsbus`` command.

``natsbus demo`` runs the user-service demo; ``natsbus bench`` measures natsbus
against raw nats-py; ``natsbus worker`` runs a WorkerPool daemon
(:mod:`natsbus.cli.worker`).

Ops commands, for any NATS micro service (natsbus pools or not)::

    natsbus ls [NAME [ID]]              every service instance (of NAME)
    natsbus ping [NAME [ID]]            who answers, and how fast
    natsbus info NAME [ID]              endpoints: subject and queue group
    natsbus stats NAME [ID]             per-endpoint requests, errors, timings; totals
    natsbus execute TYPE JSON           send a command envelope, print the reply
    natsbus ask TYPE JSON               send a query envelope, print the reply
    natsbus execute-many TYPE FILE      send each line of a JSON Lines or CSV file as a command,
                                        pipelined, results written as they finish (natsbus.cli.batch)
    natsbus ask-many TYPE FILE          the same with queries

Durable commands (JetStream; see natsbus.durable)::

    natsbus durable pending             commands stored and not yet acknowledged
    natsbus durable dead                dead-lettered commands and their last error
    natsbus durable replay SEQ|ID       send a dead-lettered command again

All take ``--server URL`` (default ``NATS_URL``, else nats://127.0.0.1:4222)
and ``--connect-timeout SECONDS``; all but ``demo`` and ``worker`` take
``-j`` / ``--json`` (one JSON document on standard output, errors as JSON
objects on standard error; the keys are listed in ``docs/cli-json.rst``).
One set of exit codes for every command
(:mod:`natsbus.cli.options`): 0 success; 1 the call failed (an error reply,
a timeout, no handler, no instance answering ``ping`` / ``info`` /
``stats``; an empty ``ls`` is not a failure), a batch line failed, or a
worker was not drained; 2 a usage error, found before anything is sent; 3
no NATS server; 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, TextIO

from .._version import __version__
from .contracts import add_contract_commands, run_contract_command
from .options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_USAGE,
    add_connection_options,
    add_json_option,
    error_code,
    exit_code,
    fail,
    open_bus,
    write_json,
)

if TYPE_CHECKING:
    from ..bus import Bus
    from ..discovery import EndpointStatsSnapshot, ServiceInfo, ServicePing, ServiceStats
    from ..durable import DeadLetter, PendingCommands
    from ..messages import Kind

__all__ = ["main"]

logger = logging.getLogger("natsbus.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natsbus", description="CQRS over NATS for threaded Python.")
    parser.add_argument("--version", action="version", version=f"natsbus {__version__}")
    parser.add_argument("--log-level", default=None, help="logging level (default WARNING; INFO for worker)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the user-service demo (starts an embedded nats-server unless NATS_URL is set)",
    )
    demo.add_argument("--server", help="NATS URL to use instead of NATS_URL / the embedded server")
    _add_worker_parser(sub)
    _add_ops_commands(sub)
    _add_durable_commands(sub)
    _add_batch_commands(sub)
    add_contract_commands(sub)  # ask --all, schema, asyncapi: natsbus.cli.contracts
    from ..bench.runner import add_arguments as add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="measure natsbus against raw nats-py (starts an embedded nats-server unless NATS_URL is set)",
    )
    add_bench_arguments(bench)
    return parser


def _add_worker_parser(sub: Any) -> None:
    from .worker import add_pool_options

    worker = sub.add_parser(
        "worker",
        help="run a WorkerPool from an import path until SIGTERM/SIGINT",
        description=(
            "Run a WorkerPool daemon. TARGET is MODULE:ATTR naming a WorkerPool, or a factory "
            "called with a connected Bus (or with no arguments) that returns one. The first "
            "SIGTERM/SIGINT drains gracefully; a second one stops at once. Exit status: 0 drained, "
            "1 not drained, 2 usage error, 3 no NATS server, 128 + N stopped at once by signal N. "
            "--processes N runs N such processes under a supervisor that restarts them, drains them "
            "all on SIGTERM/SIGINT and replaces them one at a time on SIGHUP (docs/processes.rst)."
        ),
    )
    worker.add_argument("target", metavar="MODULE:ATTR")
    add_pool_options(worker)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "worker" else "WARNING")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return _run(parser, args)
    except KeyboardInterrupt:  # Ctrl-C where a command does not handle it itself: no traceback
        sys.stderr.write(f"\nnatsbus {args.command}: interrupted\n" if args.command else "\nnatsbus: interrupted\n")
        return EXIT_SIGINT


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ..demo import run_demo

        return run_demo(args.server)
    if args.command == "worker":
        from .worker import run_worker

        return run_worker(args, sys.stderr)
    if (status := run_contract_command(args, sys.stdout, sys.stderr)) is not None:
        return status
    if args.command in _OPS_COMMANDS:
        return _run_ops(args, sys.stdout, sys.stderr)
    if args.command == "durable":
        return _run_durable(args, sys.stdout, sys.stderr)
    if args.command in _BATCH_COMMANDS:
        return _run_batch(args, sys.stdout, sys.stderr)
    if args.command == "bench":
        from ..bench.runner import run_bench

        return run_bench(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# -- ops commands: ls, ping, info, stats, execute, ask ---------------------------

_OPS_COMMANDS = ("ls", "ping", "info", "stats", "execute", "ask")


def _add_ops_commands(sub: Any) -> None:
    from ..discovery import DEFAULT_TIMEOUT

    def add(name: str, help: str, timeout: float) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        add_connection_options(cmd)
        add_json_option(cmd)
        cmd.add_argument(
            "--timeout", type=float, default=timeout, help=f"seconds to wait for replies (default {timeout:g})"
        )
        return cmd

    for name, help in (
        ("ls", "list the NATS micro service instances (of one service, given its name)"),
        ("ping", "ping service instances and show the round-trip times"),
        ("info", "show the endpoints of a service's instances"),
        ("stats", "show per-endpoint requests, errors and timings of a service's instances, and totals"),
    ):
        cmd = add(name, help, DEFAULT_TIMEOUT)
        cmd.add_argument("name", nargs=None if name in ("info", "stats") else "?", help="the service name")
        cmd.add_argument("id", nargs="?", help="one instance's id")
    for name, kind, prefix, example, timeout in (
        ("execute", "command", "commands", "CreateUserCommand", 5.0),
        ("ask", "query", "queries", "GetUserQuery", 3.0),
    ):
        cmd = add(name, f"send a {kind} envelope to {prefix}.TYPE and print the reply", timeout)
        cmd.add_argument("type", help=f"the {kind} type name, e.g. {example}")
        cmd.add_argument("payload", help="the payload as JSON ('-' reads standard input)")
        cmd.add_argument("--service-id", default="natsbus-cli", help="the service_id put in the envelope")


def _run_ops(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ..errors import MessageTypeError, NatsBusError
    from ..messages import Kind, subject_for

    payload: Any = None
    if args.command in ("execute", "ask"):
        try:  # a usage error, before connecting
            subject_for(Kind.COMMAND if args.command == "execute" else Kind.QUERY, args.type)
        except MessageTypeError as exc:
            fail(args, err, str(exc), "usage")
            return EXIT_USAGE
        text = sys.stdin.read() if args.payload == "-" else args.payload
        try:
            payload = json.loads(text)
        except ValueError as exc:
            fail(args, err, f"the payload is not valid JSON: {exc}", "usage")
            return EXIT_USAGE
    try:
        with open_bus(args, name="natsbus-cli") as bus:
            if args.command in ("execute", "ask"):
                return _send(bus, args, payload, out, err)
            return _show(bus, args, out, err)
    except NatsBusError as exc:
        fail(args, err, str(exc), error_code(exc))
        return exit_code(exc)


# -- batch commands: execute-many, ask-many (natsbus.cli.batch) -------------------

_BATCH_COMMANDS = ("execute-many", "ask-many")


def _add_batch_commands(sub: Any) -> None:
    from .batch import add_batch_commands

    add_batch_commands(sub)


def _run_batch(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from .batch import run_batch

    return run_batch(args, out, err)


def _show(bus: Bus, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    timeout = args.timeout
    name, id = args.name, args.id
    what = f"instance {id} of {name}" if id else (f"instance of {name}" if name else "service")
    if args.command == "ls":
        services = bus.discover(name, id, timeout=timeout)
        if args.json:
            write_json(out, [_info_json(s) for s in services])
        elif not services:
            err.write("no services answered\n" if not name else f"no {what} answered\n")
        else:
            rows = [[s.name, s.version, s.id, str(len(s.endpoints)), s.description] for s in services]
            out.write(_table(["NAME", "VERSION", "ID", "ENDPOINTS", "DESCRIPTION"], rows))
        return EXIT_OK  # nothing running is an answer too
    if args.command == "ping":
        pings = bus.ping(name, id, timeout=timeout)
        found = len(pings)
        if args.json:
            write_json(out, [_ping_json(p) for p in pings])
        elif found:
            rows = [[p.name, p.id, p.version, _duration(_rtt_ns(p.rtt))] for p in pings]
            out.write(_table(["NAME", "ID", "VERSION", "RTT"], rows))
    elif args.command == "info":
        infos = bus.discover(name, id, timeout=timeout)
        found = len(infos)
        if args.json:
            write_json(out, [_info_json(i) for i in infos])
        for info in infos if not args.json else ():
            out.write(f"{info.name} {info.version}, instance {info.id}\n")
            out.write(f"  description: {info.description or '-'}\n")
            _write_metadata(out, info.metadata)
            rows = [[e.name, e.subject, e.queue_group or "-"] for e in info.endpoints]
            out.write(_table(["ENDPOINT", "SUBJECT", "QUEUE GROUP"], rows, indent="  ") + "\n")
    else:
        all_stats = bus.stats(name, id, timeout=timeout)
        found = len(all_stats)
        totals = _totals([e for stats in all_stats for e in stats.endpoints])
        if args.json:
            write_json(out, {"instances": [_stats_json(s) for s in all_stats], "totals": totals})
        now = dt.datetime.now(dt.UTC)
        for stats in all_stats if not args.json else ():
            started = stats.started.strftime("%Y-%m-%dT%H:%M:%SZ")
            up = _uptime((now - stats.started).total_seconds())
            out.write(f"{stats.name} {stats.version}, instance {stats.id}, started {started} (up {up})\n")
            _write_metadata(out, stats.metadata)
            rows = [
                [
                    e.name,
                    str(e.num_requests),
                    str(e.num_errors),
                    _duration(e.average_processing_time),
                    _duration(e.processing_time),
                    e.last_error or "-",
                ]
                for e in stats.endpoints
            ]
            mine = _totals(stats.endpoints)
            rows.append(
                [
                    "(total)",
                    str(mine["num_requests"]),
                    str(mine["num_errors"]),
                    _duration(mine["average_processing_time"]),
                    _duration(mine["processing_time"]),
                    "",
                ]
            )
            headers = ["ENDPOINT", "REQUESTS", "ERRORS", "AVERAGE", "TOTAL", "LAST ERROR"]
            out.write(_table(headers, rows, indent="  ") + "\n")
        if found and not args.json:
            out.write(
                f"{found} instance{'s' if found != 1 else ''} answered: {totals['num_requests']} "
                f"request{'s' if totals['num_requests'] != 1 else ''}, {totals['num_errors']} "
                f"error{'s' if totals['num_errors'] != 1 else ''}, "
                f"{_duration(totals['processing_time'])} processing in all\n"
            )
            return EXIT_OK
    if not found:
        fail(args, err, f"no {what} answered within {timeout:g}s", "no_answer", prefix=False)
        return EXIT_FAILED
    if not args.json:
        out.write(f"{found} instance{'s' if found != 1 else ''} answered\n")
    return EXIT_OK


def _rtt_ns(rtt: Optional[float]) -> int:
    return round((rtt or 0.0) * 1e9)


def _ping_json(ping: ServicePing) -> Dict[str, Any]:
    """``natsbus ping --json``: one object per instance."""
    return {
        "name": ping.name,
        "id": ping.id,
        "version": ping.version,
        "metadata": dict(ping.metadata),
        "rtt_ns": _rtt_ns(ping.rtt),
    }


def _info_json(info: ServiceInfo) -> Dict[str, Any]:
    """``natsbus ls --json`` / ``info --json``: one object per instance."""
    return {
        "name": info.name,
        "id": info.id,
        "version": info.version,
        "description": info.description,
        "metadata": dict(info.metadata),
        "endpoints": [
            {"name": e.name, "subject": e.subject, "queue_group": e.queue_group, "metadata": dict(e.metadata)}
            for e in info.endpoints
        ],
    }


def _stats_json(stats: ServiceStats) -> Dict[str, Any]:
    """One instance in ``natsbus stats --json``."""
    return {
        "name": stats.name,
        "id": stats.id,
        "version": stats.version,
        "started": stats.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "metadata": dict(stats.metadata),
        "endpoints": [
            {
                "name": e.name,
                "subject": e.subject,
                "queue_group": e.queue_group,
                "num_requests": e.num_requests,
                "num_errors": e.num_errors,
                "last_error": e.last_error,
                "processing_time": e.processing_time,
                "average_processing_time": e.average_processing_time,
            }
            for e in stats.endpoints
        ],
        "totals": _totals(stats.endpoints),
    }


def _totals(endpoints: Sequence[EndpointStatsSnapshot]) -> Dict[str, int]:
    """Requests, errors and processing time (ns) summed over ``endpoints``; the average per request."""
    requests = sum(e.num_requests for e in endpoints)
    time = sum(e.processing_time for e in endpoints)
    return {
        "num_requests": requests,
        "num_errors": sum(e.num_errors for e in endpoints),
        "processing_time": time,
        "average_processing_time": time // requests if requests else 0,
    }


def _write_metadata(out: TextIO, metadata: Any) -> None:
    if metadata:
        out.write(f"  metadata: {', '.join(f'{k}={v}' for k, v in sorted(metadata.items()))}\n")


def _send(bus: Bus, args: argparse.Namespace, payload: Any, out: TextIO, err: TextIO) -> int:
    from ..envelope import ERROR_CODE_HEADER, ERROR_HEADER, create_request_envelope, new_id
    from ..errors import NoHandlerError, RequestTimeoutError
    from ..messages import Kind

    kind = Kind.COMMAND if args.command == "execute" else Kind.QUERY
    envelope = create_request_envelope(args.type, new_id(kind), args.service_id, payload, kind=kind)
    subject = envelope.subject  # validates the type name
    try:
        reply = bus.request(subject, envelope.to_bytes(), timeout=args.timeout)
    except RequestTimeoutError:
        fail(args, err, f"{kind.label} request timeout after {round(args.timeout * 1000)}ms", "timeout")
        return EXIT_FAILED
    except NoHandlerError as exc:
        other = _served_as(bus, args.type, kind)
        if other is None:
            fail(args, err, str(exc), "no_handler")
        else:
            verb = "execute" if other is Kind.COMMAND else "ask"
            hint = f"{args.type} is served as a {other.value}: use natsbus {verb}"
            fail(args, err, f"{exc} ({hint})", "no_handler", served_as=other.value)
        return EXIT_FAILED
    try:
        body: Any = json.loads(reply.data)
    except ValueError:
        body = None
        if reply.data:
            text = reply.data.decode("utf-8", "replace")
            out.write((json.dumps(text, ensure_ascii=False) if args.json else text) + "\n")
    else:
        out.write(json.dumps(body, indent=None if args.json else 2, ensure_ascii=False) + "\n")
    headers = reply.headers or {}
    if headers.get(ERROR_HEADER) or headers.get(ERROR_CODE_HEADER):
        code = headers.get(ERROR_CODE_HEADER, "?")
        description = headers.get(ERROR_HEADER, "")
        if args.json:
            fail(args, err, description, "error_reply", reply_code=code)
        else:
            fail(args, err, f"error {code}: {description}", "error_reply")
        return EXIT_FAILED
    if isinstance(body, dict) and "success" in body and body["success"] is not True:
        fail(args, err, str(body.get("error") or "the service answered success: false"), "unsuccessful_reply")
        return EXIT_FAILED
    return EXIT_OK


def _served_as(bus: Bus, type_name: str, kind: Kind) -> Optional[Kind]:
    """The other kind, when a running service lists ``type_name`` under it (a short discovery call)."""
    from ..errors import NatsBusError
    from ..messages import Kind

    other = Kind.QUERY if kind is Kind.COMMAND else Kind.COMMAND
    try:
        return other if bus.has_handler(type_name, kind=other, timeout=1.0) else None
    except NatsBusError:  # only a hint: the no-handler error stands without it
        return None


# -- durable commands: pending, dead, replay -----------------------------


def _add_durable_commands(sub: Any) -> None:
    durable = sub.add_parser(
        "durable",
        help="durable commands on JetStream: pending, dead letters, replay",
        description="Inspect durable commands (CommandBus.send) and replay dead-lettered ones. "
        "The names default to DurableConfig's; give the same ones the workers use.",
    )
    actions = durable.add_subparsers(dest="durable_command", metavar="ACTION")
    pending = actions.add_parser("pending", help="commands stored and not yet acknowledged, per consumer")
    pending.add_argument("--limit", type=int, default=20, help="commands listed at most (default 20)")
    dead = actions.add_parser("dead", help="dead-lettered commands and their last error")
    dead.add_argument("--limit", type=int, default=100, help="dead letters listed at most (default 100)")
    replay = actions.add_parser("replay", help="send a dead-lettered command again (its stored result is cleared)")
    replay.add_argument("which", metavar="SEQ|COMMAND_ID", help="the dead letter's sequence number or command id")
    for action in (pending, dead, replay):
        add_connection_options(action)
        add_json_option(action)
        action.add_argument("--stream", help="the commands stream (default NATSBUS_COMMANDS)")
        action.add_argument("--subject-prefix", help="the commands' subject prefix (default durable.commands)")
        action.add_argument("--dead-letter-stream", help="the dead-letter stream (default NATSBUS_DEAD_LETTERS)")
        action.add_argument("--dead-letter-prefix", help="the dead letters' subject prefix (default durable.dead)")
        action.add_argument("--results-bucket", help="the results bucket (default natsbus_results)")
        action.add_argument("--retention", help="the commands stream's retention (default workqueue)")


def _run_durable(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ..durable import DurableConfig, dead_letters, pending, replay
    from ..errors import ConfigError, NatsBusError

    action = getattr(args, "durable_command", None)
    if action is None:
        err.write("natsbus durable: say pending, dead or replay\n")
        return EXIT_USAGE
    command = f"natsbus durable {action}"
    names = ("stream", "subject_prefix", "dead_letter_stream", "dead_letter_prefix", "results_bucket", "retention")
    try:
        config = DurableConfig(**{name: getattr(args, name) for name in names if getattr(args, name)})
    except ConfigError as exc:
        fail(args, err, str(exc), "usage", command=command)
        return EXIT_USAGE
    try:
        with open_bus(args, name="natsbus-cli") as bus:
            if action == "pending":
                report = pending(bus, config, limit=args.limit)
                if args.json:
                    write_json(out, _pending_json(report))
                    return EXIT_OK
                if not report.exists:
                    err.write(f"no stream {config.stream}: nothing was sent durably yet\n")
                    return EXIT_OK
                out.write(f"stream {report.stream}: {report.messages} command(s) stored\n")
                if report.consumers:
                    rows = [
                        [c.name, str(c.num_pending), str(c.num_ack_pending), str(c.num_redelivered), str(c.num_waiting)]
                        for c in report.consumers
                    ]
                    headers = ["CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED", "WAITING"]
                    out.write(_table(headers, rows) + "\n")
                else:
                    out.write("no consumer yet: no durable worker has started on this stream\n\n")
                if report.commands:
                    rows = [[str(c.seq), c.command_type, c.command_id, c.stored_at] for c in report.commands]
                    out.write(_table(["SEQ", "TYPE", "COMMAND ID", "STORED"], rows))
                    if len(report.commands) < report.messages:
                        out.write(f"(the first {len(report.commands)} of {report.messages}; see --limit)\n")
                return EXIT_OK
            if action == "dead":
                letters = dead_letters(bus, config, limit=args.limit)
                if args.json:
                    write_json(out, [_dead_letter_json(d) for d in letters])
                    return EXIT_OK
                if not letters:
                    err.write(f"no dead letters in {config.dead_letter_stream}\n")
                    return EXIT_OK
                rows = [
                    [
                        str(d.seq),
                        d.command_type,
                        d.command_id,
                        str(d.deliveries),
                        d.failed_at,
                        f"{d.error_code} {d.error}",
                    ]
                    for d in letters
                ]
                out.write(_table(["SEQ", "TYPE", "COMMAND ID", "DELIVERIES", "FAILED AT", "ERROR"], rows))
                out.write(f"{len(letters)} dead letter{'s' if len(letters) != 1 else ''}\n")
                return EXIT_OK
            letter = replay(bus, args.which, config)
            subject = config.command_subject(letter.command_type)
            if args.json:
                write_json(
                    out,
                    {
                        "seq": letter.seq,
                        "command_type": letter.command_type,
                        "command_id": letter.command_id,
                        "subject": subject,
                    },
                )
                return EXIT_OK
            what = f"{letter.command_type} {letter.command_id}"
            out.write(f"replayed dead letter {letter.seq}: {what} sent again to {subject}\n")
            return EXIT_OK
    except NatsBusError as exc:
        fail(args, err, str(exc), error_code(exc), command=command)
        return exit_code(exc)


def _pending_json(report: PendingCommands) -> Dict[str, Any]:
    """``natsbus durable pending --json``."""
    return {
        "stream": report.stream,
        "exists": report.exists,
        "messages": report.messages,
        "consumers": [
            {
                "name": c.name,
                "num_pending": c.num_pending,
                "num_ack_pending": c.num_ack_pending,
                "num_redelivered": c.num_redelivered,
                "num_waiting": c.num_waiting,
            }
            for c in report.consumers
        ],
        "commands": [
            {"seq": c.seq, "command_type": c.command_type, "command_id": c.command_id, "stored_at": c.stored_at}
            for c in report.commands
        ],
    }


def _dead_letter_json(letter: DeadLetter) -> Dict[str, Any]:
    """One dead letter in ``natsbus durable dead --json``."""
    return {
        "seq": letter.seq,
        "command_type": letter.command_type,
        "command_id": letter.command_id,
        "service": letter.service,
        "deliveries": letter.deliveries,
        "failed_at": letter.failed_at,
        "error_code": letter.error_code,
        "error": letter.error,
        "original_subject": letter.original_subject,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, *rows]:
        lines.append(indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines) + "\n"


def _duration(ns: int) -> str:
    """Nanoseconds, readable: ``850ns``, ``12.3us``, ``4.56ms``, ``1.20s``, then as :func:`_uptime`."""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    if ns < 60_000_000_000:
        return f"{ns / 1_000_000_000:.2f}s"
    return _uptime(ns / 1_000_000_000)


def _uptime(seconds: float) -> str:
    """Whole seconds, readable: ``42s``, ``3m4s``, ``5h6m``, ``2d3h``."""
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
