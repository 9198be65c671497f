"""The worker pool's work queue, its work items and its watchdog.

:class:`Jobs` hands admitted requests from the loop thread to the pool's
worker threads, waking one parked worker per needed hand-off;
:class:`Watchdog` answers for handlers that overrun their time limit.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Tuple

from ._transport import RawHeaders
from .dispatch import HandlerRoute

__all__ = ["STOP", "Jobs", "Watchdog", "Work"]

logger = logging.getLogger("natsbus.worker")

# Work items are frozen to the type checker (assigning a field is a mypy
# error) and a plain slotted class at run time. They are built on the loop
# thread for every request: attrs' frozen __init__ stores each field through
# object.__setattr__ (a bound method and an argument tuple per field), about
# 1.5 us where the 5-tuple they replace took 0.06 us; the plain slotted class
# takes 0.3 us and, like the tuple, one allocation.
if TYPE_CHECKING:
    from attrs import frozen as _work_item_class
else:
    from attrs import define as _work_item_class


@_work_item_class(slots=True, weakref_slot=False, eq=False)
class Work:
    """One item of the pool's work queue: a request to answer, or a durable command to run.

    Attributes:
        route: The handler of a request (``None`` for a durable command).
        reply: Where the request's reply goes.
        data: The request body.
        headers: Its headers, as the transport got them (parsed on the worker thread).
        received: ``time.monotonic()`` when it was admitted.
        job: A job that answers for itself: a durable command (it runs, stores
            and acknowledges the command; see :meth:`WorkerPool.run_reserved`)
            or a scatter-gather request (its reply carries the instance's
            headers); ``None`` for an ordinary request.
    """

    route: Optional[HandlerRoute]
    reply: str
    data: bytes
    headers: RawHeaders
    received: float
    job: Optional[Callable[[], None]] = None

    def describe(self) -> str:
        """What it is, for logs."""
        return self.route.subject if self.route is not None else "a durable command"


class Jobs:
    """The pool's work queue: idle workers park, each on a lock of its own.

    At most one parked worker is being woken at a time: :meth:`put` wakes
    one only when no wake-up is already under way, and a woken worker that
    leaves items behind wakes the next. A burst of N requests thus costs
    as many wake-ups as workers it needs, one after another, and a worker
    already running takes queued items without any.
    ``queue.SimpleQueue`` coalesces wake-ups the same way, but with several
    consumers blocked on its one lock, every taker also wakes another
    idle worker for nothing (to block again at once): two needless context
    switches per request when the pool is idle.
    """

    def __init__(self) -> None:
        #: The queued items (a worker that finds it empty writes its reply directly).
        self.items: Deque[Any] = collections.deque()
        self._parked: List[Any] = []  # locks parked workers wait on (held); the last parked wakes first
        self._waking = False
        self._mutex = threading.Lock()

    def put(self, item: Any) -> None:
        """Queue ``item`` (any thread; never blocks)."""
        self.items.append(item)
        # Always under the mutex: a worker checks for items and parks under
        # it, so looking at _parked outside could miss one that is parking.
        self._wake()

    def _wake(self) -> None:
        with self._mutex:
            if not self._parked or self._waking:
                return
            waiter = self._parked.pop()
            self._waking = True
        waiter.release()

    def get(self, park: Any) -> Any:
        """Take the next item, parking on ``park`` (an acquired lock) while there is none."""
        items = self.items
        while True:
            try:
                item = items.popleft()
            except IndexError:
                pass
            else:
                if items and self._parked and not self._waking:
                    self._wake()  # more work than this thread: wake the next
                return item
            with self._mutex:
                if items:  # queued between the look and the mutex
                    continue
                self._parked.append(park)
            park.acquire()  # released by _wake()
            self._waking = False


STOP = None  # the sentinel that ends a worker thread


class Watchdog:
    """Answers for handlers that overrun their time limit.

    Each timed request has a one-shot claim on its reply. Whoever claims
    first answers: the worker thread with the handler's reply, or this
    thread with a 504 once the limit passes. The overrunning handler keeps
    its thread (Python cannot kill a thread); its late result is dropped.

    Args:
        name: The pool's name (for the thread's name).
        on_overrun: Called as ``on_overrun(route, reply, data)`` on the
            watchdog's thread for a request whose handler overran its limit.
    """

    def __init__(self, name: str, on_overrun: Callable[[HandlerRoute, str, bytes], None]) -> None:
        self._on_overrun = on_overrun
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"natsbus-watchdog-{name}", daemon=True)
        self._thread.start()

    def watch(self, deadline: float, claim: threading.Lock, route: HandlerRoute, reply: str, data: bytes) -> None:
        """Answer for this request at ``deadline`` unless its worker takes ``claim`` first."""
        self._queue.put((deadline, claim, route, reply, data))

    def stop(self, timeout: float) -> None:
        """End the thread (within ``timeout`` seconds)."""
        self._queue.put(STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        heap: List[Tuple[float, int, Any]] = []
        seq = itertools.count()
        while True:
            wait = None if not heap else max(0.0, heap[0][0] - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = ()
            if item is STOP:
                return
            if item:
                heapq.heappush(heap, (item[0], next(seq), item))
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, claim, route, reply, data = heapq.heappop(heap)[2]
                if claim.acquire(blocking=False):
                    try:
                        self._on_overrun(route, reply, data)
                    except Exception:  # the watchdog must outlive any one failure
                        logger.exception("answering an overrun on %s failed", route.subject)
