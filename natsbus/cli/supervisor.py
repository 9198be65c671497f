"""``natsbus worker --processes N``: one supervisor process, N worker processes.

The supervisor imports the target once (a broken module fails fast, exit 2,
as without ``--processes``), then starts N children, each a plain
``python -m natsbus worker TARGET`` (or ``python -m django natsbus_worker``)
with its own Bus, its own pool and so its own NATS micro instance. It never
connects to NATS itself.

Why children are new interpreters and not forks of the supervisor: the
import that checked the target may already have connected a Bus (a pool
bound at import) and started its loop thread, and forking a process with
threads copies their locks in whatever state they were; a reload (SIGHUP,
``--reload``) must import the *new* code, which a fork of a process holding
the old modules cannot; and a child that starts exactly as a single
``natsbus worker`` behaves exactly as one. Starting an interpreter costs a
fraction of a second per child, paid at start-up and on restarts only.

Each child gets one end of a socket pair (``--supervised-fd``, not shown in
``--help``). It writes one JSON line per event: ``{"event": "serving"}``
once its pool has subscribed, ``{"event": "draining"}`` when its drain
starts. When the supervisor's end closes (the supervisor died, even by
SIGKILL) the child drains and exits instead of serving on alone.

The children run in their own process group, so a Ctrl-C in a terminal
reaches the supervisor only, which then drains every child once.

Restart policy (:class:`RestartPolicy`): a child that dies after it served
is started again after a delay that doubles with each crash in a row (0.5 s,
1 s, 2 s ... at most 30 s), back to 0.5 s once a child has served for 10 s. A
child that exits before it serves (its module or factory is broken, no NATS
server) ends the supervisor while it starts (the exit status is the child's:
2 usage error, 3 no server), as one ``natsbus worker`` would exit; after
that it is retried with the same backoff, and after 5 such failures in a
row the supervisor drains the others and exits with the worst of them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

import attrs

from .options import EXIT_NOT_DRAINED, EXIT_OK

if TYPE_CHECKING:
    from ..health import Health
    from ..worker import WorkerPool

__all__ = [
    "ChildLink",
    "RestartPolicy",
    "Snapshot",
    "Supervisor",
    "WorkerState",
    "describe_exit",
    "supervisor_liveness",
    "supervisor_readiness",
]

logger = logging.getLogger("natsbus.cli")

#: Seconds between two ``alive`` messages of a child whose event loop answers.
HEARTBEAT_INTERVAL = 1.0

#: Environment variables a child must not see: systemd hears from the supervisor only.
_SUPERVISOR_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def describe_exit(returncode: int) -> str:
    """``exited with 1`` or ``was killed by SIGKILL``: how a child process ended."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with {returncode}"


@attrs.frozen
class RestartPolicy:
    """When a dead child is started again.

    Attributes:
        first_delay: Seconds before the first restart after a crash.
        max_delay: The cap of the doubling delay.
        stable_after: Seconds a child must serve for its next crash to
            count as the first again.
        give_up_after: Start failures in a row (the child exited before it
            served) after which the supervisor stops.
        unresponsive_after: Seconds without an ``alive`` from a serving
            child (its event loop answers every second) after which it is
            killed, and so restarted.
    """

    first_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 10.0
    give_up_after: int = 5
    unresponsive_after: float = 10.0

    def delay(self, crashes: int) -> float:
        """Seconds to wait before restarting after ``crashes`` crashes in a row (1 for the first)."""
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, crashes - 1)))


# -- the child's side -------------------------------------------------------------


class ChildLink:
    """A supervised child's end of its socket to the supervisor.

    Args:
        fd: The file descriptor passed as ``--supervised-fd``.
    """

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name="natsbus-supervisor-link", daemon=True)
        self._watcher.start()

    def send(self, event: str, **fields: Any) -> None:
        """Tell the supervisor ``event`` (a lost supervisor is not an error here)."""
        line = json.dumps({"event": event, **fields}).encode() + b"\n"
        with self._lock:
            try:
                self._sock.sendall(line)
            except OSError as exc:
                logger.debug("cannot tell the supervisor %s: %s", event, exc)

    def serving(self, pool: WorkerPool) -> None:
        """``pool`` has subscribed: say so, with its readiness, and start the heartbeat (:meth:`heartbeat`)."""
        from ..health import pool_readiness

        self.send("serving", ready=pool_readiness(pool).to_json())
        if pool.bus is not None:
            self.heartbeat(pool)

    def heartbeat(self, pool: WorkerPool, interval: float = HEARTBEAT_INTERVAL) -> None:
        """Send ``alive`` with the pool's readiness every ``interval`` seconds while its Bus's loop answers.

        On a daemon thread, from when the pool serves until its Bus closes.
        """
        thread = threading.Thread(
            target=self._beat, args=(pool, interval), name="natsbus-supervisor-heartbeat", daemon=True
        )
        thread.start()

    def _beat(self, pool: WorkerPool, interval: float) -> None:
        from ..health import pool_readiness
        from .systemd import check_loop

        bus = pool.bus
        while bus is not None and not bus.closed:
            try:
                check_loop(bus, interval)  # a round trip through the loop thread
            except Exception as exc:
                if bus.closed:
                    return
                logger.warning("the event loop did not answer within %.1fs (%s)", interval, type(exc).__name__)
            else:
                self.send("alive", ready=pool_readiness(pool).to_json())
            time.sleep(interval)  # the pace of the heartbeat, not a wait for an event

    def draining(self) -> None:
        """The pool's drain starts."""
        self.send("draining")

    def _watch(self) -> None:
        # The supervisor never writes; recv() returns b"" when its end closes:
        # it has died without draining us, so drain as on SIGTERM.
        try:
            while self._sock.recv(4096):
                pass
        except OSError:
            pass
        logger.warning("the supervisor is gone: draining")
        os.kill(os.getpid(), signal.SIGTERM)


# -- the supervisor ---------------------------------------------------------------


@attrs.define(eq=False)
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    sock: socket.socket
    started: float
    serving_since: Optional[float] = None
    draining_since: Optional[float] = None  # it said it drains, or we told it to
    stopped_by_us: bool = False  # we sent it SIGTERM
    alive_at: float = 0.0  # its last heartbeat
    readiness: Optional[Dict[str, Any]] = None  # its pool's readiness, as its last heartbeat said
    buffer: bytes = b""
    returncode: Optional[int] = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        return f"worker {self.slot} (pid {self.pid})"


@attrs.frozen
class WorkerState:
    """One slot's worker process, as the supervisor last saw it.

    Attributes:
        slot: Its number, 0 to N - 1.
        pid: Its process id; None while it waits for a restart.
        state: ``starting``, ``serving``, ``draining``, ``restarting in 0.5s``, ``stopped``.
        alive_at: When (``time.monotonic()``) its event loop last answered; None before it serves.
        readiness: Its pool's readiness (:meth:`natsbus.health.Health.to_json`), as it last reported it.
    """

    slot: int
    pid: Optional[int]
    state: str
    alive_at: Optional[float]
    readiness: Optional[Mapping[str, Any]]


@attrs.frozen
class Snapshot:
    """The supervisor's workers, as of one turn of its loop.

    Attributes:
        at: When (``time.monotonic()``) it was taken.
        stopping: A signal (or a failure) started the drain.
        started: Every worker served once (``READY=1`` was sent).
        workers: Each slot's :class:`WorkerState`.
    """

    at: float
    stopping: bool
    started: bool
    workers: Mapping[int, WorkerState]


#: Seconds without a heartbeat after which a worker process counts as not ready.
STALE_AFTER = 3 * HEARTBEAT_INTERVAL

#: Seconds without a turn of the supervisor's loop after which it counts as not alive.
LOOP_STALE_AFTER = 5.0


def supervisor_readiness(supervisor: Supervisor) -> Health:
    """Ready: not draining, and every worker process serves, answers, and its pool is ready.

    Args:
        supervisor: The supervisor.

    Returns:
        ok, or not with the reason: ``"draining"``, ``"starting"``, or
        ``"worker N: <why>"`` for each worker process not ready (its own
        readiness reason, ``restarting in 0.5s``, ``no heartbeat for 4s``).
        ``checks`` has ``processes``, ``ready`` (how many are) and
        ``workers``: per slot, ``pid``, ``state``, ``ready``, ``reason`` and
        its pool's checks.
    """
    from ..health import Health

    snap = supervisor.snapshot
    now = time.monotonic()
    workers: Dict[str, Any] = {}
    reasons: List[str] = []
    for slot, worker in sorted(snap.workers.items()):
        reason = _worker_not_ready(worker, now)
        entry: Dict[str, Any] = {"pid": worker.pid, "state": worker.state, "ready": not reason, "reason": reason}
        if worker.readiness is not None:
            entry["checks"] = worker.readiness.get("checks", {})
        workers[str(slot)] = entry
        if reason:
            reasons.append(f"worker {slot}: {reason}")
    ready = sum(1 for entry in workers.values() if entry["ready"])
    checks = {"processes": supervisor.processes, "ready": ready, "workers": workers}
    if snap.stopping:
        return Health(False, "draining", checks)
    if not workers:
        return Health(False, "starting", checks)
    if reasons:
        return Health(False, "; ".join(reasons), checks)
    return Health(True, checks=checks)


def _worker_not_ready(worker: WorkerState, now: float) -> str:
    if worker.state != "serving":
        return worker.state
    if worker.alive_at is None or now - worker.alive_at > STALE_AFTER:
        return f"no heartbeat for {now - (worker.alive_at or now):.0f}s"
    if worker.readiness is not None and worker.readiness.get("status") != "ok":
        return str(worker.readiness.get("reason") or "not ready")
    return ""


def supervisor_liveness(supervisor: Supervisor) -> Health:
    """Alive: the supervisor's loop turns (it restarts worker processes that are not alive themselves).

    Args:
        supervisor: The supervisor.

    Returns:
        ok, or not with the reason ``"supervisor loop not turning"``.
        ``checks`` has ``loop`` and, per slot, the worker's ``pid`` and
        seconds since its ``heartbeat`` (None before it serves).
    """
    from ..health import Health

    snap = supervisor.snapshot
    now = time.monotonic()
    age = now - snap.at
    workers = {
        str(slot): {
            "pid": worker.pid,
            "heartbeat": None if worker.alive_at is None else round(now - worker.alive_at, 1),
        }
        for slot, worker in sorted(snap.workers.items())
    }
    if age > LOOP_STALE_AFTER:
        return Health(False, "supervisor loop not turning", {"loop": f"last turn {age:.0f}s ago", "workers": workers})
    return Health(True, checks={"loop": "ok", "workers": workers})


def _workers(count: int) -> str:
    return f"{count} worker{'s' if count != 1 else ''}"


def _served_or_exited(child: _Child) -> bool:
    return child.serving_since is not None or child.returncode is not None


def _has_exited(child: _Child) -> bool:
    return child.returncode is not None


class Supervisor:
    """Run N worker processes: restart them, reload them one by one, drain them together.

    Args:
        command: The child's command line, without ``--supervised-fd``.
        processes: How many children serve at once (>= 1).
        drain_timeout: Seconds the children have to drain after a signal.
        env: The children's environment (default: this process's), without
            systemd's variables.
        reload_dirs: Directories to watch: a change to a Python file in
            them replaces the children one by one (``--reload``); None for
            no watching.
        policy: When dead children are started again.
        on_ready: Called once every child serves for the first time.
        on_draining: Called when the drain starts.
        on_tick: Called on every turn of the supervisor's loop, at least
            every ``tick_interval`` seconds (e.g. to pet systemd's watchdog).
        tick_interval: See ``on_tick``.
    """

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        drain_timeout: float,
        env: Optional[Mapping[str, str]] = None,
        reload_dirs: Optional[Sequence[str]] = None,
        policy: RestartPolicy = RestartPolicy(),
        on_ready: Optional[Callable[[], object]] = None,
        on_draining: Optional[Callable[[], object]] = None,
        on_tick: Optional[Callable[[], object]] = None,
        tick_interval: float = 1.0,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.command = list(command)
        self.processes = processes
        self.drain_timeout = drain_timeout
        environ = dict(os.environ if env is None else env)
        for name in _SUPERVISOR_ONLY:
            environ.pop(name, None)
        self.env = environ
        self.reload_dirs = list(reload_dirs) if reload_dirs is not None else None
        self.policy = policy
        self.on_ready = on_ready
        self.on_draining = on_draining
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self._slots: Dict[int, _Child] = {}  # the child counted for each slot
        self._incoming: List[_Child] = []  # replacements not serving yet (reload)
        self._retiring: List[_Child] = []  # replaced children, draining
        self._restart_at: Dict[int, float] = {}
        self._crashes: Dict[int, int] = {}
        self._start_failures: Dict[int, List[int]] = {}
        self._signals: List[int] = []
        self._stop_signal: Optional[int] = None
        self._at_once: Optional[int] = None
        self._at_once_deadline = 0.0
        self._give_up: Optional[int] = None
        self._reload_wanted = False
        self._ready = False
        self._drain_codes: List[int] = []
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._watch_stop = threading.Event()
        self._snapshot = Snapshot(time.monotonic(), False, False, {})

    # -- state, for health checks ----------------------------------------------

    @property
    def ready(self) -> bool:
        """Every slot has a child that serves and is not draining."""
        return len(self._slots) == self.processes and all(
            c.serving_since is not None and c.draining_since is None for c in self._slots.values()
        )

    @property
    def snapshot(self) -> Snapshot:
        """The workers' state as of the supervisor loop's last turn (safe from any thread)."""
        return self._snapshot

    def _take_snapshot(self) -> Snapshot:
        workers: Dict[int, WorkerState] = {}
        now = time.monotonic()
        for slot in range(self.processes):
            child = self._slots.get(slot)
            if child is None:
                at = self._restart_at.get(slot)
                state = f"restarting in {max(0.0, at - now):.1f}s" if at is not None else "stopped"
                workers[slot] = WorkerState(slot, None, state, None, None)
                continue
            if child.draining_since is not None:
                state = "draining"
            elif child.serving_since is not None:
                state = "serving"
            else:
                state = "starting"
            alive = child.alive_at if child.serving_since is not None else None
            workers[slot] = WorkerState(slot, child.pid, state, alive, child.readiness)
        return Snapshot(now, self._stopping(), self._ready, workers)

    # -- running ----------------------------------------------------------------

    def run(self) -> int:
        """Start the children, serve until SIGTERM/SIGINT, drain them; return the exit status.

        Signal handlers are installed before the first child starts. The
        first SIGTERM/SIGINT drains every child within ``drain_timeout``; a
        second one is passed on to the children, which stop at once, and
        ``run()`` returns 128 + that signal. SIGHUP replaces the children
        one at a time.

        Returns:
            0 when every child drained, 1 when one did not; the failing
            child's status when the children could not start (2 usage
            error, 3 no NATS server) or kept failing to start.
        """
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        previous_wakeup = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        watcher = self._start_watcher()
        try:
            return self._run()
        finally:
            self._watch_stop.set()
            for child in self._living():
                child.proc.kill()
                child.proc.wait()
                child.sock.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_wakeup)
            if watcher is not None:
                watcher.join(5.0)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _on_signal(self, signum: int, frame: Any) -> None:
        # No locks and no logging here (see WorkerPool.run); the wakeup fd wakes the loop.
        self._signals.append(signum)

    def _run(self) -> int:
        for slot in range(self.processes):
            self._slots[slot] = self._spawn(slot)
        self._pump_until(lambda: self.ready)
        if self._stopping():
            return self._finish()
        self._ready = True
        logger.info("supervisor: %s serving", _workers(self.processes))
        if self.on_ready is not None:
            self.on_ready()
        while not self._stopping():
            if self._reload_wanted:
                self._reload_wanted = False
                self._replace_all()
            else:
                self._pump(self._next_timeout())
        return self._finish()

    def _stopping(self) -> bool:
        return self._stop_signal is not None or self._give_up is not None

    def _finish(self) -> int:
        if self._stop_signal is not None:
            logger.info(
                "supervisor: signal %d: draining %d worker(s) (send it again to stop at once)",
                self._stop_signal,
                len(self._living()),
            )
        if self.on_draining is not None:
            self.on_draining()
        code = self._drain()
        if self._at_once is not None:
            return 128 + self._at_once
        if self._give_up is not None:
            return max(self._give_up, code)
        return code

    # -- children ---------------------------------------------------------------

    def _spawn(self, slot: int) -> _Child:
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [*self.command, "--supervised-fd", str(theirs.fileno())],
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        child = _Child(slot, proc, mine, time.monotonic())
        self._selector.register(mine, selectors.EVENT_READ, child)
        logger.info("supervisor: started %s", child.describe())
        return child

    def _living(self) -> List[_Child]:
        return [*self._slots.values(), *self._incoming, *self._retiring]

    def _terminate(self, child: _Child) -> None:
        if not child.stopped_by_us and child.returncode is None:
            child.stopped_by_us = True
            child.draining_since = child.draining_since or time.monotonic()
            try:
                child.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    # -- the event loop -------------------------------------------------------------

    def _next_timeout(self) -> float:
        if not self._restart_at:
            return self.tick_interval
        return max(0.0, min(self.tick_interval, min(self._restart_at.values()) - time.monotonic()))

    def _pump_until(self, done: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Handle events until ``done()``, a stop, or ``timeout``; return ``done()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done() and not self._stopping():
            left = self.tick_interval if deadline is None else deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(min(left, self._next_timeout()))
        return done()

    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for something to happen, and handle it."""
        for key, _ in self._selector.select(max(0.0, timeout)):
            if key.data is None:
                try:
                    while self._wake_r.recv(512):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
            else:
                self._read(key.data)
        while self._signals:
            self._handle_signal(self._signals.pop(0))
        now = time.monotonic()
        for child in self._living():
            code = child.proc.poll()
            if code is not None:
                self._exited(child, code)
            elif (
                child.serving_since is not None
                and child.draining_since is None
                and now - child.alive_at > self.policy.unresponsive_after
            ):
                logger.error(
                    "supervisor: %s: its event loop has not answered for %.0fs: killing it",
                    child.describe(),
                    now - child.alive_at,
                )
                child.alive_at = now  # once
                child.proc.kill()
        self._snapshot = self._take_snapshot()
        if self.on_tick is not None:
            self.on_tick()
        for slot, at in sorted(self._restart_at.items()):
            if at <= now and not self._stopping():
                del self._restart_at[slot]
                self._slots[slot] = self._spawn(slot)

    def _handle_signal(self, signum: int) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM):
            if self._stop_signal is None and self._give_up is None:
                self._stop_signal = signum
                self._restart_at.clear()
            elif self._at_once is None:
                self._at_once = signum
                self._at_once_deadline = time.monotonic() + 2.0
                logger.warning("supervisor: second signal: stopping every worker at once (signal %d)", signum)
                for child in self._living():
                    self._terminate(child)
                    try:
                        child.proc.send_signal(signum)  # the child's second signal: it stops at once
                    except ProcessLookupError:
                        pass
        elif signum == signal.SIGHUP and not self._stopping():
            logger.info("supervisor: SIGHUP: replacing the workers one at a time")
            self._reload_wanted = True

    def _read(self, child: _Child) -> None:
        try:
            data = child.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(child.sock)
            return
        child.buffer += data
        *lines, child.buffer = child.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                logger.warning("supervisor: %s sent a line that is not a JSON object", child.describe())
                continue
            event = message.get("event")
            if event in ("serving", "alive"):
                child.alive_at = time.monotonic()
            if isinstance(message.get("ready"), dict):
                child.readiness = message["ready"]
            if event == "serving" and child.serving_since is None:
                child.serving_since = time.monotonic()
                logger.info("supervisor: %s serves", child.describe())
            elif event == "draining" and child.draining_since is None:
                child.draining_since = time.monotonic()

    def _exited(self, child: _Child, code: int) -> None:
        child.returncode = code
        try:
            self._selector.unregister(child.sock)
        except (KeyError, ValueError):
            pass
        child.sock.close()
        served = child.serving_since is not None
        how = describe_exit(code)
        if child in self._retiring:
            self._retiring.remove(child)
            if self._stopping():  # a reload's drain that the final drain overtook
                self._drain_codes.append(self._drain_code(child, code))
            # A reload's drain that abandoned requests is logged (by the child and
            # here), not held against the final drain's exit status.
            log = logger.info if code == EXIT_OK else logger.warning
            log("supervisor: replaced %s %s", child.describe(), how)
            return
        if child in self._incoming:
            self._incoming.remove(child)
            if self._stopping():
                self._drain_codes.append(self._drain_code(child, code))
            else:
                logger.error("supervisor: the new %s %s before it served", child.describe(), how)
            return
        if self._slots.get(child.slot) is child:
            del self._slots[child.slot]
        if self._stopping() or child.stopped_by_us:
            self._drain_codes.append(self._drain_code(child, code))
            logger.info("supervisor: %s %s", child.describe(), how)
            return
        if not served:
            self._failed_to_start(child, code, how)
        else:
            self._crashed(child, how)

    def _drain_code(self, child: _Child, code: int) -> int:
        if code == -signal.SIGTERM and child.serving_since is None and child.stopped_by_us:
            return EXIT_OK  # stopped before it served: it held nothing
        return code if code >= 0 else EXIT_NOT_DRAINED

    def _failed_to_start(self, child: _Child, code: int, how: str) -> None:
        status = code if code > 0 else EXIT_NOT_DRAINED
        if not self._ready:  # at start-up, as one `natsbus worker`: its status is ours
            logger.error("supervisor: %s %s before it served: stopping", child.describe(), how)
            self._give_up = status
            return
        failures = self._start_failures.setdefault(child.slot, [])
        failures.append(status)
        if len(failures) >= self.policy.give_up_after:
            logger.error(
                "supervisor: %s %s before it served, %d times in a row: giving up",
                child.describe(),
                how,
                len(failures),
            )
            self._give_up = max(failures)
            return
        self._schedule_restart(child, f"{how} before it served")

    def _crashed(self, child: _Child, how: str) -> None:
        assert child.serving_since is not None
        self._start_failures.pop(child.slot, None)
        if time.monotonic() - child.serving_since >= self.policy.stable_after:
            self._crashes[child.slot] = 0
        self._schedule_restart(child, how)

    def _schedule_restart(self, child: _Child, how: str) -> None:
        crashes = self._crashes.get(child.slot, 0) + 1
        self._crashes[child.slot] = crashes
        delay = self.policy.delay(crashes)
        logger.warning("supervisor: %s %s; restarting it in %.1fs", child.describe(), how, delay)
        self._restart_at[child.slot] = time.monotonic() + delay

    # -- reload (SIGHUP, --reload) ----------------------------------------------

    def _replace_all(self) -> None:
        """Replace each slot's child: start the new one, wait until it serves, drain the old one."""
        for slot in range(self.processes):
            if self._stopping():
                return
            if slot not in self._slots:
                continue  # dead, waiting for its restart, which runs the new code anyway
            new = self._spawn(slot)
            self._incoming.append(new)
            self._pump_until(functools.partial(_served_or_exited, new))
            if self._stopping():
                return  # the drain takes the new child too
            if new.returncode is not None:
                logger.error("supervisor: reload stopped; the running workers keep serving the code they run")
                return
            self._incoming.remove(new)
            old = self._slots.get(slot)
            self._slots[slot] = new
            self._restart_at.pop(slot, None)
            if old is not None:
                self._retiring.append(old)
                self._terminate(old)
                self._pump_until(functools.partial(_has_exited, old))
        if not self._stopping():
            logger.info("supervisor: reload done: %s serving", _workers(len(self._slots)))

    def _start_watcher(self) -> Optional[threading.Thread]:
        if self.reload_dirs is None:
            return None
        from watchfiles import PythonFilter, watch

        dirs = self.reload_dirs

        def run() -> None:
            for changes in watch(*dirs, watch_filter=PythonFilter(), stop_event=self._watch_stop, rust_timeout=500):
                paths = sorted({os.path.relpath(path) for _, path in changes})
                logger.info("supervisor: changed: %s: replacing the workers", ", ".join(paths[:5]))
                self._reload_wanted = True
                try:
                    self._wake_w.send(b"r")
                except OSError:
                    return

        thread = threading.Thread(target=run, name="natsbus-reload", daemon=True)
        thread.start()
        return thread

    # -- draining ---------------------------------------------------------------

    def _drain(self) -> int:
        """SIGTERM every child, wait for all within the drain timeout; the worst status."""
        self._restart_at.clear()
        for child in self._living():
            self._terminate(child)
        # Each child drains within drain_timeout, then closes its Bus; the
        # margin is for that and for the interpreter to exit.
        deadline = time.monotonic() + self.drain_timeout + 5.0
        while self._living():
            left = deadline - time.monotonic()
            if self._at_once is not None:  # they were told to stop at once: a short grace, then SIGKILL
                left = min(left, self._at_once_deadline - time.monotonic())
            if left <= 0:
                break
            self._pump(min(left, self.tick_interval))
        for child in self._living():
            logger.warning("supervisor: %s did not stop in time: killing it", child.describe())
            child.proc.kill()
            child.proc.wait()
            self._exited(child, child.proc.returncode)
        codes = self._drain_codes or [EXIT_OK]
        worst = max(codes)
        logger.info(
            "supervisor: stopped: %d worker(s) %s",
            len(self._drain_codes),
            "drained" if worst == EXIT_OK else f"stopped, the worst with status {worst}",
        )
        return worst
