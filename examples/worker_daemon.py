"""A worker daemon to run under systemd (see ``natsbus-worker.service`` beside it).

Serves a WorkerPool built by a factory (default: the spec's user-service,
``natsbus.demo:build_pool``) until told to stop::

    NATS_URL=nats://10.0.0.5:4222 python examples/worker_daemon.py [MODULE:FACTORY]

The factory takes a :class:`natsbus.Bus` and returns a :class:`natsbus.WorkerPool`.

Environment: ``NATS_URL`` (and ``NATS_USER``, ``NATS_PASSWORD``,
``NATS_TOKEN``, ``NATS_NKEY``, ``NATS_CREDS``, ``NATS_CONTEXT``), ``WORKER_DRAIN_TIMEOUT``
(seconds, default 30), ``WORKER_CONNECT_TIMEOUT`` (seconds to find a
server at start, default 5), ``LOG_LEVEL`` (default INFO).

Signals
-------

* **SIGTERM** (what ``systemctl stop`` and a rolling deploy send) or
  **SIGINT** (Ctrl-C) *drains*: the subscriptions are drained, so the
  server stops sending here and other instances in the queue group take the
  new requests; every request already admitted runs to its end and gets
  its reply; then the connection closes and the process exits 0. No
  accepted request is lost. Give systemd's ``TimeoutStopSec`` more than the
  drain timeout, or it SIGKILLs a slow drain.
* A **second** SIGTERM/SIGINT during the drain stops at once: exit code
  128 + the signal (143 for SIGTERM). Requests still running are
  abandoned; their callers get a timeout.
* SIGKILL cannot be caught: in-flight requests are lost and their callers
  time out. Callers should retry idempotent work.

Exit codes: 0 stopped cleanly; 69 no NATS server reachable (systemd
restarts it); 78 bad configuration or factory (systemd should not restart:
``RestartPreventExitStatus=78``); 143/130 stopped by a second signal.

With ``Type=notify`` it tells systemd when it is serving (``READY=1``),
through ``$NOTIFY_SOCKET``, without any extra dependency.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from typing import Callable, List, Optional

from natsbus import Bus, ConfigError, ConnectError, NatsConfig, WorkerPool

logger = logging.getLogger("worker_daemon")

EX_UNAVAILABLE = 69
EX_CONFIG = 78


def sd_notify(state: str) -> None:
    """Send ``state`` (e.g. ``READY=1``) to systemd when it runs us with ``Type=notify``."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def load_factory(path: str) -> Callable[[Bus], WorkerPool]:
    """Import ``module:attribute``."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"expected MODULE:FACTORY, got {path!r}")
    try:
        factory: Callable[[Bus], WorkerPool] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {path}: {exc}") from exc
    return factory


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",  # journald adds the pid and time
    )
    try:
        factory = load_factory(args[0] if args else "natsbus.demo:build_pool")
        drain_timeout = float(os.environ.get("WORKER_DRAIN_TIMEOUT", "30"))
        config = NatsConfig.from_env(
            name=f"worker-daemon@{socket.gethostname()}",
            connect_timeout=float(os.environ.get("WORKER_CONNECT_TIMEOUT", "5")),
        )
    except (ConfigError, ValueError) as exc:
        logger.error("bad configuration: %s", exc)
        return EX_CONFIG
    try:
        bus = Bus(config)
    except ConnectError as exc:
        logger.error("%s", exc)
        return EX_UNAVAILABLE
    with bus:
        pool = factory(bus)
        pool.start()
        sd_notify(f"READY=1\nSTATUS=serving {', '.join(pool.subjects)}")
        pool.run(drain_timeout=drain_timeout)  # SIGTERM/SIGINT drain; a second one exits 128+signum
    logger.info("stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
