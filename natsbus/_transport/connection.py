"""The seam between the connection and the features built on it.

Discovery, durable commands and the idempotency stores need "the live
connection", not the :class:`~natsbus.Bus` with everything else it does.
They take a :class:`Connection`: one method wide, as httpx's
``BaseTransport.handle_request`` is. A :class:`~natsbus.Bus` is one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .core import Transport

__all__ = ["Connection"]


class Connection(Protocol):
    """Anything that hands out the transport to use now (a :class:`~natsbus.Bus`)."""

    def live_transport(self) -> Transport:
        """The connected transport of this process.

        Raises:
            BusClosedError: the connection is closed.
        """
        ...
