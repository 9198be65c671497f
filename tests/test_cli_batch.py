"""natsbus execute-many / ask-many: results written as they finish, nothing lost to an interruption, --resume."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs
import pytest
from batch_support import Steps, serving
from waiting import wait_until

from natsbus import Bus, Command, CommandBus, WorkerPool
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
    status, rows, err = run(
        capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--concurrency", "8", "--progress", "never"
    )
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
    assert err.startswith("natsbus execute-many: 40 commands, 39 succeeded, 1 failed (1 ConflictError) in ")

    # ask-many on the ids just made, from standard input.
    ids = [*[row["result"]["user_id"] for row in rows if row["ok"]][:5], "user-nobody"]
    stdin = io.StringIO("".join(json.dumps({"user_id": i}) + "\n" for i in ids))
    original, sys.stdin = sys.stdin, stdin
    try:
        status, answers, err = run(capsys, nats_url, "ask-many", "GetUserQuery", "-", "--progress", "never")
    finally:
        sys.stdin = original
    assert status == 1
    assert [a["result"]["id"] for a in answers[:5]] == ids[:5]
    assert answers[5] == {"line": 6, "ok": False, "type": "NotFoundError", "error": "User not found: user-nobody"}
    assert err.startswith("natsbus ask-many: 6 queries, 5 succeeded, 1 failed (1 NotFoundError) in ")


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
    with pytest.raises(SystemExit) as info:
        run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--concurrency", "0")
    assert info.value.code == 2


def test_the_progress_bar_draws_on_a_terminal(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "users.jsonl", users(30, "bar"))
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--progress", "bar")
    assert status == 0 and len(rows) == 30 and all(row["ok"] for row in rows)
    bar, summary = err.split("\n")[:2]
    assert bar.startswith("\rexecute-many [")
    assert bar.split("\r")[-1].startswith("execute-many [" + "#" * 30 + "] 30/30 100% ")
    assert summary.startswith("natsbus execute-many: 30 commands, 30 succeeded, 0 failed in ")


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


# -- the input: CSV besides JSON Lines ----------------------------------------------


@attrs.frozen
class CsvRow(Command[Dict[str, Any]]):
    name: str
    age: Optional[int]
    member: bool
    tags: List[str]


@pytest.fixture()
def echo_pool(bus: Bus) -> Iterator[WorkerPool]:
    pool = WorkerPool(bus, service_id=f"csv-{uuid.uuid4().hex[:6]}")

    @pool.register
    def echo(cmd: CsvRow) -> Dict[str, Any]:
        return attrs.asdict(cmd)

    with pool:
        yield pool


def test_csv_input_one_payload_per_row_typed_by_the_header(
    capsys: Any, nats_url: str, echo_pool: WorkerPool, tmp_path: Path
) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(
        "\ufeffname,age:int,member:bool,tags:json\r\n"  # a BOM, as spreadsheets write it
        'Ann,41,true,"[""a"", ""b""]"\r\n'
        "\r\n"
        '"Bo, Jr.",,no,[]\r\n'
        '"Cy\nthe second",7,1,["c"]\r\n'.encode()
    )
    status, rows, err = run(capsys, nats_url, "execute-many", "CsvRow", str(path), "--progress", "never")
    assert (status, err.split(" in ")[0]) == (0, "natsbus execute-many: 3 commands, 3 succeeded, 0 failed")
    assert rows == [
        {"line": 2, "ok": True, "result": {"name": "Ann", "age": 41, "member": True, "tags": ["a", "b"]}},
        {"line": 4, "ok": True, "result": {"name": "Bo, Jr.", "age": None, "member": False, "tags": []}},
        {"line": 5, "ok": True, "result": {"name": "Cy\nthe second", "age": 7, "member": True, "tags": ["c"]}},
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("name,age:int\nAnn,forty\n", "line 2 of {path}, column 'age': 'forty' is not a int"),
        ("name,age\nAnn\n", "line 2 of {path} has 1 fields; the header has 2"),
        ("name,name\nAnn,Bo\n", "line 1 of {path}: the header names 'name' more than once"),
        ("name,member:bool\nAnn,maybe\n", "line 2 of {path}, column 'member': 'maybe' is not a bool"),
    ],
)
def test_a_bad_csv_row_is_a_usage_error_before_anything_is_sent(
    capsys: Any, nats_url: str, tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    status, rows, err = run(capsys, nats_url, "execute-many", "CsvRow", str(path))
    assert (status, rows, err) == (2, [], f"natsbus execute-many: {error.format(path=path)}\n")


def test_format_csv_reads_standard_input_too(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, nats_url: str, echo_pool: WorkerPool
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("name,age:int,member:bool,tags:json\nEd,3,false,[]\n"))
    status, rows, _ = run(capsys, nats_url, "execute-many", "CsvRow", "-", "--format", "csv", "--progress", "never")
    assert status == 0
    assert rows == [{"line": 2, "ok": True, "result": {"name": "Ed", "age": 3, "member": False, "tags": []}}]


# -- the output: as results finish, progress lines, the summary ---------------------


@attrs.frozen
class Gated(Command[int]):
    n: int


def test_results_are_written_as_they_finish(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    gate = threading.Event()
    started: List[int] = []
    # No remembered replies: the second run sends the same command ids (same input), and must run them.
    pool = WorkerPool(bus, service_id=f"gated-{uuid.uuid4().hex[:6]}", idempotency=None)

    @pool.register
    def gated(cmd: Gated) -> int:
        started.append(cmd.n)
        if cmd.n == 1:
            gate.wait(20)  # the first line finishes only when the test says so
        return cmd.n

    path = write_lines(tmp_path / "in.jsonl", [{"n": n} for n in range(1, 6)])
    with pool:
        for order, before_release in (("completion", [2, 3, 4, 5]), ("input", [])):
            gate.clear()
            started.clear()
            out = tmp_path / f"{order}.jsonl"
            argv = ["execute-many", "Gated", str(path), "-o", str(out), "--order", order, "--progress", "never"]
            status: List[int] = []
            runner = threading.Thread(
                target=lambda argv=argv, status=status: status.append(main([*argv, "--server", nats_url]))
            )
            runner.start()
            try:
                # Lines 2-5 finish while line 1 runs: written at once, or held back for line 1.
                wait_until(lambda: len(started) == 5)
                if before_release:
                    wait_until(lambda out=out: len(read_rows(out)) == 4)
                assert [row["line"] for row in read_rows(out)] == before_release
            finally:
                gate.set()
                runner.join(30)
            assert status == [0]
            lines = [row["line"] for row in read_rows(out)]
            assert lines == ([2, 3, 4, 5, 1] if order == "completion" else [1, 2, 3, 4, 5])


def test_progress_goes_to_stderr_as_lines_when_it_is_no_terminal(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "users.jsonl", users(12, "lines"))
    status, rows, err = run(
        capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--concurrency", "2",
        "--progress-interval", "0",  # a line at every wake-up, so there are some to see
    )  # fmt: skip
    assert status == 0 and len(rows) == 12
    *progress, summary = err.splitlines()
    assert "\r" not in err and progress
    assert all(re.fullmatch(r"execute-many: \d+/12 \d+% \d+/s( eta \d+s)?", line) for line in progress), progress
    assert summary.startswith("natsbus execute-many: 12 commands, 12 succeeded, 0 failed in ")


def test_the_summary_counts_failures_by_type(capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path) -> None:
    CommandBus(user_pool.bus).execute(CreateUserCommand("x", "kind-taken@example.com"))  # type: ignore[arg-type]
    taken = {"name": "t", "email": "kind-taken@example.com"}
    path = write_lines(tmp_path / "mixed.jsonl", [*users(3, "kinds"), taken, {"name": "no email"}, taken])
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--progress", "never")
    assert status == 1
    assert [row.get("type") for row in rows] == [None] * 3 + ["ConflictError", "InvalidRequestError", "ConflictError"]
    assert err.startswith(
        "natsbus execute-many: 6 commands, 3 succeeded, 3 failed (2 ConflictError, 1 InvalidRequestError) in "
    )


# -- command ids, --resume and the flags it takes -----------------------------------


def test_command_ids_come_from_the_input_line_and_a_run_key(
    capsys: Any, nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    steps = Steps(hold_from=10**9)
    for _ in serving(bus, steps):
        path = write_lines(tmp_path / "steps.jsonl", [{"n": n} for n in range(1, 4)], blank_every=2)
        first = run(capsys, nats_url, "execute-many", "BatchStep", str(path), "--progress", "never")[1]
        ids = [row["result"]["id"] for row in first]
        assert [row["line"] for row in first] == [1, 3, 4]  # a blank line after the first
        assert re.fullmatch(r"cmd-([0-9a-f]{16})-1", ids[0])
        key = ids[0].split("-")[1]
        assert ids == [f"cmd-{key}-1", f"cmd-{key}-3", f"cmd-{key}-4"]
        # The same input: the same ids (an idempotent pool answered from its store: nothing ran again).
        again = run(capsys, nats_url, "execute-many", "BatchStep", str(path), "--progress", "never")[1]
        assert again == first
        assert sorted(steps.counts().values()) == [1, 1, 1]
        # Another input, or another run key: other ids.
        other = write_lines(tmp_path / "other.jsonl", [{"n": n} for n in range(1, 3)])
        changed = run(capsys, nats_url, "execute-many", "BatchStep", str(other), "--progress", "never")[1]
        assert changed[0]["result"]["id"] != ids[0]
        argv = ["execute-many", "BatchStep", str(path), "--run-key", "import-7", "--progress", "never"]
        keyed = run(capsys, nats_url, *argv)[1]
        assert [row["result"]["id"] for row in keyed] == ["cmd-import-7-1", "cmd-import-7-3", "cmd-import-7-4"]


def test_resume_sends_only_the_lines_without_a_result(capsys: Any, nats_url: str, bus: Bus, tmp_path: Path) -> None:
    steps = Steps(hold_from=10**9)
    path = write_lines(tmp_path / "steps.jsonl", [{"n": n} for n in range(1, 11)])
    out = tmp_path / "results.jsonl"
    for _ in serving(bus, steps):
        argv = ["execute-many", "BatchStep", str(path), "-o", str(out), "--progress", "never"]
        assert run(capsys, nats_url, *argv)[0] == 0
        rows = out.read_text().splitlines(keepends=True)
        # As a run killed mid-write would leave it: 4 rows, then half of the 5th.
        out.write_text("".join(rows[:4]) + rows[4][:10])
        status, _, err = run(capsys, nats_url, *argv, "--resume")
        assert status == 0
        assert err.splitlines()[0] == (
            f"natsbus execute-many: the last row of {out} was incomplete; dropped (its line runs again)"
        )
        assert err.splitlines()[1].endswith(f"; 4 already in {out}, skipped")
        assert err.splitlines()[1].startswith("natsbus execute-many: 6 commands, 6 succeeded, 0 failed in ")
        assert [row["line"] for row in read_rows(out)] == list(range(1, 11))
        # Line 5 was sent again with its id: the pool answered it from its store.
        assert sorted(steps.counts().values()) == [1] * 10
        status, _, err = run(capsys, nats_url, *argv, "--resume")  # nothing left to do
        assert (status, err.split(" in ")[0]) == (0, "natsbus execute-many: 0 commands, 0 succeeded, 0 failed")


def test_flags_that_cannot_work_together_are_refused(capsys: Any, nats_url: str, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "steps.jsonl", [{"n": 1}, {"n": 2}])
    out = tmp_path / "out.jsonl"
    out.write_text('{"line": 1, "ok": true, "result": null}\n')
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text('{"line": 9, "ok": true, "result": null}\n')
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not a row\n")
    for argv, error in [
        (["--resume"], "--resume needs --output FILE: the results of the run to continue"),
        (["-o", str(out)], f"{out} exists: --resume to continue the run that wrote it, or choose another file"),
        (
            ["-o", str(stranger), "--resume"],
            f"{stranger} has a result for line 9, which {path} has no payload on: is it the output of another input?",
        ),
        (["-o", str(garbage), "--resume"], f"line 1 of {garbage} is not a result row of natsbus execute-many"),
        (
            ["--progress", "never", "--progress-interval", "5"],
            "--progress-interval would be ignored with --progress never",
        ),
    ]:
        status, rows, err = run(capsys, nats_url, "execute-many", "BatchStep", str(path), *argv)
        assert (status, rows, err) == (2, [], f"natsbus execute-many: {error}\n"), argv
    with pytest.raises(SystemExit) as info:  # queries get no command ids: no --run-key
        run(capsys, nats_url, "ask-many", "BatchStep", str(path), "--run-key", "k")
    assert info.value.code == 2


# -- interrupted: nothing finished is lost, --resume completes it, each command runs once


def start_batch(url: str, path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "natsbus", "execute-many", "BatchStep", str(path), "--server", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_keeps_every_finished_result_and_resume_completes_the_batch(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    steps = Steps(hold_from=30)  # lines 30 and on wait in the handler until released
    path = write_lines(tmp_path / "steps.jsonl", [{"n": n} for n in range(1, 201)])
    for _ in serving(bus, steps):
        proc = start_batch(nats_url, path, "--concurrency", "4", "--timeout", "60", "--grace", "30")
        steps.wait_for(lambda s: s.held == 4)  # lines 1-29 answered, 30-33 running
        proc.send_signal(signal.SIGINT)
        steps.release.set()  # the requests in flight finish within the grace period
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        rows = [json.loads(line) for line in out.splitlines()]
        ran = steps.counts()
        # Every result written is a handler run, every handler run has its result written.
        assert all(row["ok"] for row in rows)
        assert sorted(row["result"]["id"] for row in rows) == sorted(ran)
        assert [row["line"] for row in rows] == list(range(1, len(rows) + 1))
        assert 33 <= len(rows) < 200
        summary, hint = err.splitlines()[-2:]
        assert summary.startswith(f"natsbus execute-many: interrupted by SIGINT: {len(rows)} of 200 commands finished")
        assert f"0 in flight abandoned, {200 - len(rows)} not sent" in summary
        assert hint == (
            "natsbus execute-many: to finish, run the same command with "
            "--resume --output FILE, FILE holding the results written so far"
        )

        results = tmp_path / "results.jsonl"
        results.write_text(out)  # as `> results.jsonl` would have kept it
        resumed = start_batch(nats_url, path, "-o", str(results), "--resume")
        out, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err
        assert out == ""
        assert f"{200 - len(rows)} commands, {200 - len(rows)} succeeded, 0 failed in " in err
    rows = read_rows(results)
    assert [row["line"] for row in rows] == list(range(1, 201))
    ran = steps.counts()
    assert sorted(ran.values()) == [1] * 200  # each command ran exactly once
    assert sorted(ran) == sorted(row["result"]["id"] for row in rows)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_abandons_what_is_in_flight_after_the_grace_and_resume_does_not_run_it_twice(
    nats_url: str, bus: Bus, tmp_path: Path
) -> None:
    steps = Steps(hold_from=30)
    path = write_lines(tmp_path / "steps.jsonl", [{"n": n} for n in range(1, 101)])
    results = tmp_path / "results.jsonl"
    for _ in serving(bus, steps):
        proc = start_batch(nats_url, path, "-o", str(results), "--concurrency", "4", "--timeout", "60", "--grace", "0")
        steps.wait_for(lambda s: s.held == 4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # the 4 held requests still run in the pool
        assert proc.returncode == 143, err
        assert "Traceback" not in err
        assert [row["line"] for row in read_rows(results)] == list(range(1, 30))
        assert err.splitlines()[-2].startswith("natsbus execute-many: interrupted by SIGTERM: 29 of 100 commands")
        assert "; 4 in flight abandoned, 67 not sent" in err.splitlines()[-2]
        assert err.splitlines()[-1] == "natsbus execute-many: to finish, run the same command with --resume"
        assert len(steps.counts()) == 33  # 29 answered and written, 4 running: their results are not written

        steps.release.set()  # the abandoned four finish now; the idempotent pool keeps their replies
        resumed = start_batch(nats_url, path, "-o", str(results), "--resume", "--timeout", "60")
        _, err = resumed.communicate(timeout=60)
        assert resumed.returncode == 0, err
    rows = read_rows(results)
    assert [row["line"] for row in rows] == list(range(1, 101))
    ran = steps.counts()
    assert sorted(ran.values()) == [1] * 100  # lines 30-33 were sent twice and ran once
    assert sorted(ran) == sorted(row["result"]["id"] for row in rows)


# -- helpers ------------------------------------------------------------------------


def read_rows(path: Path) -> List[Dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


# -- --json: the summary as one JSON object on standard error ------------------------


def test_json_summary_is_one_object_with_an_error_and_code_when_lines_failed(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    CommandBus(user_pool.bus).execute(CreateUserCommand("x", "json-taken@example.com"))  # type: ignore[arg-type]
    taken = {"name": "t", "email": "json-taken@example.com"}
    path = write_lines(tmp_path / "mixed.jsonl", [*users(2, "jsonsum"), taken, {"name": "no email"}])
    status, rows, err = run(capsys, nats_url, "execute-many", "CreateUserCommand", str(path), "--json")
    assert status == 1
    assert [row["ok"] for row in rows] == [True, True, False, False]  # the rows are unchanged
    (line,) = err.splitlines()  # no progress lines: --json makes --progress auto mean never
    summary = json.loads(line)
    elapsed = summary.pop("elapsed")
    assert isinstance(elapsed, float) and elapsed >= 0
    assert summary == {
        "command": "execute-many",
        "type": "CreateUserCommand",
        "total": 4,
        "written": 4,
        "succeeded": 2,
        "failed": 2,
        "failures": {"ConflictError": 1, "InvalidRequestError": 1},
        "skipped": 0,
        "abandoned": 0,
        "not_sent": 0,
        "output": None,
        "interrupted": None,
        "error": "2 of 4 failed",
        "code": "failed",
    }


def test_json_summary_of_a_resumed_run_that_succeeded_has_no_error(
    capsys: Any, nats_url: str, user_pool: WorkerPool, tmp_path: Path
) -> None:
    path = write_lines(tmp_path / "users.jsonl", users(3, "jsonok"))
    output = tmp_path / "out.jsonl"
    output.write_text('{"line": 1, "ok": true, "result": null}\n')  # line 1 finished in an earlier run
    argv = ["execute-many", "CreateUserCommand", str(path), "-o", str(output), "--resume"]
    status, rows, err = run(capsys, nats_url, *argv, "--json")
    assert (status, rows) == (0, [])
    summary = json.loads(err)
    assert "error" not in summary and "code" not in summary
    assert (summary["total"], summary["succeeded"], summary["skipped"], summary["output"]) == (2, 2, 1, str(output))
    assert [row["line"] for row in read_rows(output)] == [1, 2, 3]


def test_json_errors_before_sending_are_error_objects(capsys: Any, nats_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n": 1}\nnot json\n')
    status, rows, err = run(capsys, nats_url, "execute-many", "BatchStep", str(bad), "--json")
    assert (status, rows) == (2, [])
    error = json.loads(err)
    assert error["code"] == "usage" and error["error"].startswith(f"line 2 of {bad} is not valid JSON: ")
    good = write_lines(tmp_path / "good.jsonl", [{"n": 1}])
    status, rows, err = run(capsys, "nats://127.0.0.1:1", "ask-many", "BatchStep", str(good), "--json")
    assert (status, rows) == (3, [])
    error = json.loads(err)
    assert error["code"] == "connect" and "127.0.0.1:1" in error["error"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_json_summary_says_it_was_interrupted(nats_url: str, bus: Bus, tmp_path: Path) -> None:
    steps = Steps(hold_from=3)
    path = write_lines(tmp_path / "steps.jsonl", [{"n": n} for n in range(1, 11)])
    results = tmp_path / "results.jsonl"
    for _ in serving(bus, steps):
        args = ("-o", str(results), "--concurrency", "2", "--timeout", "60", "--grace", "0", "--json")
        proc = start_batch(nats_url, path, *args)
        steps.wait_for(lambda s: s.held == 2)  # lines 1-2 answered, 3-4 held
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (143, "")
    summary = json.loads(err)
    assert (summary["interrupted"], summary["code"], summary["written"]) == ("SIGTERM", "interrupted", 2)
    assert (summary["abandoned"], summary["not_sent"], summary["total"]) == (2, 6, 10)
    assert summary["error"] == "interrupted by SIGTERM; to finish, run the same command with --resume"
