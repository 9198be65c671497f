"""A request's reply, waited for by one thread: the hand-off from the loop to a caller."""

from __future__ import annotations

from _thread import allocate_lock
from threading import TIMEOUT_MAX
from typing import Callable, Dict, NamedTuple, Optional

from ..errors import RequestTimeoutError
from .wire import Headers


class Reply(NamedTuple):
    """A reply message: its body and headers."""

    data: bytes
    headers: Headers


class GatheredReply(NamedTuple):
    """One of several replies to a request sent to many (see :meth:`Transport.gather`).

    Attributes:
        data: The body.
        headers: The headers, or ``None``.
        rtt: Seconds from sending the request to receiving this reply.
    """

    data: bytes
    headers: Headers
    rtt: float


class WaitTimeout(Exception):
    """:meth:`PendingReply.result` gave up waiting (the request is abandoned)."""


class PendingReply:
    """One request's reply, waited for by a thread.

    Completed once, by whoever takes its token out of the transport's map:
    the loop with the reply, or a closing Bus with an error. Waiting is one
    lock acquire; completing is one release.

    Attributes:
        subject: Where the request was sent.
        notify: Called with it once it completes (on the loop or a closing thread): it only hands off.
        token: Its key in the reply map.
    """

    __slots__ = ("_done", "_error", "_lock", "_reply", "_waiters", "notify", "subject", "token")

    def __init__(
        self,
        subject: str,
        token: bytes,
        waiters: Dict[bytes, PendingReply],
        notify: Optional[Callable[[PendingReply], None]] = None,
    ) -> None:
        self.subject = subject
        self.token = token
        self._waiters = waiters
        self.notify = notify
        self._lock = allocate_lock()
        self._lock.acquire()
        self._done = False
        self._reply: Optional[Reply] = None
        self._error: Optional[BaseException] = None

    def settle(self, reply: Optional[Reply], error: Optional[BaseException]) -> None:
        self._reply = reply
        self._error = error
        self._done = True
        self._lock.release()
        if self.notify is not None:
            self.notify(self)

    def done(self) -> bool:
        """Whether the reply (or an error) is in."""
        return self._done

    def result(self, timeout: Optional[float] = None) -> Reply:
        """Wait for the reply; ``None`` waits forever.

        Raises:
            WaitTimeout: nothing came in time; the request is abandoned.
            NatsBusError: the request failed (no handler, Bus closed, ...).
        """
        if not self._done:
            if not self._lock.acquire(True, -1 if timeout is None else min(max(0.0, timeout), TIMEOUT_MAX)):
                if self._waiters.pop(self.token, None) is not None:
                    raise WaitTimeout()
                # The loop took the token a moment ago: the reply is being handed over.
                self._lock.acquire()
            self._lock.release()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply

    def abandon(self) -> bool:
        """Stop waiting: forget the token, so a late reply is dropped.

        Returns:
            False when the reply was already being handed over (it will
            complete), True when the request is now abandoned.
        """
        return self._waiters.pop(self.token, None) is not None


def await_reply(pending: PendingReply, timeout: Optional[float], text: str, total: Optional[float] = None) -> Reply:
    """Wait for ``pending``'s reply; on timeout raise RequestTimeoutError.

    Args:
        text: The timeout error's text, with ``{ms}`` for the milliseconds
            (``"Command request timeout after {ms}ms"``).
        total: The call's whole timeout, for the error, when ``timeout``
            is what is left of it (the call waited for a reconnect first).
    """
    try:
        return pending.result(timeout)
    except WaitTimeout:
        shown = timeout if total is None else total
        ms = round((shown or 0) * 1000)
        raise RequestTimeoutError(text.format(ms=ms), subject=pending.subject, timeout=shown) from None
