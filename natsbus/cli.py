"""The ``natsbus`` command.

Subcommands: ``demo`` (the user-service demo) and ``worker`` (run a
WorkerPool daemon). Exit codes of ``natsbus worker``:

== ============================================================
0  stopped on a signal after answering every admitted request
1  stopped, but some requests were still running at the drain
   timeout, or the pool failed while running
2  usage error: bad arguments, or the import path does not name a
   WorkerPool or a factory returning one
3  could not connect to NATS
N  128 + the signal number, when a second signal stopped it at once
== ============================================================
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from typing import Any, Dict, List, Optional

from . import __version__

__all__ = ["main"]

logger = logging.getLogger("natsbus.cli")

EXIT_OK = 0
EXIT_NOT_DRAINED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3


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
    return parser


def _add_worker_parser(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a WorkerPool from an import path until SIGTERM/SIGINT",
        description=(
            "Run a WorkerPool daemon. TARGET is MODULE:ATTR naming a WorkerPool, or a factory "
            "called with a connected Bus (or with no arguments) that returns one. The first "
            "SIGTERM/SIGINT drains gracefully; a second one stops at once."
        ),
    )
    worker.add_argument("target", metavar="MODULE:ATTR")
    worker.add_argument("--server", help="NATS URL(s), comma-separated (default: NATS_URL)")
    worker.add_argument("--max-workers", type=int, help="handler threads")
    worker.add_argument("--max-pending", type=int, help="admitted requests that may wait for a thread")
    worker.add_argument("--queue-group", help="queue group (default: the service id)")
    worker.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to drain on stop (default 30)")
    worker.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach NATS at start (default 5)")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "worker" else "WARNING")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.server)
    if args.command == "worker":
        return _run_worker(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _load(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{target!r} is not MODULE:ATTR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's own modules import
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _run_worker(args: argparse.Namespace) -> int:
    from .bus import Bus
    from .config import NatsConfig
    from .errors import ConnectError, NatsBusError
    from .worker import WorkerPool

    try:
        target = _load(args.target)
    except (ValueError, ImportError, AttributeError) as exc:
        print(f"natsbus worker: cannot load {args.target}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(target, WorkerPool) and target.bus is not None:
        bus = target.bus
        owned = None
    else:
        overrides: Dict[str, Any] = {"connect_timeout": args.connect_timeout}
        if args.server:
            overrides["servers"] = args.server
        try:
            bus = owned = Bus(NatsConfig.from_env(**overrides))
        except ConnectError as exc:
            print(f"natsbus worker: {exc}", file=sys.stderr)
            return EXIT_CONNECT
        except NatsBusError as exc:
            print(f"natsbus worker: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        try:
            pool = _as_pool(target, bus)
        except Exception as exc:
            logger.debug("building the pool failed", exc_info=True)
            print(f"natsbus worker: cannot build a WorkerPool from {args.target}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if pool is None:
            print(
                f"natsbus worker: {args.target} is neither a WorkerPool nor a factory returning one",
                file=sys.stderr,
            )
            return EXIT_USAGE
        for option, attribute in (
            ("max_workers", "max_workers"),
            ("max_pending", "max_pending"),
            ("queue_group", "queue_group"),
        ):
            value = getattr(args, option)
            if value is not None:
                setattr(pool, attribute, value)
        try:
            pool.start()
        except NatsBusError as exc:
            print(f"natsbus worker: cannot start {args.target}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            drained = pool.run(drain_timeout=args.drain_timeout)
        except NatsBusError as exc:
            logger.error("worker pool %s failed: %s", pool.service_id, exc)
            return EXIT_NOT_DRAINED
        return EXIT_OK if drained else EXIT_NOT_DRAINED
    finally:
        if owned is not None:
            owned.close()


def _as_pool(target: Any, bus: Any) -> Any:
    from .worker import WorkerPool

    if isinstance(target, WorkerPool):
        return target if target.bus is not None else target.bind(bus)
    if not callable(target):
        return None
    try:
        wants_bus = len(inspect.signature(target).parameters) >= 1
    except (TypeError, ValueError):
        wants_bus = False
    made = target(bus) if wants_bus else target()
    if not isinstance(made, WorkerPool):
        return None
    return made if made.bus is not None else made.bind(bus)
