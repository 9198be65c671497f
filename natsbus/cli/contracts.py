"""``natsbus ask --all``, ``natsbus schema`` and ``natsbus asyncapi``: scatter-gather and contracts from a shell.

::

    natsbus ask --all TYPE JSON [--max-replies N] [--stall SECONDS]
                                        ask every instance serving TYPE; one JSON line per instance
    natsbus schema SERVICE [TYPE]       the JSON Schemas a running service publishes in its INFO
    natsbus asyncapi MODULE:ATTR [-o FILE]
                                        an AsyncAPI 3.0 document of a pool's operations (no NATS needed)

``ask --all`` prints, per instance that answered, in arrival order::

    {"instance": "Bq1dZp...", "service": "user-service", "ok": true, "result": {...}}
    {"instance": "x7Hk2b...", "service": "user-service", "ok": false, "type": "NotFoundError", "error": "..."}

and a summary on standard error. With ``--json`` the rows are one JSON
list instead, and errors are JSON objects on standard error (as for every
ops command). Exit status: 0 when some instance
answered and none with an error; 1 when none answered, one answered with
an error, or NATS could not be reached; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import sys
from typing import Any, Dict, Optional, TextIO

from .options import add_connection_options, add_json_option, error_code, exit_code, fail, open_bus, write_json
from .worker import Refused, load

__all__ = ["CONTRACT_COMMANDS", "add_contract_commands", "run_contract_command"]

CONTRACT_COMMANDS = ("schema", "asyncapi")


def add_contract_commands(sub: Any) -> None:
    """Add ``--all`` (and its options) to ``natsbus ask``, and the ``schema`` and ``asyncapi`` commands."""
    from ..discovery import DEFAULT_TIMEOUT

    ask = sub.choices.get("ask")
    if ask is not None:
        ask.add_argument(
            "--all",
            action="store_true",
            help="ask every instance serving TYPE (scatter.queries.TYPE); print one JSON line per instance",
        )
        ask.add_argument("--max-replies", type=int, help="with --all: stop once this many instances answered")
        ask.add_argument("--stall", type=float, help="with --all: stop once no reply came for this many seconds")
    text = "print the JSON Schemas a running service publishes for its commands, queries and results"
    schema = sub.add_parser("schema", help=text, description=text)
    schema.add_argument("service", help="the service name")
    schema.add_argument("type", nargs="?", help="only this message type")
    add_connection_options(schema)
    add_json_option(schema)  # the document on one line, errors as JSON objects
    schema.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for replies (default {DEFAULT_TIMEOUT:g})",
    )
    text = "write an AsyncAPI 3.0 document of a WorkerPool's operations (request/reply, envelopes included)"
    asyncapi = sub.add_parser(
        "asyncapi",
        help=text,
        description=text + ". MODULE:ATTR names a WorkerPool, or a factory returning one (called with "
        "no arguments, or with None for its Bus: nothing connects to NATS).",
    )
    asyncapi.add_argument("target", metavar="MODULE:ATTR")
    asyncapi.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    add_json_option(asyncapi)  # the document on one line, errors as JSON objects


def run_contract_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> Optional[int]:
    """Run ``ask --all``, ``schema`` or ``asyncapi``; return the exit status, or ``None`` for other commands."""
    if args.command == "ask" and getattr(args, "all", False):
        return _ask_all(args, out, err)
    if args.command == "schema":
        return _schema(args, out, err)
    if args.command == "asyncapi":
        return _asyncapi(args, out, err)
    return None


def _bus(args: argparse.Namespace) -> Any:
    return open_bus(args, name="natsbus-cli")


def _ask_all(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ..cqrs import QueryBus
    from ..errors import NatsBusError
    from ..messages import Kind
    from .batch import _message_class

    as_json = getattr(args, "json", False)
    report = functools.partial(fail, args, err, command="natsbus ask --all")

    text = sys.stdin.read() if args.payload == "-" else args.payload
    try:
        payload = json.loads(text)
    except ValueError as exc:
        report(f"the payload is not valid JSON: {exc}", "usage")
        return 2
    try:
        query = _message_class(Kind.QUERY, args.type)(payload)
        with _bus(args) as bus:
            queries = QueryBus(bus, timeout=args.timeout, service_id=args.service_id)
            results = queries.ask_all(query, max_replies=args.max_replies, stall=args.stall)
    except NatsBusError as exc:
        report(str(exc), error_code(exc))
        return exit_code(exc)
    failed = 0
    rows = []
    for result in results:
        row: Dict[str, Any] = {"instance": result.instance_id, "service": result.service, "ok": result.ok}
        if result.error is not None:
            failed += 1
            row.update(type=type(result.error).__name__, error=str(result.error))
        else:
            row["result"] = result.result
        rows.append(row)
        if not as_json:
            write_json(out, row)
    if as_json:  # one document: the list of the rows
        write_json(out, rows)
    out.flush()
    if not results:
        report(f"no instance serving {args.type} answered within {args.timeout:g}s", "no_answer")
        return 1
    noun = "instance" if len(results) == 1 else "instances"
    if as_json:
        if failed:
            report(f"{len(results)} {noun} answered, {failed} with an error", "error_reply")
    else:
        err.write(f"natsbus ask --all: {len(results)} {noun} answered, {failed} with an error\n")
    return 1 if failed else 0


def _schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ..errors import NatsBusError

    try:
        with _bus(args) as bus:
            services = bus.discover(args.service, timeout=args.timeout)
    except NatsBusError as exc:
        fail(args, err, str(exc), error_code(exc))
        return exit_code(exc)
    if not services:
        fail(args, err, f"no instance of {args.service} answered within {args.timeout:g}s", "no_answer")
        return 1
    # The first instance that publishes schemas (instances of one deploy publish the same).
    service = next((s for s in services if any(e.request_schema for e in s.endpoints)), services[0])
    endpoints = {
        e.name: {"subject": e.subject, "request_schema": e.request_schema, "response_schema": e.response_schema}
        for e in service.endpoints
    }
    if args.type is not None:
        if args.type not in endpoints:
            served = ", ".join(endpoints) or "nothing"
            fail(args, err, f"{service.name} serves no {args.type} (it serves {served})", "unknown_type")
            return 1
        document: Dict[str, Any] = endpoints[args.type]
    else:
        document = {"service": service.name, "version": service.version, "instance": service.id}
        document["endpoints"] = endpoints
    _write_document(args, out, document)
    return 0


def _write_document(args: argparse.Namespace, out: TextIO, document: Any) -> None:
    """``document`` indented for a reader, or on one line with ``--json``."""
    if args.json:
        write_json(out, document)
    else:
        out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _asyncapi(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from ..schema import asyncapi_document
    from ..worker import WorkerPool

    try:
        pool = _pool(load(args.target))
    except Refused as exc:  # the target does not import (said as file:line), or has no such attribute
        reason = str(exc).removeprefix(f"cannot load {args.target}: ")
        fail(args, err, f"cannot load a WorkerPool from {args.target}: {reason}", "usage")
        return exc.code
    except Exception as exc:  # the factory raised
        fail(args, err, f"cannot load a WorkerPool from {args.target}: {exc}", "usage")
        return 2
    if not isinstance(pool, WorkerPool):
        fail(args, err, f"{args.target} is neither a WorkerPool nor a factory returning one", "usage")
        return 2
    document = asyncapi_document(
        pool.service_id,
        pool.micro.version,
        [(route.kind, route.message_class, route.call) for route in pool.dispatcher.routes],
        description=pool.micro.description,
        queue_group=pool.queue_group,
    )
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                _write_document(args, handle, document)
        except OSError as exc:
            fail(args, err, f"cannot write {args.output}: {exc.strerror or exc}", "failed")
            return 1
    else:
        _write_document(args, out, document)
    return 0


def _pool(target: Any) -> Any:
    """``target`` if it is a pool; else what the factory ``target`` returns (given ``None`` for a Bus)."""
    from ..worker import WorkerPool

    if isinstance(target, WorkerPool) or not callable(target):
        return target
    try:
        wants_bus = len(inspect.signature(target).parameters) >= 1
    except (TypeError, ValueError):
        wants_bus = False
    return target(None) if wants_bus else target()
