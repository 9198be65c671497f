"""The background event-loop thread and the blocking hand-off into it.

A :class:`Portal` owns one daemon thread running one asyncio loop. Blocking
code hands work to it in two ways:

* :meth:`Portal.call` runs a coroutine and waits for its result. It costs a
  task and a cross-thread future, so it is for rare work (connect,
  subscribe, drain, close).
* :class:`Doorbell` is the hot path: producers on any thread append to a
  deque and ring; the loop is woken at most once per batch however many
  producers rang, and drains the whole deque in one go.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Generic, Optional, Set, TypeVar, TypeVarTuple

from ..errors import BusClosedError, LifecycleError, LoopThreadError

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Item = TypeVar("Item")


class Portal:
    """One background thread running an asyncio event loop.

    Args:
        name: The thread's name (shows in thread dumps and logs).
    """

    def __init__(self, name: str = "natsbus-loop") -> None:
        self._name = name
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ident: Optional[int] = None
        self._stopped = False
        # Futures of call()s in flight; whatever is left when the loop ends
        # fails with BusClosedError instead of leaving its caller waiting.
        self._calls: Set[concurrent.futures.Future[Any]] = set()
        self._calls_lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (only valid between start and stop)."""
        if self._loop is None:
            raise LifecycleError("the portal is not started")
        return self._loop

    def start(self) -> None:
        """Start the thread; return once its loop is running."""
        if self._thread is not None:
            raise LifecycleError("the portal is already started")
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._ident = threading.get_ident()
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                _cancel_all(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                with self._calls_lock:
                    self._stopped = True
                    left, self._calls = self._calls, set()
                for future in left:
                    if not future.done():
                        future.set_exception(BusClosedError("the natsbus event loop stopped"))

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()

    def in_loop_thread(self) -> bool:
        """Whether the caller runs on this portal's loop thread."""
        return threading.get_ident() == self._ident

    def check_caller(self, what: str) -> None:
        """Raise :class:`LoopThreadError` when called on the loop thread.

        A blocking call there would wait for the loop it is blocking.
        """
        if threading.get_ident() == self._ident:
            raise LoopThreadError(
                f"{what} blocks, and was called on natsbus's own event-loop thread, "
                "where it would deadlock; call it from an ordinary thread"
            )

    def call(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts, timeout: Optional[float] = None) -> T:
        """Run ``fn(*args)`` on the loop and wait for its result (as anyio's ``BlockingPortal.call``).

        On timeout the coroutine is cancelled on the loop, so nothing is
        left running, and :class:`TimeoutError` is raised.

        Raises:
            LoopThreadError: called on the loop thread.
            BusClosedError: the portal is stopped.
        """
        self.check_caller("a blocking natsbus call")
        if self._stopped or self._loop is None:
            raise BusClosedError("the natsbus event loop is stopped")

        async def runner() -> T:
            return await fn(*args)

        with self._calls_lock:
            if self._stopped:
                raise BusClosedError("the natsbus event loop is stopped")
            try:
                future = asyncio.run_coroutine_threadsafe(runner(), self._loop)
            except RuntimeError:  # the loop closed meanwhile
                raise BusClosedError("the natsbus event loop is stopped") from None
            self._calls.add(future)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the operation did not finish within {timeout}s") from None
        except concurrent.futures.CancelledError:
            raise BusClosedError("the natsbus event loop stopped during the call") from None
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    def start_soon(self, fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> concurrent.futures.Future[T]:
        """Start ``fn(*args)`` on the loop without waiting (as anyio's ``BlockingPortal.start_task_soon``).

        Raises:
            BusClosedError: the portal is stopped.
        """
        if self._stopped or self._loop is None:
            raise BusClosedError("the natsbus event loop is stopped")

        async def runner() -> T:
            return await fn(*args)

        try:
            return asyncio.run_coroutine_threadsafe(runner(), self._loop)
        except RuntimeError:  # the loop closed meanwhile
            raise BusClosedError("the natsbus event loop is stopped") from None

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join the thread.

        Safe to call twice, and from the loop thread (it then only stops
        the loop; the thread ends on its own).
        """
        if self._stopped:
            return
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # closed between the check and the call
                pass
        if threading.get_ident() != self._ident:
            thread.join(timeout)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class Doorbell(Generic[Item]):
    """A thread-safe queue drained on the loop, woken once per batch.

    Producers on any thread call :meth:`put`; the first one to find the
    bell quiet schedules one wake-up; everyone else only appends. The
    consumer coroutine (:meth:`wait`) clears the flag *before* draining,
    so an item appended while it drains is either drained in this pass or
    rings again: no item is ever stranded.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: Deque[Item] = deque()
        self._rung = False
        self._event = asyncio.Event()

    def put(self, item: Item) -> None:
        """Append ``item`` and make sure the loop will look (any thread).

        Raises:
            BusClosedError: the loop is closed (``item`` is not kept: no
                one would ever take it).
        """
        self._items.append(item)
        try:
            if not self._rung:
                self._rung = True
                self._loop.call_soon_threadsafe(self._event.set)
            elif self._loop.is_closed():  # rung before it closed: the bell is never answered
                raise RuntimeError("Event loop is closed")
        except RuntimeError:
            self._rung = False
            self.discard(item)
            raise BusClosedError("the natsbus event loop is stopped") from None

    def discard(self, item: Item) -> bool:
        """Take ``item`` back out if it is still queued (any thread); whether it was."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)

    async def wait(self) -> Deque[Item]:
        """Wait until rung; return the deque to drain with ``popleft``."""
        await self._event.wait()
        self._event.clear()
        self._rung = False
        return self._items
