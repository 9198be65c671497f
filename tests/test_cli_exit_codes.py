"""The documented exit-code table (docs/exit-codes.rst) is what the commands do: each code, from real runs.

Each code in the table has runs of ``python -m natsbus ...`` (and of
``manage.py natsbus_worker``) that must exit with it, and every code these
runs produce is in the table.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from batch_support import Steps, serving
from daemon import WorkerProcess
from daemon_handlers import Hold

from natsbus import Bus, CommandBus, NatsServer, WorkerPool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DJANGO_EXAMPLE = ROOT / "examples" / "django_app"


def documented_exit_codes() -> Dict[int, str]:
    """The table of docs/exit-codes.rst: code -> meaning."""
    text = (ROOT / "docs" / "exit-codes.rst").read_text()
    section = text.split("Exit codes\n==========\n", 1)[1]
    borders = [i for i, line in enumerate(section.splitlines()) if re.fullmatch(r"=+  =+", line)]
    rows = section.splitlines()[borders[1] + 1 : borders[2]]
    table: Dict[int, str] = {}
    code = None
    for row in rows:
        first, rest = row[:6].strip(), row[6:].strip()
        if first:
            code = int(first)
            table[code] = rest
        else:
            assert code is not None
            table[code] += " " + rest
    return table


class Env:
    """What the runs need: a server with the demo's user-service, a closed port, a scratch directory."""

    def __init__(self, server: NatsServer, bus: Bus, tmp_path: Path) -> None:
        self.server = server
        self.url = server.url
        self.bus = bus
        self.tmp = tmp_path
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.closed = f"nats://127.0.0.1:{s.getsockname()[1]}"
        #: Options to reach no server, quickly.
        self.nowhere = ("--server", self.closed, "--connect-timeout", "1")
        self._files = itertools.count()

    def natsbus(self, *argv: str, env: Optional[Dict[str, str]] = None) -> int:
        result = subprocess.run(
            [sys.executable, "-m", "natsbus", *argv],
            cwd=TESTS,
            env={**os.environ, "PYTHONPATH": str(self.tmp), **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode

    def manage(self, *argv: str) -> int:
        env = {**os.environ, "DJANGO_SQLITE_PATH": str(self.tmp / "db.sqlite3"), "NATS_URL": self.url}
        result = subprocess.run(
            [sys.executable, "manage.py", "natsbus_worker", *argv],
            cwd=DJANGO_EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode

    def module(self, name: str, text: str) -> str:
        (self.tmp / f"{name}.py").write_text(text)
        return name

    def lines(self, payloads: List[object]) -> str:
        path = self.tmp / f"input-{next(self._files)}.jsonl"
        path.write_text("".join(json.dumps(p) + "\n" for p in payloads))
        return str(path)

    def interrupted_batch(self, sig: int) -> int:
        steps = Steps(hold_from=3)
        path = self.lines([{"n": n} for n in range(1, 10)])
        for _ in serving(self.bus, steps, workers=2):
            argv = ["execute-many", "BatchStep", path, "--server", self.url, "--concurrency", "2", "--grace", "0"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "natsbus", *argv],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            steps.wait_for(lambda s: s.held == 2)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err
        return proc.returncode

    def worker_stopped(self, target: str, *args: str, hold: bool = False, signals: Tuple[int, ...]) -> int:
        worker = WorkerProcess(self.url, target=target, args=args)
        try:
            worker.wait_ready()
            if hold:
                release = self.tmp / "release"
                CommandBus(self.bus).submit(Hold(str(release)), timeout=30)
                worker.wait_for(f"holding {release}")
            for sig in signals:
                worker.signal(sig)
                worker.wait_for("draining")
            code = worker.wait()
            assert "Traceback" not in worker.output, worker.output
            return code
        finally:
            (self.tmp / "release").touch()
            worker.kill()


Run = Callable[[Env], int]

create = json.dumps({"name": "Exit", "email": "exit-codes@example.com"})
new_user = {"name": "Exit", "email": "exit-codes-many@example.com"}
broken = "raise RuntimeError('no settings')\n"

RUNS: Dict[int, List[Tuple[str, Run]]] = {
    0: [
        ("execute", lambda e: e.natsbus("execute", "CreateUserCommand", create, "--server", e.url)),
        (
            "execute-many",
            lambda e: e.natsbus("execute-many", "CreateUserCommand", e.lines([new_user]), "--server", e.url),
        ),
        ("worker drained", lambda e: e.worker_stopped("worker_app:make_pool", signals=(signal.SIGTERM,))),
    ],
    1: [
        ("execute, no handler", lambda e: e.natsbus("execute", "NobodyHandlesThis", "{}", "--server", e.url)),
        ("execute, error reply", lambda e: e.natsbus("execute", "CreateUserCommand", '{"name": 1}', "--server", e.url)),
        (
            "execute-many, a line failed",
            lambda e: e.natsbus("execute-many", "CreateUserCommand", e.lines([{}]), "--server", e.url),
        ),
        (
            "worker not drained",
            lambda e: e.worker_stopped(
                "daemon_handlers:build_pool", "--drain-timeout", "0.2", hold=True, signals=(signal.SIGTERM,)
            ),
        ),
    ],
    2: [
        ("execute, bad type", lambda e: e.natsbus("execute", "bad type!", "{}", "--server", e.url)),
        ("execute-many, bad type", lambda e: e.natsbus("execute-many", "bad type!", e.lines([{}]))),
        ("ask, http URL", lambda e: e.natsbus("ask", "GetUserQuery", "{}", "--server", "http://127.0.0.1:4222")),
        ("worker, import fails", lambda e: e.natsbus("worker", e.module("exit_broken", broken) + ":make_pool")),
        (
            "worker, a flag that would be ignored",
            lambda e: e.natsbus("worker", "bound_app:pool", "--server", e.url, env={"BOUND_APP_URL": e.url}),
        ),
        ("worker, a bad option", lambda e: e.natsbus("worker", "worker_app:make_pool", "--max-workers", "0")),
        ("manage.py natsbus_worker, http URL", lambda e: e.manage("--server", "http://127.0.0.1:4222")),
        ("manage.py natsbus_worker, no such pool", lambda e: e.manage("--pool", "no_such_module:build")),
    ],
    3: [
        ("execute", lambda e: e.natsbus("execute", "CreateUserCommand", create, *e.nowhere)),
        ("execute-many", lambda e: e.natsbus("execute-many", "CreateUserCommand", e.lines([{}]), *e.nowhere)),
        ("worker", lambda e: e.natsbus("worker", "worker_app:make_pool", *e.nowhere)),
        ("manage.py natsbus_worker", lambda e: e.manage(*e.nowhere)),
    ],
    130: [
        ("execute-many, Ctrl-C", lambda e: e.interrupted_batch(signal.SIGINT)),
        (
            "worker, a second SIGINT",
            lambda e: e.worker_stopped("daemon_handlers:build_pool", hold=True, signals=(signal.SIGINT, signal.SIGINT)),
        ),
    ],
    143: [
        ("execute-many, SIGTERM", lambda e: e.interrupted_batch(signal.SIGTERM)),
        (
            "worker, a second SIGTERM",
            lambda e: e.worker_stopped(
                "daemon_handlers:build_pool", hold=True, signals=(signal.SIGTERM, signal.SIGTERM)
            ),
        ),
    ],
}


@pytest.fixture()
def env(nats_server: NatsServer, bus: Bus, user_pool: WorkerPool, tmp_path: Path) -> Iterator[Env]:
    yield Env(nats_server, bus, tmp_path)


def test_the_documented_table_lists_exactly_the_codes_the_runs_check() -> None:
    assert sorted(documented_exit_codes()) == sorted(RUNS)


@pytest.mark.parametrize("code", sorted(documented_exit_codes()))
def test_every_run_exits_with_the_code_the_docs_give(env: Env, code: int) -> None:
    got = {name: run(env) for name, run in RUNS[code]}
    assert got == {name: code for name, _ in RUNS[code]}
