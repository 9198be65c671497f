"""Run an example app under a real gunicorn and talk to it over HTTP (test helper)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs

LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
OPENED = re.compile(r"\[(\d+)\] \[natsbus\.contrib\] INFO natsbus: opened a Bus")
CLOSED = re.compile(r"\[(\d+)\] \[natsbus\.contrib\] INFO natsbus: closed the Bus")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


@attrs.define
class Gunicorn:
    """A running gunicorn: its master process, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Tuple[int, Any]:
        """One HTTP request; returns ``(status, decoded JSON body)``."""
        status, _, decoded = self.request(method, path, body)
        return status, decoded

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Tuple[int, Dict[str, str], Any]:
        """One HTTP request; returns ``(status, headers with lower-case names, decoded JSON body)``."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, _headers(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, _headers(exc.headers), json.loads(exc.read() or b"null")

    def pids(self, pattern: re.Pattern[str]) -> List[int]:
        return [int(m) for m in pattern.findall(self.log())]


def _headers(message: Any) -> Dict[str, str]:
    return {name.lower(): value for name, value in message.items()}


def _supports(setting: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(s.name == setting for s in KNOWN_SETTINGS)


def _wait_for(predicate: Any, deadline: float, what: str, server: Gunicorn) -> Any:
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited with {server.proc.returncode} {what}:\n{server.log()}")
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gunicorn was not ready in time ({what}):\n{server.log()}")


def _http_ready(server: Gunicorn) -> bool:
    try:
        with urllib.request.urlopen(server.url + "/", timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        exc.close()
        return True  # any HTTP answer (404 included) means a worker serves
    except OSError:
        return False


@contextlib.contextmanager
def gunicorn(
    app: str, *, cwd: Path, env: Dict[str, str], log_path: Path, timeout: float = 30.0, workers: int = 2
) -> Iterator[Gunicorn]:
    """Run ``app`` under gunicorn (``workers`` workers, ``--preload``, 4 threads) on a free loopback port.

    Waits until it answers HTTP (bounded by ``timeout``); always stops it
    (SIGTERM, then SIGKILL) on the way out.
    """
    config = cwd / "gunicorn.conf.py"
    cmd = [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(workers), "--threads", "4"]
    cmd += ["--worker-class", "gthread", "--bind", "127.0.0.1:0", "--graceful-timeout", "10"]
    if _supports("control_socket_disable"):
        cmd.append("--no-control-socket")  # gunicorn >= 24 would share a socket in $HOME between runs
    if config.exists():
        cmd += ["--config", str(config)]
    cmd.append(app)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    server = Gunicorn(proc, "", log_path)
    try:
        deadline = time.monotonic() + timeout
        port = _wait_for(lambda: (LISTENING.findall(server.log()) or [None])[0], deadline, "binding", server)
        server.url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _http_ready(server), deadline, "answering HTTP", server)
        yield server
    finally:
        stop(server)


def stop(server: Gunicorn, timeout: float = 20.0) -> int:
    """Stop gunicorn gracefully (SIGTERM), SIGKILL after ``timeout``; returns the exit code."""
    return terminate(server.proc, timeout)


def wait_for_output(proc: subprocess.Popen[bytes], log_path: Path, text: str, timeout: float = 30.0) -> str:
    """Wait (bounded) until ``text`` appears in a process's log file; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if text in log:
            return log
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before printing {text!r}:\n{log}")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} did not appear within {timeout}s:\n{log_path.read_text(errors='replace')}")


def terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
