"""The nats-py (and asyncio) internals natsbus relies on, and the one probe that checks them.

Every private attribute of a nats-py or asyncio object the transport uses
is listed in ``nats_client.INTERNALS``; ``missing_internals()`` checks
them all. These tests take each one away in turn and expect the probe to
name it, check that nothing the transport touches escapes the list, and
that the public-API path really touches none of them.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Set

import pytest
from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from transport_support import Echo, PublicOnly, running_transport

from natsbus import Bus, ConfigError, JetStreamError, NatsConfig, NatsServer
from natsbus._transport import Transport, nats_client
from natsbus._transport.jetstream import JetStream, jetstream_for
from natsbus._transport.portal import Portal

pytestmark = pytest.mark.timeout(60)

TRANSPORT_DIR = Path(nats_client.__file__).resolve().parent
PACKAGE_DIR = TRANSPORT_DIR.parent


def _without_attribute(monkeypatch: pytest.MonkeyPatch, cls_name: str, attr: str) -> None:
    """Replace ``nats_client.<cls_name>`` by a subclass whose fresh instances lack ``attr``."""
    base = getattr(nats_client, cls_name)

    class Lacking(base):
        def __init__(self) -> None:
            super().__init__()
            delattr(self, attr)

    monkeypatch.setattr(nats_client, cls_name, Lacking)


def _stand_in(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Replace ``nats_client.<name>`` by an unrelated class that sets nothing up."""
    monkeypatch.setattr(nats_client, name, type(name, (), {"__init__": lambda self: None}))


async def _process_msg_with_one_more_parameter(
    self: Any, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any, extra: Any
) -> None:
    pass  # pragma: no cover - never called


async def _connect_renamed(self: Any, url: Any, buffer_size: int, connect_timeout: int) -> None:
    pass  # pragma: no cover - never called


async def _send_unsubscribe_without_sid(self: Any) -> None:
    pass  # pragma: no cover - never called


#: How to take each internal away: one entry per name in nats_client.INTERNALS.
BREAK: Dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "Client._process_msg": lambda mp: mp.setattr(Client, "_process_msg", _process_msg_with_one_more_parameter),
    "Client._send_unsubscribe": lambda mp: mp.setattr(Client, "_send_unsubscribe", _send_unsubscribe_without_sid),
    "Client._transport": lambda mp: _without_attribute(mp, "Client", "_transport"),
    "Client._pending": lambda mp: _without_attribute(mp, "Client", "_pending"),
    "Client._pending_data_size": lambda mp: _without_attribute(mp, "Client", "_pending_data_size"),
    "Client._max_pending_size": lambda mp: _without_attribute(mp, "Client", "_max_pending_size"),
    "Client._flush_queue": lambda mp: _without_attribute(mp, "Client", "_flush_queue"),
    "Subscription._id": lambda mp: _stand_in(mp, "Subscription"),
    "TcpTransport.connect": lambda mp: mp.setattr(TcpTransport, "connect", _connect_renamed),
    "TcpTransport._io_writer": lambda mp: _without_attribute(mp, "TcpTransport", "_io_writer"),
    "TcpTransport._bare_io_writer": lambda mp: _without_attribute(mp, "TcpTransport", "_bare_io_writer"),
    "asyncio _SelectorSocketTransport._sock": lambda mp: mp.setattr(nats_client, "SOCKET_TRANSPORT", None),
    "asyncio TransportSocket._sock": lambda mp: _stand_in(mp, "TransportSocket"),
}


def test_this_nats_py_has_every_internal_natsbus_uses() -> None:
    assert nats_client.missing_internals() == []


def test_every_listed_internal_has_a_way_to_take_it_away_here() -> None:
    assert sorted(BREAK) == sorted(internal.name for internal in nats_client.INTERNALS)


@pytest.mark.parametrize("name", sorted(BREAK))
def test_the_probe_names_a_missing_internal(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    BREAK[name](monkeypatch)
    assert nats_client.missing_internals() == [name]
    (internal,) = [i for i in nats_client.INTERNALS if i.name == name]
    assert nats_client.fast_path_supported() is (nats_client.FAST not in internal.needed_for)


def test_a_missing_internal_the_drain_needs_turns_the_fast_path_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # drain_subscriptions sends its UNSUBs with Client._send_unsubscribe:
    # without it the fast path must not be chosen at all.
    BREAK["Client._send_unsubscribe"](monkeypatch)
    BREAK["Client._pending_data_size"](monkeypatch)
    assert nats_client.missing_internals(nats_client.FAST) == ["Client._send_unsubscribe", "Client._pending_data_size"]
    assert nats_client.fast_path_supported() is False


def test_asking_for_the_fast_path_without_its_internals_fails_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    BREAK["Client._pending_data_size"](monkeypatch)
    with pytest.raises(ConfigError, match=r"Client\._pending_data_size"):
        Transport(NatsConfig(), Portal(), fast_path=True)


def test_a_nats_py_lacking_a_fast_path_internal_gets_the_public_path() -> None:
    # FAST_PATH is settled when natsbus is imported: take Client._flush_queue
    # away before that, in a fresh interpreter.
    code = (
        "import nats.aio.client as c\n"
        "init = c.Client.__init__\n"
        "def lacking(self, *args, **kwargs):\n"
        "    init(self, *args, **kwargs)\n"
        "    del self._flush_queue\n"
        "c.Client.__init__ = lacking\n"
        "import natsbus._transport as t\n"
        "print(t.FAST_PATH, t.nats_client.missing_internals())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NATSBUS_FAST_PATH"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False ['Client._flush_queue']"


def _private_names_used_on_objects() -> Set[str]:
    used: Set[str] = set()
    for path in TRANSPORT_DIR.glob("*.py"):
        text = path.read_text()
        used |= set(re.findall(r"\.(_[A-Za-z]\w*)", text))
        used |= set(re.findall(r"[(,]\s*\"(_[A-Za-z]\w*)\"", text))  # getattr(obj, "_name", ...)
    return used


def _natsbus_own_private_names() -> Set[str]:
    """Private names natsbus itself defines (attributes it sets, methods, modules)."""
    own: Set[str] = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text()
        own |= set(re.findall(r"\bself\.(_\w+)\s*(?::[^=\n]+)?=(?!=)", text))
        own |= set(re.findall(r"\bdef (_\w+)", text))
        own |= set(re.findall(r"^\s*(_\w+)\s*(?::[^=\n]+)?=(?!=)", text, re.M))
        own.add(path.stem)
        own |= {part for part in path.relative_to(PACKAGE_DIR).parts if part.startswith("_")}
    return own


def test_every_private_name_the_transport_uses_is_its_own_or_probed() -> None:
    probed = {part for internal in nats_client.INTERNALS for part in re.findall(r"_\w+", internal.name)}
    unprobed = _private_names_used_on_objects() - _natsbus_own_private_names() - probed
    assert unprobed == set(), "nats-py / asyncio internals used but not in nats_client.INTERNALS"


#: The only internals the public-API path uses (when this nats-py has them).
DRAIN_INTERNALS = ["Client._send_unsubscribe", "Subscription._id"]


def _exercise_the_public_api_path(transport: Transport, touched: List[str], allowed: List[str]) -> None:
    """Connect, subscribe, request, gather, ask JetStream, drain, unsubscribe, close: all guarded."""
    # From here on every natsbus access to the client, a subscription or
    # the JetStream context goes through a guard recording privates.
    transport._nc = PublicOnly(transport._nc, "Client", touched, allowed)
    run = transport.portal.call
    sub = run(lambda: transport.subscribe("internals.echo", "q", Echo(transport)))
    run(transport.flush)
    assert transport.request("internals.echo", b"hello").result(5).data == b"HELLO"
    transport.publish("internals.nobody", b"fire and forget")
    replies = run(lambda: transport.gather("internals.echo", b"all", timeout=5, quiet=0.5, max_count=1))
    assert [r.data for r in replies] == [b"ALL"]
    js = run(lambda: _guarded_jetstream(transport, touched))
    assert run(lambda: js.streams_capturing("internals.nothing.here")) == []
    run(lambda: transport.drain_subscriptions([PublicOnly(sub, "Subscription", touched, allowed)]))
    other = run(lambda: transport.subscribe("internals.other", "", Echo(transport)))
    run(lambda: transport.unsubscribe([PublicOnly(other, "Subscription", touched, allowed)]))


def test_the_public_api_path_uses_no_nats_py_internal_but_the_ordered_drains(nats_url: str) -> None:
    touched: List[str] = []
    assert sorted(i.name for i in nats_client.INTERNALS if nats_client.DRAIN in i.needed_for) == sorted(DRAIN_INTERNALS)
    with running_transport(nats_url, fast_path=False) as transport:
        _exercise_the_public_api_path(transport, touched, DRAIN_INTERNALS)
    assert sorted(set(touched)) == sorted(DRAIN_INTERNALS)


def test_without_the_drain_internals_the_public_api_path_uses_none_and_says_so(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    BREAK["Subscription._id"](monkeypatch)
    touched: List[str] = []
    with caplog.at_level(logging.WARNING, "natsbus.transport"), running_transport(nats_url, fast_path=False) as t:
        _exercise_the_public_api_path(t, touched, [])
    assert touched == []
    assert "this nats-py lacks Subscription._id, which the ordered drain uses" in caplog.text
    assert "this nats-py lacks Subscription._id, which the fast path uses" in caplog.text


async def _guarded_jetstream(transport: Transport, touched: List[str]) -> JetStream:
    js = JetStream(transport)
    js._js = PublicOnly(js._js, "JetStreamContext", touched)
    return js


def test_streams_capturing_without_jetstream_says_it_is_not_available() -> None:
    # streams_capturing asks the JetStream API with a plain request now
    # (nats-py's JetStreamContext._api_request was an internal): its errors
    # must read as those of every other JetStream call.
    with NatsServer(jetstream=False) as server, Bus(server.url) as bus:
        js = jetstream_for(bus)
        with pytest.raises(JetStreamError) as info:
            bus.run(lambda: js.streams_capturing("commands.>"))
    assert str(info.value) == "list the streams capturing commands.>: JetStream is not available on this server (503)"
    assert info.value.code == 503
