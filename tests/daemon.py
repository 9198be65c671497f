"""Run ``natsbus worker`` as a real subprocess and watch its log output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent


class WorkerProcess:
    """``python -m natsbus worker TARGET [--server URL]`` with its output collected line by line."""

    def __init__(
        self,
        url: Optional[str],
        target: str = "worker_app:make_pool",
        args: Sequence[str] = (),
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        environ = dict(os.environ, **(env or {}))
        environ.pop("NATS_URL", None)
        server = ["--server", url] if url is not None else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "natsbus", "worker", target, *server, *args],
            cwd=HERE,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        """Wait until a line containing ``text`` is printed; return it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no line with {text!r} in worker output:\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def wait_ready(self) -> WorkerProcess:
        self.wait_for("serving")
        return self

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout}s; its output:\n{self.output}") from None
        self._close()
        return code

    def _close(self) -> None:
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._close()
