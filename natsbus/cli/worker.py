"""A WorkerPool as a daemon: what ``natsbus worker`` and ``manage.py natsbus_worker`` share.

The same options (:func:`add_pool_options`), the same checks, the same
exit codes (:mod:`natsbus.cli.options`): a target that does not import is a
usage error naming the file and line; a flag that would be ignored is
refused; :meth:`WorkerPool.run` installs the signal handlers before the
pool subscribes, so a SIGTERM at any moment drains.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import logging
import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from .options import (
    EXIT_CONNECT,
    EXIT_NOT_DRAINED,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_options,
    exit_code,
    non_negative_float,
    non_negative_int,
    open_bus,
    positive_int,
)

if TYPE_CHECKING:
    from ..health import Health, HealthServer
    from ..worker import WorkerPool
    from .supervisor import ChildLink, Supervisor

__all__ = [
    "Refused",
    "add_pool_options",
    "apply_pool_options",
    "call_factory",
    "connection_flags",
    "health_address",
    "import_failure",
    "load",
    "pool_argv",
    "port_number",
    "process_count",
    "refuse_connection_flags",
    "run_worker",
    "serve",
    "supervise",
    "supervised",
    "supervisor_link",
]

logger = logging.getLogger("natsbus.cli")

#: The ``--log-level`` format, as ``natsbus worker`` logs.
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

#: The same in a supervised child (``--processes``): with its process id.
CHILD_LOG_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


class Refused(Exception):
    """The daemon cannot run: the text says why; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def add_pool_options(parser: argparse.ArgumentParser) -> None:
    """The options of both worker commands (not the target)."""
    add_connection_options(parser)
    parser.add_argument("--max-workers", type=positive_int, help="handler threads")
    parser.add_argument("--max-pending", type=non_negative_int, help="admitted requests that may wait for a thread")
    parser.add_argument("--queue-group", help="queue group (default: the service id)")
    parser.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=30.0,
        help="seconds to finish the admitted requests after a signal (default 30)",
    )
    parser.add_argument("--log-level", default=argparse.SUPPRESS, help="logging level (default INFO)")
    parser.add_argument(
        "--processes",
        type=process_count,
        default=1,
        metavar="N",
        help="worker processes, each with its own connection and pool, under one supervisor that "
        "restarts them; 'auto' for one per usable CPU (default 1: this process serves)",
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="development: replace the worker processes when a Python file changes "
        "(needs the 'reload' extra: pip install 'natsbus[reload]')",
    )
    parser.add_argument(
        "--reload-dir",
        action="append",
        metavar="DIR",
        help="with --reload: a directory to watch instead of the current one (repeatable)",
    )
    # A supervised child's end of its socket to the supervisor (natsbus.cli.supervisor).
    parser.add_argument("--supervised-fd", type=non_negative_int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--health-port",
        type=port_number,
        help="serve GET /livez and /readyz on this port (0: a free one), from before the pool subscribes "
        "until it has drained (docs/health.rst)",
    )
    parser.add_argument("--health-host", help="the address for --health-port (default 127.0.0.1)")


def port_number(value: str) -> int:
    """An argparse ``type=``: a TCP port, 0 to 65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return port


def process_count(value: str) -> int:
    """An argparse ``type=``: ``--processes``, an integer >= 1 or ``auto`` (the CPUs this process may use)."""
    if value == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # no sched_getaffinity (macOS)
            return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor auto") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or auto, got {value}")
    return count


# -- loading the target ------------------------------------------------------


def load(path: str) -> Any:
    """The object ``MODULE:ATTR`` (or ``MODULE.ATTR``) names, the current directory importable.

    Raises:
        Refused: it does not import (the text names the file and line), or
            has no such attribute.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise Refused(f"cannot load {path}: not MODULE:ATTR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: the project's own modules import
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # SyntaxError, a missing dependency, anything the module raises
        logger.debug("importing %s failed", module_name, exc_info=True)
        code = EXIT_CONNECT if exit_code(exc) == EXIT_CONNECT else EXIT_USAGE
        raise Refused(f"cannot load {path}: {import_failure(exc, module_name)}", code) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise Refused(f"cannot load {path}: {module_name} has no attribute {attr!r}") from None
    return obj


def import_failure(exc: BaseException, module_name: str) -> str:
    """Why importing ``module_name`` failed, with the file and line.

    A syntax error: where the parser stopped. A module that is not there
    but that ``module_name`` needs: the file (and line) importing it.
    Anything else: the line of the innermost module being imported when
    it was raised (the module's own line, or the one calling the code that
    raised), and the error.
    """
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    modules = [frame for frame in traceback.extract_tb(exc.__traceback__) if frame.name == "<module>"]
    where = f"{modules[-1].filename}:{modules[-1].lineno}" if modules else ""
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        if module_name == exc.name or module_name.startswith(exc.name + "."):
            return str(exc)  # the target itself is not there
        if where:
            return f"{where} imports {exc.name!r}: {error}"
    return f"{where}: {error}" if where else error


def call_factory(factory: Any, bus: Any, label: str) -> WorkerPool:
    """``factory(bus)`` (or ``factory()`` when ``bus`` is None): the pool it returns.

    Raises:
        Refused: it raised, or did not return a WorkerPool.
    """
    from ..worker import WorkerPool

    try:
        made = factory() if bus is None else factory(bus)
    except Exception as exc:
        logger.debug("building the pool failed", exc_info=True)
        code = EXIT_CONNECT if exit_code(exc) == EXIT_CONNECT else EXIT_USAGE
        raise Refused(f"cannot build a WorkerPool from {label}: {exc}", code) from None
    if not isinstance(made, WorkerPool):
        raise Refused(f"{label} is neither a WorkerPool nor a factory returning one")
    return made


def _wants_bus(factory: Any) -> bool:
    try:
        return len(inspect.signature(factory).parameters) >= 1
    except (TypeError, ValueError):
        return False


# -- options that apply, options that would not ------------------------------


def connection_flags(args: argparse.Namespace) -> List[str]:
    """The connection options given (``--server``, ``--connect-timeout``)."""
    given = []
    if getattr(args, "server", None):
        given.append("--server")
    if getattr(args, "connect_timeout", None) is not None:
        given.append("--connect-timeout")
    return given


def refuse_connection_flags(args: argparse.Namespace, why: str) -> None:
    """Refuse ``--server`` / ``--connect-timeout`` when the pool brings its own connection.

    Raises:
        Refused: one of them was given.
    """
    flags = connection_flags(args)
    if flags:
        raise Refused(f"{' and '.join(flags)} would be ignored: {why}; drop {'them' if len(flags) > 1 else 'it'}")


def apply_pool_options(pool: WorkerPool, args: argparse.Namespace) -> None:
    """Set ``--max-workers``, ``--max-pending``, ``--queue-group`` on a pool not started yet.

    Raises:
        Refused: the pool is already serving, so they would be ignored.
    """
    given = {
        name: getattr(args, name)
        for name in ("max_workers", "max_pending", "queue_group")
        if getattr(args, name, None) is not None
    }
    if not given:
        return
    if pool.running:
        flags = " and ".join("--" + name.replace("_", "-") for name in given)
        raise Refused(f"{flags} would be ignored: the WorkerPool {pool.service_id} already serves")
    for name, value in given.items():
        setattr(pool, name, value)
    if "queue_group" in given:
        pool.micro.queue_group = given["queue_group"]  # what $SRV.INFO reports


# -- serving -----------------------------------------------------------------


def health_address(args: argparse.Namespace) -> Optional[Tuple[str, int]]:
    """``(--health-host, --health-port)``, or None without ``--health-port``.

    Raises:
        Refused: ``--health-host`` without ``--health-port`` (it would be ignored).
    """
    port = getattr(args, "health_port", None)
    host = getattr(args, "health_host", None)
    if port is None:
        if host is not None:
            raise Refused("--health-host would be ignored without --health-port; add --health-port PORT")
        return None
    return (host or "127.0.0.1", port)


class _Probes:
    """The worker's ``/livez`` and ``/readyz``: the pool's checks, and 503 "draining" from the drain's start."""

    def __init__(self, pool: WorkerPool, address: Tuple[str, int]) -> None:
        from ..health import HealthServer

        self.pool = pool
        self._draining = threading.Event()
        self.server = HealthServer(self.livez, self.readyz, host=address[0], port=address[1])

    def livez(self) -> Health:
        from ..health import pool_liveness

        return pool_liveness(self.pool)

    def readyz(self) -> Health:
        from ..health import Health, pool_readiness

        health = pool_readiness(self.pool)
        if self._draining.is_set() and health.reason != "stopped":  # from the signal on, before stop() begins
            return Health(False, "draining", {**health.checks, "pool": "draining"})
        return health

    def draining(self) -> None:
        self._draining.set()


def serve(
    pool: WorkerPool,
    drain_timeout: float,
    label: str,
    *,
    link: Optional[ChildLink] = None,
    health: Optional[Tuple[str, int]] = None,
) -> int:
    """Serve until SIGTERM/SIGINT, drain; return the exit status (0 drained, 1 not).

    The signal handlers are in place before the pool subscribes; a second
    signal raises ``SystemExit(128 + signal)``. Under systemd
    (``NOTIFY_SOCKET``) it sends ``READY=1`` once the pool serves,
    ``STOPPING=1`` when the drain starts, and ``WATCHDOG=1`` every half
    ``WATCHDOG_USEC`` while the Bus's event loop answers
    (:mod:`natsbus.cli.systemd`). Under a supervisor (``link``) it tells
    the supervisor instead.

    With ``health`` (``(host, port)``) it serves ``/livez`` and ``/readyz``
    (:mod:`natsbus.health`) from before the pool subscribes until the
    drain is over: ``/readyz`` answers 503 "not serving yet", then 200,
    then 503 "draining" as soon as the drain starts.

    Raises:
        Refused: the pool could not start (nothing was served), or the
            health port cannot be listened on (usage error 2, before subscribing).
    """
    from ..errors import ConfigError, NatsBusError
    from .systemd import Notifier

    probes = _Probes(pool, health) if health is not None else None
    if probes is not None:
        try:
            probes.server.start()
        except ConfigError as exc:
            raise Refused(str(exc)) from None
    systemd = Notifier(pool)  # READY=1, STOPPING=1, WATCHDOG=1 under a Type=notify unit

    def serving() -> None:
        systemd.serving()
        if link is not None:
            link.serving(pool)  # and heartbeats: the supervisor restarts a child whose loop stops answering

    def draining() -> None:
        if probes is not None:
            probes.draining()
        systemd.draining()
        if link is not None:
            link.draining()

    try:
        drained = pool.run(drain_timeout=drain_timeout, on_serving=serving, on_draining=draining)  # signals, start
    except NatsBusError as exc:
        if not pool.served:  # start() failed: it never served
            code = EXIT_CONNECT if exit_code(exc) == EXIT_CONNECT else EXIT_USAGE
            raise Refused(f"cannot start {label}: {exc}", code) from None
        logger.error("worker pool %s failed: %s", pool.service_id, exc)
        return EXIT_NOT_DRAINED
    finally:
        systemd.close()
        if probes is not None:
            probes.server.close()  # after the drain: /readyz said "draining" throughout
    return EXIT_OK if drained else EXIT_NOT_DRAINED


def run_worker(args: argparse.Namespace, err: TextIO) -> int:
    """``natsbus worker TARGET``: load, connect, serve; return the exit status."""
    try:
        return _run_worker(args)
    except Refused as exc:
        err.write(f"natsbus worker: {exc}\n")
        return exc.code


def _run_worker(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, ConnectError
    from ..worker import WorkerPool

    if supervised(args):
        return supervise(
            args,
            [sys.executable, "-m", "natsbus", "worker", args.target, *pool_argv(args)],
            args.target,
        )
    link = supervisor_link(args)
    label = args.target
    health_address(args)  # its usage errors before anything connects
    target = load(label)
    if not isinstance(target, WorkerPool):
        if not callable(target):
            raise Refused(f"{label} is neither a WorkerPool nor a factory returning one")
        if not _wants_bus(target):
            target = call_factory(target, None, label)  # it may bind a Bus of its own
    if isinstance(target, WorkerPool) and target.bus is not None:
        refuse_connection_flags(args, f"{label} is a WorkerPool already bound to a Bus")
        return _serve(target, args, label, link)
    try:
        bus = open_bus(args)
    except (ConfigError, ConnectError) as exc:
        raise Refused(str(exc), exit_code(exc)) from None
    try:
        pool = target.bind(bus) if isinstance(target, WorkerPool) else call_factory(target, bus, label)
        if pool.bus is not bus:
            refuse_connection_flags(args, f"{label} returned a WorkerPool bound to another Bus")
        return _serve(pool, args, label, link)
    finally:
        bus.close()


def _serve(pool: WorkerPool, args: argparse.Namespace, label: str, link: Optional[ChildLink]) -> int:
    apply_pool_options(pool, args)
    return serve(pool, args.drain_timeout, label, link=link, health=health_address(args))


def supervisor_link(args: argparse.Namespace) -> Optional[ChildLink]:
    """The socket to the supervisor of this child process, None when it runs alone."""
    fd = getattr(args, "supervised_fd", None)
    if fd is None:
        return None
    from .supervisor import ChildLink

    # Its log lines interleave with its siblings': say whose they are.
    for handler in [*logging.getLogger().handlers, *logging.getLogger("natsbus").handlers]:
        handler.setFormatter(logging.Formatter(CHILD_LOG_FORMAT))
    return ChildLink(fd)


# -- supervising worker processes (--processes, --reload) -----------------------


def supervised(args: argparse.Namespace) -> bool:
    """Whether the options ask for a supervisor: ``--processes`` > 1 or ``--reload``, in a process not supervised.

    Raises:
        Refused: ``--reload-dir`` without ``--reload`` (it would be ignored).
    """
    if getattr(args, "reload_dir", None) and not getattr(args, "reload", False):
        raise Refused("--reload-dir would be ignored without --reload; add --reload")
    if getattr(args, "supervised_fd", None) is not None:
        return False
    return bool(getattr(args, "processes", 1) > 1 or getattr(args, "reload", False))


def pool_argv(args: argparse.Namespace) -> List[str]:
    """The options a supervised child gets: the connection, the pool options, ``--drain-timeout``, ``--log-level``."""
    argv: List[str] = []
    names = ("server", "connect_timeout", "max_workers", "max_pending", "queue_group", "drain_timeout", "log_level")
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


def supervise(
    args: argparse.Namespace,
    command: Sequence[str],
    label: str,
    env: Optional[Mapping[str, str]] = None,
    loaded: Any = None,
) -> int:
    """Run ``args.processes`` children of ``command`` under a supervisor; return the exit status.

    The target is imported here first (``loaded``, when the caller did),
    so that a module that does not import fails at once, with the message
    and exit status of a single ``natsbus worker``; nothing connects here.

    With ``--health-port`` the supervisor answers ``/livez`` and ``/readyz``
    from its children's state (:func:`~natsbus.cli.supervisor.supervisor_readiness`).
    Call it on the main thread: the supervisor installs signal handlers.

    Raises:
        Refused: the target does not import or is not a pool or factory;
            ``--reload`` without the ``reload`` extra; connection options
            for a pool bound at import; ``--health-host`` without
            ``--health-port``, or a health address that cannot be listened on.
    """
    from ..worker import WorkerPool
    from .supervisor import Supervisor
    from .systemd import SupervisorNotifier

    health = health_address(args)  # its usage errors before anything is imported
    reload_dirs: Optional[List[str]] = None
    if getattr(args, "reload", False):
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            raise Refused(
                "--reload needs watchfiles, which the 'reload' extra installs: pip install 'natsbus[reload]'"
            ) from None
        reload_dirs = [os.path.abspath(d) for d in (args.reload_dir or [os.getcwd()])]
        for directory in reload_dirs:
            if not os.path.isdir(directory):
                raise Refused(f"--reload-dir {directory}: not a directory")
    target = load(label) if loaded is None else loaded
    if not isinstance(target, WorkerPool) and not callable(target):
        raise Refused(f"{label} is neither a WorkerPool nor a factory returning one")
    if isinstance(target, WorkerPool) and target.bus is not None:
        refuse_connection_flags(args, f"{label} is a WorkerPool already bound to a Bus")
    processes = getattr(args, "processes", 1)
    systemd = SupervisorNotifier()  # READY=1 once all serve, STOPPING=1, WATCHDOG=1 while the loop runs
    supervisor = Supervisor(
        command,
        processes,
        drain_timeout=args.drain_timeout,
        env=env,
        reload_dirs=reload_dirs,
        on_ready=functools.partial(systemd.ready, processes),
        on_draining=systemd.draining,
        on_tick=systemd.tick,
        tick_interval=min(1.0, systemd.interval or 1.0),
    )
    probes = _supervisor_probes(supervisor, health) if health is not None else None
    try:
        return supervisor.run()
    finally:
        if probes is not None:
            probes.close()  # after the drain: /readyz said "draining" throughout


def _supervisor_probes(supervisor: Supervisor, address: Tuple[str, int]) -> HealthServer:
    """``/livez`` and ``/readyz`` of the supervisor, from its children's state, started.

    Raises:
        Refused: the address cannot be listened on.
    """
    from ..errors import ConfigError
    from ..health import HealthServer
    from .supervisor import supervisor_liveness, supervisor_readiness

    server = HealthServer(
        functools.partial(supervisor_liveness, supervisor),
        functools.partial(supervisor_readiness, supervisor),
        host=address[0],
        port=address[1],
    )
    try:
        return server.start()
    except ConfigError as exc:
        raise Refused(str(exc)) from None


def child_env(extra_path: Sequence[str] = (), environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of supervised children: this one, with ``extra_path`` first on ``PYTHONPATH``."""
    env = dict(os.environ if environ is None else environ)
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([*extra_path, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env
