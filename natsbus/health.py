"""Health probes over HTTP: ``/livez`` and ``/readyz``, as Kubernetes asks them.

A :class:`HealthServer` answers ``GET`` (and ``HEAD``) ``/livez`` and
``/readyz`` from two checks, each a callable returning a :class:`Health`:
200 with a JSON body when the check is ok, 503 with the same body (and its
``reason``) when not. The body's keys are stable::

    {"status": "ok", "reason": "", "checks": {"connection": "connected", ...}}
    {"status": "unavailable", "reason": "draining", "checks": {...}}

The checks for a worker process (``natsbus worker --health-port``):

* :func:`pool_liveness`: the process is alive and the Bus's event-loop
  thread answers (a stuck loop means a restart is due);
* :func:`pool_readiness`: connected to NATS, the pool serving, and not
  draining; the ``reason`` says which is missing.

For a client-only process (a web app), :func:`bus_readiness` says whether
its Bus is connected and :func:`bus_liveness` whether its loop answers; the
Flask and Django integrations serve them as views
(``NatsBus.health_blueprint()``, ``natsbus.contrib.django.views``).

The server runs on daemon threads and uses only the standard library. A
check that raises answers 503 naming the error's type (its text and
traceback go to the log at DEBUG, never to the prober). Requests are logged
at DEBUG only (logger ``natsbus.health``).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple, Union

import attrs

from .bus import ConnectionState
from .errors import ConfigError, LifecycleError, NatsBusError

if TYPE_CHECKING:
    from .bus import Bus
    from .worker import WorkerPool

__all__ = ["Health", "HealthServer", "bus_liveness", "bus_readiness", "pool_liveness", "pool_readiness"]

logger = logging.getLogger("natsbus.health")

#: The paths a :class:`HealthServer` answers.
LIVEZ = "/livez"
READYZ = "/readyz"


def _as_checks(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@attrs.frozen
class Health:
    """The result of one health check.

    Args:
        ok: Whether the process is healthy for this probe.
        reason: Why it is not, e.g. ``"not connected (reconnecting)"``,
            ``"draining"``, ``"not serving yet"``; ``""`` when ok.
        checks: JSON-able details (the connection state, the pool's state, ...).

    Raises:
        TypeError: ``ok`` is not a bool or ``reason`` not a str.
    """

    ok: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    reason: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    checks: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_checks)

    def to_json(self) -> Dict[str, Any]:
        """The HTTP body: ``{"status": "ok" | "unavailable", "reason": str, "checks": {...}}``."""
        return {"status": "ok" if self.ok else "unavailable", "reason": self.reason, "checks": dict(self.checks)}


Check = Callable[[], Health]


def _run_check(check: Check, path: str) -> Health:
    """What ``check()`` says; a check that raises or returns something else is unavailable, named by type only."""
    try:
        health = check()
    except Exception as exc:
        logger.warning("the %s check raised %s", path, type(exc).__name__)
        logger.debug("the %s check raised", path, exc_info=True)
        return Health(False, f"check failed: {type(exc).__name__}", {"error": type(exc).__name__})
    if not isinstance(health, Health):
        logger.warning("the %s check returned %s, not a Health", path, type(health).__name__)
        return Health(False, "check failed: not a Health", {"error": "TypeError"})
    return health


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0  # seconds a client may take to send its request
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._probe(head=False)

    def do_HEAD(self) -> None:
        self._probe(head=True)

    def __getattr__(self, name: str) -> Any:
        # Any other method (POST, PUT, DELETE, made-up ones): 405, not http.server's 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body it may have sent is not read
        self._send(405, {"error": "method not allowed", "allow": ["GET", "HEAD"]}, head=False, allow="GET, HEAD")

    def _probe(self, head: bool) -> None:
        path = self.path.partition("?")[0]
        check = self.server.checks.get(path)
        if check is None:
            self._send(404, {"error": "not found", "paths": sorted(self.server.checks)}, head=head)
            return
        health = _run_check(check, path)
        try:
            data = _encode(health.to_json())
        except (TypeError, ValueError) as exc:  # e.g. checks with keys that are not strings
            logger.warning("the %s check's details are not JSON: %s", path, type(exc).__name__)
            health = Health(False, "check failed: details not JSON", {"error": type(exc).__name__})
            data = _encode(health.to_json())
        self._send(200 if health.ok else 503, data, head=head)

    def _send(self, status: int, body: Union[Mapping[str, Any], bytes], head: bool, allow: str = "") -> None:
        data = body if isinstance(body, bytes) else _encode(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if allow:
            self.send_header("Allow", allow)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def version_string(self) -> str:
        return "natsbus-health"  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, default=str).encode() + b"\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], checks: Dict[str, Check]) -> None:
        self.checks = checks
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A prober that hung up mid-answer, say: socketserver would print a traceback on stderr.
        logger.debug("health probe from %s failed", client_address, exc_info=True)


class HealthServer:
    """An HTTP server answering ``/livez`` and ``/readyz`` on a daemon thread.

    ``GET`` or ``HEAD`` ``/livez`` / ``/readyz`` answers 200 with
    :meth:`Health.to_json` when the check is ok, else 503 with the same
    body; another path answers 404, another method 405. A check runs on the
    request's thread, once per request.

    Example::

        with HealthServer(lambda: pool_liveness(pool), lambda: pool_readiness(pool), port=8080):
            pool.run()

    Args:
        livez: The liveness check.
        readyz: The readiness check.
        host: The address to listen on (default loopback only; ``"0.0.0.0"``
            for a probe from outside the host or pod network namespace).
        port: The TCP port; 0 picks a free one (see :attr:`address`).

    Raises:
        ConfigError: ``port`` is not in 0-65535, or a check is not callable.
    """

    def __init__(self, livez: Check, readyz: Check, *, host: str = "127.0.0.1", port: int = 0) -> None:
        if not callable(livez) or not callable(readyz):
            raise ConfigError("livez and readyz must be callables returning a natsbus.health.Health")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"the health port must be an integer from 0 to 65535, got {port!r}")
        self.host = host
        self.port = port
        self._checks: Dict[str, Check] = {LIVEZ: livez, READYZ: readyz}
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def start(self) -> HealthServer:
        """Listen and serve on a daemon thread; return self once the port is bound.

        Raises:
            ConfigError: the address cannot be listened on (the port is in
                use, the host is not an address of this machine).
            LifecycleError: already started, or closed.
        """
        with self._lock:
            if self._closed:
                raise LifecycleError("the HealthServer is closed")
            if self._server is not None:
                raise LifecycleError("the HealthServer is already started")
            try:
                server = _Server((self.host, self.port), self._checks)
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
                raise ConfigError(f"cannot serve health probes on {self.host}:{self.port}: {reason}") from None
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="natsbus-health", daemon=True
            )
            self._thread.start()
        logger.info("health probes on http://%s:%d%s and %s", *self.address, LIVEZ, READYZ)
        return self

    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` listened on; the real port when ``port`` was 0.

        Raises:
            LifecycleError: not started.
        """
        server = self._server
        if server is None:
            raise LifecycleError("the HealthServer is not started")
        host, port = server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop answering and free the port. Safe twice, and before :meth:`start`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # serve_forever returns (within its poll interval)
        server.server_close()
        if thread is not None:
            thread.join(5.0)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- the checks --------------------------------------------------------------


def pool_liveness(pool: WorkerPool, timeout: float = 1.0) -> Health:
    """Alive: this process answers, and the pool's Bus's event loop runs a no-op within ``timeout``.

    The same round trip through the loop thread as systemd's watchdog
    (:func:`natsbus.cli.systemd.check_loop`). Being disconnected from NATS
    is not a liveness failure (nats-py reconnects; see :func:`pool_readiness`).

    Args:
        pool: The pool whose Bus to check; without a Bus yet, only the process counts.
        timeout: Seconds the loop has to answer.

    Returns:
        As :func:`bus_liveness`; ok with ``{"loop": "no bus yet"}`` when the pool has no Bus.
    """
    bus = pool.bus
    if bus is None:
        return Health(True, checks={"loop": "no bus yet"})
    return bus_liveness(bus, timeout)


def bus_liveness(bus: Bus, timeout: float = 1.0) -> Health:
    """Alive: the Bus's event loop runs a no-op within ``timeout`` (:func:`pool_liveness` for a Bus alone).

    Args:
        bus: The Bus.
        timeout: Seconds the loop has to answer.

    Returns:
        ok with ``{"loop": "ok"}``, or not with the reason ``"event loop
        not responding"``, ``"event loop not running"`` or ``"bus closed"``.
    """
    from .cli.systemd import check_loop

    if bus.closed:
        return Health(False, "bus closed", {"loop": "closed"})
    try:
        check_loop(bus, timeout)
    except TimeoutError:
        return Health(False, "event loop not responding", {"loop": f"no answer within {timeout:g}s"})
    except NatsBusError as exc:  # the loop stopped, or the Bus closed meanwhile
        return Health(False, "event loop not running", {"loop": type(exc).__name__})
    return Health(True, checks={"loop": "ok"})


def _pool_state(pool: WorkerPool) -> str:
    if pool.running and pool.served:  # running from start() on; served once subscribed
        return "serving"
    if pool.stopped:
        return "stopped"
    if pool.served:
        return "draining"
    return "not serving yet"


def pool_readiness(pool: WorkerPool) -> Health:
    """Ready: the pool serves (subscribed, not draining or stopped) and its Bus is connected.

    Args:
        pool: The pool.

    Returns:
        ok, or not with the first reason found: ``"not serving yet"``,
        ``"draining"``, ``"stopped"``, ``"not connected (reconnecting)"``
        (or another :class:`~natsbus.ConnectionState`). ``checks`` has
        ``service``, ``pool`` (``serving``, ``not serving yet``,
        ``draining``, ``stopped``), ``connection`` and ``inflight``.
    """
    state = _pool_state(pool)
    bus = pool.bus
    connection = bus.state if bus is not None else ConnectionState.CONNECTING
    checks = {"service": pool.service_id, "pool": state, "connection": connection.value, "inflight": pool.inflight}
    if state != "serving":
        return Health(False, state, checks)
    if connection is not ConnectionState.CONNECTED:
        return Health(False, f"not connected ({connection.value})", checks)
    return Health(True, checks=checks)


def bus_readiness(bus: Bus) -> Health:
    """Ready: the Bus is connected (for a client-only process, e.g. a web app).

    Args:
        bus: The Bus.

    Returns:
        ok, or not with the reason ``"not connected (<state>)"``;
        ``checks`` has ``connection``, a :class:`~natsbus.ConnectionState` value.
    """
    try:
        bus.live_transport()  # a forked child (a pre-fork web server) opens its own connection, as a call would
    except NatsBusError:  # closed: the state says so
        pass
    state = bus.state
    checks = {"connection": state.value}
    if state is not ConnectionState.CONNECTED:
        return Health(False, f"not connected ({state.value})", checks)
    return Health(True, checks=checks)
