"""Auth and TLS against nats-server configured each way: from NatsConfig and from environment variables."""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import attrs
import nkeys
import pytest
from auth_support import Pki, make_operator, make_pki, new_keypair, public, seed

from natsbus import (
    Bus,
    Command,
    CommandBus,
    ConfigError,
    ConnectError,
    NatsConfig,
    NatsServer,
    NoHandlerError,
    PermissionDeniedError,
    WorkerPool,
)
from natsbus.config import tls_context


@attrs.frozen
class Secret(Command[str]):
    text: str


@attrs.frozen
class Forbidden(Command[str]):
    text: str


@contextlib.contextmanager
def configured_server(directory: Path, config: str) -> Iterator[NatsServer]:
    path = directory / "server.conf"
    path.write_text(config)
    with NatsServer(jetstream=False, args=["--config", str(path)]) as server:
        yield server


def round_trip(worker: NatsConfig, client: NatsConfig) -> str:
    """Serve Secret on one authenticated Bus, send it from another; the answer."""
    with Bus(worker) as serving:
        pool = WorkerPool(serving, service_id="auth", handlers=[_reveal])
        pool.start()
        try:
            with Bus(client) as calling:
                return CommandBus(calling, timeout=5).execute(Secret("hello"))
        finally:
            pool.stop(drain_timeout=5)


def _reveal(cmd: Secret) -> str:
    return cmd.text.upper()


def refused(config: NatsConfig) -> ConnectError:
    """The ConnectError of a Bus the server refuses, without waiting out the connect timeout."""
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        Bus(config)
    assert time.monotonic() - started < config.connect_timeout
    return info.value


def refused_for_authorization(error: ConnectError) -> bool:
    """Whether the text gives the server's reason: authorization violation.

    The server sends that and closes at once, and the connection reset
    that follows must not take the reason's place.
    """
    return "(login refused: authorization violation)" in str(error).lower()


def both_ways(url: str, fields: Dict[str, Any], env: Dict[str, str]) -> None:
    """The same credentials work given as NatsConfig fields and as environment variables."""
    direct = NatsConfig(servers=url, connect_timeout=3, **fields)
    assert round_trip(direct, direct) == "HELLO"
    from_env = NatsConfig.from_env({"NATS_URL": url, **env}, connect_timeout=3)
    for name, value in fields.items():
        got = getattr(from_env, name)
        assert got == value or (isinstance(value, ssl.SSLContext) and isinstance(got, ssl.SSLContext)), name
    assert round_trip(from_env, from_env) == "HELLO"


# -- user/password, token, NKey, creds -----------------------------------------------


def test_user_and_password(tmp_path: Path) -> None:
    with configured_server(tmp_path, 'authorization { user: alice, password: "s3cret" }') as server:
        both_ways(
            server.url, {"user": "alice", "password": "s3cret"}, {"NATS_USER": "alice", "NATS_PASSWORD": "s3cret"}
        )
        error = refused(NatsConfig(servers=server.url, user="alice", password="wrong", connect_timeout=1))
        assert server.url in str(error) and refused_for_authorization(error)


def test_a_hundred_refused_logins_all_name_the_authorization_failure() -> None:
    # nats-py 2.16 raises the server's "Authorization Violation" as a plain
    # nats.errors.Error, and the connection reset that follows used to take
    # its place now and then (11 of 60 tries in the report).
    with NatsServer(jetstream=False, args=["--user", "u", "--pass", "p"]) as server:
        ways = [
            NatsConfig(servers=server.url, user="u", password="wrong"),  # a wrong password
            NatsConfig(servers=server.url),  # no credentials
            NatsConfig(servers=f"nats://u:wrong@127.0.0.1:{server.port}"),  # a wrong password in the URL
        ]
        errors = [refused(ways[i % 3]) for i in range(100)]
    assert [str(e) for e in errors if not refused_for_authorization(e)] == []
    assert (
        str(errors[2])
        == f"could not connect to NATS at nats://u:***@127.0.0.1:{server.port} (login refused: Authorization Violation)"
    )


def test_token(tmp_path: Path) -> None:
    with configured_server(tmp_path, 'authorization { token: "t0ken-t0ken" }') as server:
        both_ways(server.url, {"token": "t0ken-t0ken"}, {"NATS_TOKEN": "t0ken-t0ken"})
        error = refused(NatsConfig(servers=server.url, connect_timeout=1))
        assert refused_for_authorization(error)


def test_nkey_seed_file(tmp_path: Path) -> None:
    user = new_keypair(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_text(seed(user) + "\n")
    config = f"authorization {{ users = [ {{ nkey: {public(user)} }} ] }}"
    with configured_server(tmp_path, config) as server:
        both_ways(server.url, {"nkeys_seed": str(seed_file)}, {"NATS_NKEY_SEED": str(seed_file)})
        stranger = tmp_path / "stranger.nk"
        stranger.write_text(seed(new_keypair(nkeys.PREFIX_BYTE_USER)))
        error = refused(NatsConfig(servers=server.url, nkeys_seed=str(stranger), connect_timeout=1))
        assert refused_for_authorization(error)


def test_creds_file_with_operator_account_and_user_jwts(tmp_path: Path) -> None:
    operator = make_operator(tmp_path)
    with configured_server(tmp_path, operator.config) as server:
        both_ways(server.url, {"user_credentials": str(operator.creds)}, {"NATS_CREDS": str(operator.creds)})
        (tmp_path / "other").mkdir()
        stranger = make_operator(tmp_path / "other")  # a user of an operator the server does not trust
        error = refused(NatsConfig(servers=server.url, user_credentials=str(stranger.creds), connect_timeout=1))
        assert refused_for_authorization(error)


# -- TLS with a CA and client certificates ---------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    config = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: true, timeout: 2 }}'
    )
    with configured_server(tmp_path_factory.mktemp("tls"), config) as server:
        yield server


def test_tls_with_a_ca_and_client_certificates(pki: Pki, tls_server: NatsServer) -> None:
    context = tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    env = {"NATS_CA": str(pki.ca), "NATS_CERT": str(pki.client_cert), "NATS_KEY": str(pki.client_key)}
    both_ways(tls_server.url, {"tls": context}, env)
    tls_url = tls_server.url.replace("nats://", "tls://")
    assert round_trip(NatsConfig(servers=tls_url, tls=context), NatsConfig.from_env({**env, "NATS_URL": tls_url})) == (
        "HELLO"
    )


def test_tls_connections_are_written_by_the_loop_only(pki: Pki, tls_server: NatsServer) -> None:
    # Threads may write plain TCP sockets directly; a TLS stream only through asyncio.
    context = tls_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    with Bus(NatsConfig(servers=tls_server.url, tls=context, connect_timeout=3)) as bus:
        assert bus._transport._target is None and bus._transport._sock is None
        pool = WorkerPool(bus, service_id="tls-loop", handlers=[_reveal]).start()
        try:
            assert CommandBus(bus, timeout=5).execute(Secret("over tls")) == "OVER TLS"
        finally:
            pool.stop(drain_timeout=5)
        assert bus._transport.partial_writes == 0


def test_tls_refusals_are_connect_errors_naming_the_tls_failure(pki: Pki, tls_server: NatsServer) -> None:
    cases = [
        # No client certificate: the server verifies clients. Its alert can
        # be lost with the connection it closes (the client's first write
        # fails first); new tries nearly always read it, and if none does,
        # the text says the reset came right after the TLS handshake.
        (tls_context(str(pki.ca)), "alert certificate required|right after the tls handshake", 30),
        # A CA that did not sign the server's certificate.
        (tls_context(str(pki.other_ca)), "certificate verify failed", 5),
        # No TLS configured, to a server that requires it: the system's CAs do not know ours.
        (None, "certificate verify failed", 5),
    ]
    for context, reason, tries in cases:
        for _ in range(tries):
            error = refused(NatsConfig(servers=tls_server.url, tls=context, connect_timeout=5))
            text = str(error)
            assert text.startswith(f"could not connect to NATS at {tls_server.url} (") and "TLS" in text, text
            assert re.search(reason, text, re.I), text


def test_tls_files_that_do_not_load_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^NATS_CA / NATS_CERT / NATS_KEY: cannot load the CA certificates from "):
        NatsConfig.from_env({"NATS_CA": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match=r"a client key \(.*client-key\.pem\) needs its certificate too"):
        NatsConfig.from_env({"NATS_KEY": str(pki.client_key)})
    with pytest.raises(ConfigError, match=r"cannot load the client certificate from .*client-cert\.pem and .*ca\.pem"):
        tls_context(str(pki.ca), str(pki.client_cert), str(pki.ca))
    assert NatsConfig.from_env({}).tls is None
    mine = ssl.create_default_context()
    assert NatsConfig.from_env({"NATS_CA": str(tmp_path / "missing.pem")}, tls=mine).tls is mine


# -- permissions -----------------------------------------------------------------------------


def test_a_publish_permission_violation_names_the_subject_at_once(tmp_path: Path) -> None:
    config = """
    authorization {
      users = [
        { user: worker, password: w }
        { user: limited, password: l, permissions: { publish: { deny: ["commands.Forbidden"] } } }
      ]
    }
    """
    with configured_server(tmp_path, config) as server, Bus(server.url, user="worker", password="w") as serving:
        pool = WorkerPool(serving, service_id="perm", handlers=[_reveal])
        pool.register(lambda cmd: "never", message_type=Forbidden)
        pool.start()
        try:
            with Bus(server.url, user="limited", password="l") as calling:
                commands = CommandBus(calling, timeout=10)
                attempts = (
                    lambda: commands.execute(Forbidden("x")),
                    lambda: commands.submit(Forbidden("x")).result(10),
                    lambda: commands.execute_many([Forbidden("x")])[0],
                )
                for attempt in attempts:
                    started = time.monotonic()
                    with pytest.raises(PermissionDeniedError) as info:
                        attempt()
                    assert time.monotonic() - started < 2, "waited for the timeout"
                    assert info.value.subject == "commands.Forbidden"
                    assert str(info.value) == (
                        "permission denied: this connection may not publish to commands.Forbidden"
                    )
                    assert isinstance(info.value, PermissionError)
                # The connection is still good for what is allowed.
                assert commands.execute(Secret("still")) == "STILL"
                assert calling.is_connected
        finally:
            pool.stop(drain_timeout=5)


def test_a_permission_violation_with_creds_too(tmp_path: Path) -> None:
    operator = make_operator(tmp_path, deny_publish="commands.Forbidden")
    with configured_server(tmp_path, operator.config) as server:
        calling = Bus(server.url, user_credentials=str(operator.creds))
        try:
            with pytest.raises(PermissionDeniedError, match=r"may not publish to commands\.Forbidden$"):
                CommandBus(calling, timeout=10).execute(Forbidden("x"))
        finally:
            calling.close()


def test_a_pool_denied_its_subscription_says_so_at_start(tmp_path: Path) -> None:
    config = """
    authorization {
      users = [ { user: w, password: w, permissions: { subscribe: { deny: ["commands.Forbidden"] } } } ]
    }
    """
    with configured_server(tmp_path, config) as server, Bus(server.url, user="w", password="w") as serving:
        pool = WorkerPool(serving, service_id="denied", handlers=[_reveal])
        pool.register(lambda cmd: "never", message_type=Forbidden)
        with pytest.raises(PermissionDeniedError) as info:
            pool.start()
        assert str(info.value) == "permission denied: this connection may not subscribe to commands.Forbidden"
        assert info.value.subject == "commands.Forbidden"
        assert not pool.running
        assert not [t for t in threading.enumerate() if t.name.startswith("natsbus-worker-denied")]
        # Nothing half-started is left subscribed: Secret has no handler now.
        with pytest.raises(NoHandlerError):
            CommandBus(serving, timeout=5).execute(Secret("x"))
