"""Import users from a CSV file through the batch API, with progress.

Each row (columns ``name`` and ``email``) becomes a ``CreateUserCommand``;
:meth:`natsbus.CommandBus.execute_many` pipelines them from this one thread
with at most ``--concurrency`` requests in flight, returns the results in
row order, and (with ``return_exceptions=True``) hands back a row's error in
its place instead of stopping at the first failure::

    python examples/user_service.py &                  # the service
    NATS_URL=nats://127.0.0.1:4222 python examples/batch_import.py users.csv

Progress goes to stderr; one line per failed row and a summary go to
stdout. Exit status: 0 every row imported, 1 some rows failed, 2 the file
cannot be read.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from typing import Any, List, Optional, Tuple

from natsbus import Bus, CommandBus, NatsBusError
from natsbus.demo import CreateUserCommand


def read_rows(path: str) -> Tuple[List[CreateUserCommand], List[Tuple[int, str]]]:
    """The commands of the valid rows, and ``(line, problem)`` for the others."""
    commands: List[CreateUserCommand] = []
    problems: List[Tuple[int, str]] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"name", "email"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            name, email = (row.get("name") or "").strip(), (row.get("email") or "").strip()
            if not name or "@" not in email:
                problems.append((reader.line_num, f"needs a name and an email, got {name!r}, {email!r}"))
                continue
            commands.append(CreateUserCommand(name=name, email=email))
    return commands, problems


class Progress:
    """Prints ``done/total`` to stderr: in place on a terminal, every 10% otherwise."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = -1
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if self.tty:
            rate = done / max(time.monotonic() - self.started, 1e-9)
            sys.stderr.write(f"\rimported {done}/{total} ({percent}%, {rate:.0f}/s)")
            if done == total:
                sys.stderr.write("\n")
        elif percent // 10 != self.shown // 10 or done == total:
            sys.stderr.write(f"progress: {done}/{total} ({percent}%)\n")
        self.shown = percent
        sys.stderr.flush()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="a CSV file with the columns name and email")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default 64)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per command (default 10)")
    args = parser.parse_args(argv)
    try:
        commands, problems = read_rows(args.csv)
    except (OSError, ValueError, csv.Error) as exc:
        print(f"cannot read {args.csv}: {exc}", file=sys.stderr)
        return 2
    for line, problem in problems:
        print(f"line {line}: skipped: {problem}")

    with Bus() as bus:  # NATS_URL
        users = CommandBus(bus, service_id="batch-import")
        if not hasattr(users, "execute_many"):
            print("CommandBus.execute_many is missing from this natsbus; it needs the batch API", file=sys.stderr)
            return 2
        results: List[Any] = users.execute_many(
            commands,
            concurrency=args.concurrency,
            return_exceptions=True,
            timeout=args.timeout,
            progress=Progress(),
        )

    failed = 0
    for command, result in zip(commands, results):
        if isinstance(result, NatsBusError):
            failed += 1
            print(f"{command.email}: {type(result).__name__}: {result}")
    imported = len(commands) - failed
    print(f"imported {imported} of {len(commands) + len(problems)} rows; {failed + len(problems)} failed")
    return 0 if failed + len(problems) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
