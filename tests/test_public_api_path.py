"""The transport's public-API path, used when nats-py lacks the internals the fast path needs.

natsbus hands messages straight from nats-py's parser to waiting threads
and writes frames itself when this nats-py allows it (``FAST_PATH``);
otherwise it uses only nats-py's public API. Both paths must behave alike.

The core client tests run on the public-API path in their own tox env,
which sets ``NATSBUS_FAST_PATH=0`` for the whole run::

    tox -e public-api
    # the same by hand:
    NATSBUS_FAST_PATH=0 pytest tests/test_bus.py tests/test_worker.py \\
        tests/test_batch.py tests/test_policies.py tests/test_worker_daemon.py

Here, in the normal run, only: that the variable selects the public-API
path, and one real request/reply round trip on it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from nats.aio.client import Client
from transport_support import Echo, running_transport

from natsbus._transport import nats_client
from natsbus._transport.core import Transport


def test_fast_path_is_used_with_this_nats_py() -> None:
    assert nats_client.FAST_PATH is (os.environ.get("NATSBUS_FAST_PATH", "1") != "0")
    assert nats_client.fast_path_supported() is True


def test_natsbus_fast_path_0_selects_the_public_api_path() -> None:
    env = dict(os.environ, NATSBUS_FAST_PATH="0")
    check = subprocess.run(
        [sys.executable, "-c", "import natsbus._transport as t; print(t.FAST_PATH)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "False"


def test_a_request_gets_its_reply_on_the_public_api_path(nats_url: str) -> None:
    with running_transport(nats_url, fast_path=False) as transport:
        assert isinstance(transport, Transport) and transport.fast_path is False
        assert type(transport._nc) is Client  # nats-py's own client, not natsbus's subclass
        transport.portal.call(lambda: transport.subscribe("public.echo", "", Echo(transport)))
        transport.portal.call(transport.flush)
        reply = transport.request("public.echo", b"round trip").result(5)
    assert reply.data == b"ROUND TRIP"
