"""A bare Transport on its own loop thread, for tests of the transport itself.

A :class:`~natsbus.Bus` always takes the path this nats-py allows; these
helpers build the transport directly, on the path the test asks for.
"""

from __future__ import annotations

import contextlib
from typing import Any, Collection, Iterator, List

from natsbus import NatsConfig
from natsbus._transport import Transport
from natsbus._transport.portal import Portal


@contextlib.contextmanager
def running_transport(url: str, *, fast_path: bool, **config: Any) -> Iterator[Transport]:
    """A connected Transport on ``fast_path`` (or not); closed, and its loop stopped, after."""
    portal = Portal(name="natsbus-test-loop")
    portal.start()
    try:
        transport = Transport(NatsConfig(servers=url, **config), portal, fast_path=fast_path)
        portal.call(transport.connect, timeout=10.0)
        try:
            yield transport
        finally:
            if not portal._stopped:
                portal.call(transport.close, timeout=10.0)
                if not transport._nc.is_closed:  # closed by mark_closed: close() had nothing to do
                    portal.call(transport._nc.close, timeout=10.0)
    finally:
        portal.stop()


class Echo:
    """A subscription handler answering each request with its body, upper-cased (loop thread)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def __call__(self, subject: str, reply: str, data: bytes, headers: Any) -> None:
        self.transport.publish(reply, data.upper())


class PublicOnly:
    """Stands in for a nats-py object: records each use of a private attribute, refusing those not allowed."""

    def __init__(self, target: Any, name: str, touched: List[str], allowed: Collection[str] = ()) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_touched", touched)
        object.__setattr__(self, "_allowed", allowed)

    def __getattr__(self, attr: str) -> Any:
        self._check(attr)
        return getattr(self._target, attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        self._check(attr)
        setattr(self._target, attr, value)

    def _check(self, attr: str) -> None:
        if attr.startswith("_"):
            name = f"{self._name}.{attr}"
            self._touched.append(name)
            if name not in self._allowed:
                raise AttributeError(f"{name} is a nats-py internal")
