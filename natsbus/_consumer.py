"""The worker side of durable commands: pulling them onto a WorkerPool's threads."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Protocol, Set, TypeVar, TypeVarTuple

from ._records import ReplyPair, done_record, read_record, record_key
from ._resources import ConsumerSpec
from ._transport.jetstream import JetStream, JsMessage, Puller, jetstream_for
from .durable.config import (
    API_TIMEOUT,
    COMMAND_ID_HEADER,
    DELIVERIES_HEADER,
    ERROR_CODE_TEXT_HEADER,
    ERROR_TEXT_HEADER,
    FAILED_AT_HEADER,
    ORIGINAL_SEQ_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    SERVICE_HEADER,
    DurableConfig,
    check_no_overlap,
)
from .envelope import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    error_reply,
    header_value,
    peek_id,
    utc_timestamp,
)
from .errors import (
    NatsBusError,
    RegistrationError,
    error_class_for_code,
)
from .messages import Kind

if TYPE_CHECKING:
    from .bus import Bus
    from .dispatch import Dispatcher, HandlerRoute

logger = logging.getLogger("natsbus.durable")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class WorkerThreads(Protocol):
    """What the durable consumer needs of the pool whose threads run its commands.

    :class:`~natsbus.WorkerPool` is one; the consumer knows it only as this.
    The loop thread reserves idle threads before it pulls (so it never
    pulls more than can start at once), gives back those that got nothing,
    and hands each command pulled to a reserved thread.
    """

    @property
    def dispatcher(self) -> Dispatcher:
        """Its handlers (decode, run, encode)."""

    @property
    def max_workers(self) -> int:
        """Its threads."""

    @property
    def queue_group(self) -> str:
        """Its queue group: the consumer's default name."""

    @property
    def service_id(self) -> str:
        """Its service's name."""

    def reserve_workers(self, wanted: int) -> int:
        """Reserve up to ``wanted`` idle threads; return how many (0 once it stops)."""

    def release_workers(self, count: int) -> None:
        """Give back ``count`` reserved threads that got no command."""

    def run_reserved(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a reserved thread (it answers for itself: acks, naks, stores)."""


class DurableConsumer:
    """Pulls a service's durable commands onto its WorkerPool's threads.

    Built by ``WorkerPool(durable=...)``; not used directly. The pull loop
    and the heartbeat run on the Bus's loop; each command runs on a worker
    thread the loop reserved before pulling it.

    The pool stops it in two steps (see ``WorkerPool.stop``): :meth:`stop`
    before the pool drains (no more pulls), :meth:`abandon_unstarted` after
    (commands pulled and not started are handed back). The heartbeat keeps
    a command that still runs alive until it is answered, then ends.

    Attributes:
        executed: Commands whose handler ran and whose reply was stored.
        skipped: Deliveries acknowledged without running (reply already stored).
        retried: Failures sent back for a later delivery.
        dead_lettered: Commands moved to the dead-letter stream.
    """

    def __init__(self, pool: WorkerThreads, config: DurableConfig) -> None:
        self.pool = pool
        self.config = config
        self.name = config.consumer or ""
        self._routes: Dict[str, HandlerRoute] = {}
        self._bus: Optional[Bus] = None
        self._js: Optional[JetStream] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._beat_wake: Optional[asyncio.Event] = None
        # The loop keeps only weak references to tasks: these keep them running.
        self._pull_task: Optional[asyncio.Task[None]] = None
        self._beat_task: Optional[asyncio.Task[None]] = None
        self._stopping = False
        self._lock = threading.Lock()
        self._delivered: Set[JsMessage] = set()  # handed to the pool and not answered yet: the heartbeat's
        self._queued: Set[JsMessage] = set()  # handed to the pool and not started yet
        self.filter_subjects: List[str] = []
        self.executed = 0
        self.skipped = 0
        self.retried = 0
        self.dead_lettered = 0

    # -- lifecycle (the pool's thread) -------------------------------------------

    def prepare(self, bus: Bus) -> None:
        """Create or check the streams, the results bucket and the consumer.

        Raises:
            RegistrationError: the pool has no command handler.
            IncompatibleSettingsError: a resource exists with other settings.
            ConfigError: a stream captures request-reply subjects.
            JetStreamError: JetStream is off or failed.
        """
        routes = [route for route in self.pool.dispatcher.routes if route.kind is Kind.COMMAND]
        if not routes:
            raise RegistrationError("durable commands need at least one command handler in the pool")
        self._routes = {self.config.command_subject(route.name): route for route in routes}
        # The queue group may be set after construction (natsbus worker --queue-group).
        self.name = self.config.consumer or re.sub(r"[^A-Za-z0-9_-]", "_", self.pool.queue_group)
        self._bus = bus
        self._js = js = jetstream_for(bus)
        spec = ConsumerSpec(
            self.config.stream,
            self.name,
            tuple(sorted(self._routes)),
            float(self.config.ack_wait),
            self.config.max_ack_pending,
            f"natsbus: durable commands of {self.pool.service_id}",
        )

        async def ensure() -> List[str]:
            await check_no_overlap(js)
            await self.config.commands_stream().ensure(js)
            await self.config.dead_letters_stream().ensure(js)
            await self.config.results().ensure(js)
            return await spec.ensure(js)

        self.filter_subjects = bus.run(ensure, API_TIMEOUT * 6)

    def start(self) -> None:
        """Start pulling (after :meth:`prepare`)."""
        assert self._bus is not None and self._js is not None
        js = self._js

        async def start() -> None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._wake = asyncio.Event()
            self._beat_wake = asyncio.Event()
            puller = await js.pull(self.config.stream, self.name)
            self._pull_task = loop.create_task(self._pull_loop(puller))
            self._beat_task = loop.create_task(self._heartbeat())

        self._bus.run(start, API_TIMEOUT * 2)
        logger.info(
            "%s consuming durable commands from stream %s as %s: %s",
            self.pool.service_id,
            self.config.stream,
            self.name,
            ", ".join(sorted(self._routes)),
        )

    def stop(self, timeout: float) -> None:
        """Stop pulling, within ``timeout`` seconds (the pool's thread, before it drains).

        A pull in progress may end by itself (it lasts ``fetch_timeout`` at
        most); whatever it brings now is handed back (nak) for another
        instance. Past ``timeout`` the pull is cancelled and its
        subscription closed, so the server sends it nothing more. Commands
        already handed to the pool still run (the pool drains them).
        """
        self._stopping = True
        bus, task = self._bus, self._pull_task
        if bus is None or task is None or bus.closed:
            return

        async def wait() -> None:
            if self._wake is not None:
                self._wake.set()
            try:
                await asyncio.wait_for(task, timeout)  # cancelled past the timeout
            except TimeoutError:
                logger.debug("%s: the pull in progress was cancelled", self.pool.service_id)

        try:
            bus.run(wait, timeout + API_TIMEOUT)
        except Exception as exc:  # stopping anyway
            logger.warning("stopping the durable consumer of %s: %s", self.pool.service_id, exc)

    def abandon_unstarted(self) -> int:
        """Hand back (nak) the commands pulled and not started yet (the pool's thread, after it drained).

        JetStream delivers them again at once, to this service's other
        instances or its next start; a thread that gets to one of them
        later skips it. The heartbeat ends once no command runs.

        Returns:
            How many were handed back.
        """
        with self._lock:
            unstarted = list(self._queued)
            self._queued.clear()
            self._delivered.difference_update(unstarted)
            idle = not self._delivered
        bus = self._bus
        if bus is None or bus.closed:
            return len(unstarted)

        async def hand_back() -> None:
            for msg in unstarted:
                await self._quiet(msg.nak())
            beat = self._beat_task
            if self._beat_wake is not None:
                self._beat_wake.set()
            if idle and beat is not None:
                try:  # nothing runs: the heartbeat ends now
                    await asyncio.wait_for(asyncio.shield(beat), 1.0)
                except TimeoutError:
                    pass

        try:
            bus.run(hand_back, API_TIMEOUT + 2.0)
        except Exception as exc:  # redelivered after ack_wait anyway
            logger.warning("handing back the unstarted durable commands of %s: %s", self.pool.service_id, exc)
        if unstarted:
            logger.info(
                "%s: %d durable command(s) pulled and not started were handed back",
                self.pool.service_id,
                len(unstarted),
            )
        return len(unstarted)

    # -- the loop thread ----------------------------------------------------------

    async def _pull_loop(self, puller: Puller) -> None:
        pool = self.pool
        failures = 0
        try:
            while not self._stopping:
                wanted = pool.reserve_workers(pool.max_workers)
                if not wanted:
                    assert self._wake is not None
                    self._wake.clear()
                    try:  # woken when a durable command finishes; the timeout covers request-reply work
                        await asyncio.wait_for(self._wake.wait(), 0.05)
                    except TimeoutError:
                        pass
                    continue
                try:
                    msgs = await puller.fetch(wanted, self.config.fetch_timeout)
                except asyncio.CancelledError:
                    pool.release_workers(wanted)
                    raise
                except NatsBusError as exc:
                    pool.release_workers(wanted)
                    failures += 1
                    log = logger.warning if failures == 1 else logger.debug
                    log("%s: pulling durable commands failed: %s; trying again", pool.service_id, exc)
                    await asyncio.sleep(min(5.0, 0.1 * 2**failures))  # back off while JetStream is unwell
                    continue
                failures = 0
                if len(msgs) < wanted:
                    pool.release_workers(wanted - len(msgs))
                for i, msg in enumerate(msgs):
                    if self._stopping:  # pulled as the pool stops: another instance may take them now
                        pool.release_workers(len(msgs) - i)
                        for unwanted in msgs[i:]:
                            await self._quiet(unwanted.nak())
                        break
                    with self._lock:
                        self._delivered.add(msg)
                        self._queued.add(msg)
                    route = self._routes.get(msg.subject)
                    pool.run_reserved(partial(self._job, msg, route))
        finally:
            await puller.close()

    async def _heartbeat(self) -> None:
        """Keep the commands handed to the pool alive (in progress) until answered; end once stopped and idle."""
        loop = asyncio.get_running_loop()
        wake = self._beat_wake
        assert wake is not None
        period = max(0.05, self.config.ack_wait / 3)
        next_beat = loop.time() + period
        while True:
            try:  # woken early only when stopping, to end as soon as nothing runs
                await asyncio.wait_for(wake.wait(), max(0.0, next_beat - loop.time()))
            except TimeoutError:
                pass
            wake.clear()
            with self._lock:
                running = list(self._delivered)
            if self._stopping and not running and self._pull_task is not None and self._pull_task.done():
                return
            if loop.time() >= next_beat:
                for msg in running:
                    await self._quiet(msg.in_progress())
                next_beat = loop.time() + period

    def _answered(self) -> None:
        """Loop thread: a command was answered; pull again, and end the heartbeat if that was the last."""
        if self._wake is not None:
            self._wake.set()
        if self._stopping and self._beat_wake is not None:
            self._beat_wake.set()

    @staticmethod
    async def _quiet(coro: Any) -> None:
        try:
            await coro
        except NatsBusError as exc:
            logger.debug("answering a durable command delivery failed: %s", exc)

    # -- a worker thread ------------------------------------------------------------

    def _run(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        assert self._bus is not None
        return self._bus.live_transport().run(fn, *args, timeout=API_TIMEOUT + 1.0)

    def _job(self, msg: JsMessage, route: Optional[HandlerRoute]) -> None:
        with self._lock:
            if msg not in self._queued:  # handed back by abandon_unstarted(): not ours to run
                return
            self._queued.discard(msg)
        try:
            self._handle(msg, route)
        except BaseException as exc:  # the delivery must be answered whatever happened
            logger.error("durable command %s#%d: %s", msg.subject, msg.stream_seq, exc, exc_info=True)
            try:
                self._run(msg.nak, self.config.delay(msg.num_delivered))
            except Exception as nak_exc:  # redelivered after ack_wait anyway
                logger.debug("nak failed: %s", nak_exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: never swallowed; the pool stops (WorkerPool.run)
        finally:
            with self._lock:
                self._delivered.discard(msg)
            loop = self._loop
            if loop is not None:
                try:
                    loop.call_soon_threadsafe(self._answered)
                except RuntimeError:  # the loop is closed
                    pass

    def _handle(self, msg: JsMessage, route: Optional[HandlerRoute]) -> None:
        cfg, js = self.config, self._js
        assert js is not None and self._bus is not None
        message_type = msg.subject[len(cfg.subject_prefix) + 1 :]
        command_id = peek_id(msg.data)[0]
        if not command_id:
            self._dead_letter(msg, message_type, "", "Invalid request format: no command_id in the envelope", "400")
            return
        if msg.num_delivered > cfg.max_deliveries:
            self._dead_letter(
                msg,
                message_type,
                command_id,
                f"delivered {msg.num_delivered} times without an answer; its worker may have died on it each time",
                "500",
            )
            return
        key = record_key(command_id)
        entry = self._run(js.kv_get, cfg.results_bucket, key)
        record = read_record(entry.value, command_id) if entry is not None else None
        if record is not None and record.get("state") == "done":
            logger.info(
                "%s %s: delivered again (delivery %d) after its reply was stored; acknowledged, not run",
                msg.subject,
                command_id,
                msg.num_delivered,
            )
            self._run(msg.ack)
            with self._lock:
                self.skipped += 1
            return
        if route is None:
            error, code = f"No handler available for {msg.subject} in {self.pool.service_id}", "404"
            reply: Optional[ReplyPair] = None
        else:
            reply = self.pool.dispatcher.dispatch(route, msg.data, self._bus.max_payload, headers=msg.headers)
            headers = reply[1] or {}
            code = headers.get(ERROR_CODE_HEADER, "")
            if not code or _is_answer(code):
                record_bytes = done_record(command_id, msg.subject, reply)
                self._run(js.kv_put, cfg.results_bucket, key, record_bytes)
                self._run(msg.ack)
                with self._lock:
                    self.executed += 1
                return
            error = headers.get(ERROR_HEADER, "") or "handler failed"
        if msg.num_delivered >= cfg.max_deliveries:
            self._dead_letter(msg, message_type, command_id, error, code, reply)
            return
        delay = cfg.delay(msg.num_delivered)
        logger.info(
            "%s %s failed on delivery %d of %d: %s; retrying in %gs",
            msg.subject,
            command_id,
            msg.num_delivered,
            cfg.max_deliveries,
            error,
            delay,
        )
        self._run(msg.nak, delay)
        with self._lock:
            self.retried += 1

    def _dead_letter(
        self,
        msg: JsMessage,
        message_type: str,
        command_id: str,
        error: str,
        code: str,
        reply: Optional[ReplyPair] = None,
    ) -> None:
        cfg, js = self.config, self._js
        assert js is not None
        headers = {
            COMMAND_ID_HEADER: command_id,
            ERROR_TEXT_HEADER: header_value(error),
            ERROR_CODE_TEXT_HEADER: code or "500",
            DELIVERIES_HEADER: str(msg.num_delivered),
            SERVICE_HEADER: self.pool.service_id,
            FAILED_AT_HEADER: utc_timestamp(),
            ORIGINAL_SUBJECT_HEADER: msg.subject,
            ORIGINAL_SEQ_HEADER: str(msg.stream_seq),
        }
        subject = cfg.dead_letter_subject(message_type or "unknown")
        # The same delivery dead-lettered twice (a crash before the ack) is stored once.
        msg_id = f"{cfg.stream}.{msg.stream_seq}"
        self._run(partial(js.publish, subject, msg.data, headers, msg_id=msg_id, stream=cfg.dead_letter_stream))
        if command_id:
            if reply is None:
                failure = error_class_for_code(code or "500")(error)
                reply = error_reply(Kind.COMMAND, command_id, failure)
            record_bytes = done_record(command_id, msg.subject, reply)
            self._run(js.kv_put, cfg.results_bucket, record_key(command_id), record_bytes)
        self._run(msg.ack)
        with self._lock:
            self.dead_lettered += 1
        logger.error(
            "%s %s dead-lettered to %s after %d deliveries: %s",
            msg.subject,
            command_id or "(no id)",
            subject,
            msg.num_delivered,
            error,
        )


def _is_answer(code: str) -> bool:
    """Whether an error code is the handler's final answer (4xx), not a failure to retry."""
    try:
        return int(code) < 500
    except ValueError:
        return False


# -- operations: pending, dead letters, replay ----------------------------------------------
