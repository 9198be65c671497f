"""The embedded nats-server."""

from __future__ import annotations

import socket

import pytest

from natsbus import Bus, ConfigError, NatsServer
from natsbus.server import ServerError


def test_server_starts_on_a_free_loopback_port_and_restarts_on_it() -> None:
    with NatsServer() as server:
        port = server.port
        assert server.url == f"nats://127.0.0.1:{port}"
        with Bus(server.url) as bus:
            assert bus.is_connected
        server.stop()
        assert not server.running
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port or 0), timeout=0.5):
            pass
        server.start()
        assert server.port == port
        with Bus(server.url) as bus:
            assert bus.is_connected


def test_server_failure_reports_the_log() -> None:
    server = NatsServer(args=["--no-such-flag"])
    with pytest.raises(ServerError, match="exited with code"):
        server.start()
    server.close()


def test_bad_port_is_rejected() -> None:
    with pytest.raises(ConfigError):
        NatsServer(port=0)


def test_monitoring_port_is_served_and_kept_across_restarts() -> None:
    with NatsServer(jetstream=False, monitor=True) as server:
        monitor_port = server.monitor_port
        assert server.monitor_json("varz")["port"] == server.port
        server.stop()
        server.start()
        assert server.monitor_port == monitor_port
        assert server.monitor_json("/varz")["port"] == server.port


def test_monitor_url_needs_monitoring() -> None:
    with NatsServer(jetstream=False) as server, pytest.raises(ServerError, match="monitor=True"):
        server.monitor_url  # noqa: B018
