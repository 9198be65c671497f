"""natsbus execute-many / ask-many: a JSON Lines file through execute_many, a progress bar on a terminal."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from natsbus import CommandBus, WorkerPool
from natsbus.cli import main
from natsbus.cli.batch import ProgressBar
from natsbus.demo import CreateUserCommand


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> Tuple[int, List[Dict[str, Any]], str]:
    status = main([*argv, "--server", url])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def write_lines(path: Path, payloads: List[Any], blank_every: int = 0) -> Path:
    lines = []
    for i, payload in enumerate(payloads):
        lines.append(json.dumps(payload))
        if blank_every and i % blank_every == 0:
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n")
    return path


def users(n: int, prefix: str) -> List[Dict[str, str]]:
    return [{"name": f"{prefix}{i}", "email": f"{prefix}{i}@example.com"} for i in range(n)]


def test_execute_many_sends_every_line_in_order_and_reports_each(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    payloads = users(40, "batch")
    # An email that exists before the run: a ConflictError for that line only.
    # (A duplicate inside the batch would race: both lines are in flight at once.)
    taken = {"name": "taken", "email": "batch-taken@example.com"}
    assert CommandBus(user_pool.bus).execute(CreateUserCommand(**taken)).user_id.startswith("user-")  # type: ignore[union-attr]
    payloads[7] = taken
    path = write_lines(tmp_path / "users.jsonl", payloads, blank_every=10)
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--concurrency", "8")
    assert status == 1  # one failed
    assert len(rows) == 40
    # Line numbers are the file's own (blank lines are skipped, not renumbered).
    assert [row["line"] for row in rows[:4]] == [1, 3, 4, 5]
    failed = [row for row in rows if not row["ok"]]
    assert failed == [
        {
            "line": 9,
            "ok": False,
            "type": "ConflictError",
            "error": "User already exists with email: batch-taken@example.com",
        }
    ]
    assert all(row["result"]["user_id"].startswith("user-") for row in rows if row["ok"])
    # stderr is no terminal here: no bar, only the summary.
    assert "\r" not in err
    assert err.startswith("natsbus execute-many: 40 commands, 39 succeeded, 1 failed in ")

    # ask-many on the ids just made, from standard input.
    ids = [*[row["result"]["user_id"] for row in rows if row["ok"]][:5], "user-nobody"]
    stdin = io.StringIO("".join(json.dumps({"user_id": i}) + "\n" for i in ids))
    original, sys.stdin = sys.stdin, stdin
    try:
        status, answers, err = run(capsys, nats_url, "ask-many", "GetUserQuery", "-")
    finally:
        sys.stdin = original
    assert status == 1
    assert [a["result"]["id"] for a in answers[:5]] == ids[:5]
    assert answers[5] == {"line": 6, "ok": False, "type": "NotFoundError", "error": "User not found: user-nobody"}
    assert err.startswith("natsbus ask-many: 6 queries, 5 succeeded, 1 failed in ")


def test_every_line_is_checked_before_anything_is_sent(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"name": "a", "email": "never-sent@example.com"}\n{"name": oops}\n')
    before = user_pool.dispatcher.route_for("commands.CreateUserCommand").stats.num_requests  # type: ignore[union-attr]
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path))
    assert (status, rows) == (2, [])
    assert err.startswith(f"natsbus execute-many: line 2 of {path} is not valid JSON: ")
    assert user_pool.dispatcher.route_for("commands.CreateUserCommand").stats.num_requests == before  # type: ignore[union-attr]
    assert run(capsys, nats_url, "execute-many", "CreateUserCommand", str(tmp_path / "missing.jsonl"))[0] == 2
    assert run(capsys, nats_url, "execute-many", "Bad.Type", str(path))[0] == 2
    assert run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--concurrency", "0")[0] == 2


def test_the_progress_bar_draws_on_a_terminal(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "users.jsonl", users(30, "bar"))
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--progress", "always")
    assert status == 0 and len(rows) == 30 and all(row["ok"] for row in rows)
    bar, summary = err.split("\n")[:2]
    assert bar.startswith("\rexecute-many [")
    assert bar.split("\r")[-1].startswith("execute-many [" + "#" * 30 + "] 30/30 100% ")
    assert summary.startswith("natsbus execute-many: 30 commands, 30 succeeded, 0 failed")


def test_progress_bar_rendering() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, 200, "job", width=10, interval=0)
    assert bar.render(0, 200, 1.0) == "job [..........] 0/200   0% 0/s"
    assert bar.render(50, 200, 2.0) == "job [##........] 50/200  25% 25/s eta 6s"
    assert bar.render(200, 200, 4.0) == "job [##########] 200/200 100% 50/s"
    assert bar.render(7, None, 1.0) == "job 7 done 7/s"
    bar.close()
    assert stream.getvalue() == ""  # nothing drawn, nothing to end
    bar(1, 200)
    bar.close()
    bar.close()
    assert stream.getvalue().count("\n") == 1


@pytest.mark.timeout(60)
def test_the_bar_appears_by_itself_when_stderr_is_a_terminal(
    nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "users.jsonl", users(20, "tty"))
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "natsbus", "execute-many", "CreateUserCommand", str(path), "--server", nats_url],
            stdout=subprocess.PIPE,
            stderr=secondary,
            stdin=subprocess.DEVNULL,
        )
        os.close(secondary)
        secondary = -1
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the terminal closed: the child exited
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    assert proc.returncode == 0
    assert len(out.splitlines()) == 20
    text = seen.decode()
    assert "\rexecute-many [" in text and "20/20 100%" in text, text
    assert "natsbus execute-many: 20 commands, 20 succeeded, 0 failed" in text
