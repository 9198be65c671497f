"""The spec's user-service as a daemon (its code is in ``natsbus/demo.py``).

Serves ``commands.CreateUserCommand`` and ``queries.GetUserQuery`` as
service ``user-service`` against ``NATS_URL`` (default
nats://127.0.0.1:4222) until SIGTERM or Ctrl-C::

    python examples/user_service.py

Any client that knows only the wire spec can then create and query users,
including the duplicate-email and bad-input errors.
"""

from __future__ import annotations

import logging

from natsbus import Bus
from natsbus.demo import build_pool


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with Bus() as bus:
        build_pool(bus).run()


if __name__ == "__main__":
    main()
