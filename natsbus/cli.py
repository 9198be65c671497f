"""The ``natsbus`` command: ``natsbus demo``, ``natsbus bench`` (and more to come)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import __version__

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="natsbus", description="CQRS over NATS for threaded Python.")
    parser.add_argument("--version", action="version", version=f"natsbus {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the user-service demo (starts an embedded nats-server unless NATS_URL is set)",
    )
    demo.add_argument("--server", help="NATS URL to use instead of NATS_URL / the embedded server")
    from ._bench import add_arguments as add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="measure natsbus against raw nats-py (starts an embedded nats-server unless NATS_URL is set)",
    )
    add_bench_arguments(bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.server)
    if args.command == "bench":
        from ._bench import run_bench

        return run_bench(args)
    parser.print_help(sys.stderr)
    return 2
