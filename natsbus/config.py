"""Configuration: frozen attrs classes, validated when built."""

from __future__ import annotations

import os
import ssl
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import attrs

from .errors import ConfigError

__all__ = ["DEFAULT_URL", "NatsConfig", "SCHEMES", "tls_context"]

#: Where natsbus connects when neither ``servers`` nor ``NATS_URL`` is given.
DEFAULT_URL = "nats://127.0.0.1:4222"

#: The URL schemes a NATS client connects with.
SCHEMES = ("nats", "tls", "ws", "wss")


def _to_servers(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    servers = tuple(s for s in value if s)
    if not servers:
        raise ConfigError("NatsConfig.servers must name at least one server URL")
    for url in servers:
        scheme, sep, _ = url.partition("://")
        if not sep:
            raise ConfigError(f"server URL {url!r} has no scheme; expected e.g. nats://host:4222")
        if scheme.lower() not in SCHEMES:
            raise ConfigError(
                f"server URL {url!r} has the scheme {scheme!r}; NATS URLs start with nats://, tls://, ws:// or wss://"
            )
    return servers


def tls_context(
    ca_file: Optional[str] = None, cert_file: Optional[str] = None, key_file: Optional[str] = None
) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for :attr:`NatsConfig.tls` from PEM files.

    Args:
        ca_file: The CA certificate(s) that signed the server's certificate;
            ``None`` trusts the system's CAs.
        cert_file: This client's certificate, for servers that verify
            clients (``tls { verify: true }``).
        key_file: Its private key; ``None`` when ``cert_file`` holds it too.

    Raises:
        ConfigError: a file is missing or not a valid certificate / key;
            the text names it.
    """
    if key_file and not cert_file:
        raise ConfigError(f"a client key ({key_file}) needs its certificate too")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificates from {ca_file}: {exc}") from None
    if cert_file:
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as exc:
            files = f"{cert_file} and {key_file}" if key_file else cert_file
            raise ConfigError(f"cannot load the client certificate from {files}: {exc}") from None
    return context


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"NatsConfig.{attribute.name} must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class NatsConfig:
    """How a :class:`~natsbus.Bus` connects to NATS.

    Credential and TLS options are passed through to nats-py unchanged.

    Args:
        servers: One URL, a comma-separated string, or a sequence of URLs
            (several for a cluster; the client fails over between them);
            each ``nats://``, ``tls://``, ``ws://`` or ``wss://``.
        name: The client name the server shows in its monitoring.
        connect_timeout: Seconds the first connection may take in all,
            across every server and retry, before :class:`ConnectError`.
        allow_reconnect: Reconnect after a lost connection.
        max_reconnect_attempts: Attempts per server; -1 retries forever.
        reconnect_time_wait: Seconds between attempts on one server.
        ping_interval: Seconds between client PINGs (detects dead servers).
        max_outstanding_pings: Unanswered PINGs before the connection is
            considered dead.
        fail_fast_when_disconnected: While reconnecting, fail new calls at
            once with :class:`NotConnectedError` instead of buffering them
            until their own deadline.
        reconnect_buffer_size: Bytes of outgoing data buffered while
            reconnecting.
        user, password, token: Plain credentials.
        nkeys_seed: Path of an NKey seed file.
        user_credentials: Path of a ``.creds`` file (JWT + NKey).
        tls: An :class:`ssl.SSLContext` for TLS connections (see
            :func:`tls_context`); also used with ``nats://`` URLs.
        tls_hostname: The host name to verify the server certificate against.
        inbox_prefix: The prefix of reply subjects (for restricted accounts).
    """

    servers: Tuple[str, ...] = attrs.field(default=(DEFAULT_URL,), converter=_to_servers)
    name: Optional[str] = None
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    allow_reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_time_wait: float = attrs.field(default=0.5, validator=_positive)
    ping_interval: float = attrs.field(default=20.0, validator=_positive)
    max_outstanding_pings: int = 3
    fail_fast_when_disconnected: bool = False
    reconnect_buffer_size: int = 8 * 1024 * 1024
    user: Optional[str] = None
    password: Optional[str] = attrs.field(default=None, repr=False)
    token: Optional[str] = attrs.field(default=None, repr=False)
    nkeys_seed: Optional[str] = None
    user_credentials: Optional[str] = None
    tls: Optional[ssl.SSLContext] = None
    tls_hostname: Optional[str] = None
    inbox_prefix: str = "_INBOX"

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> NatsConfig:
        """Build a config from environment variables, then ``overrides``.

        Reads ``NATS_URL`` (one URL or a comma-separated list; default
        :data:`DEFAULT_URL`), ``NATS_USER``, ``NATS_PASSWORD``,
        ``NATS_TOKEN``, ``NATS_NKEY_SEED`` (a seed file),
        ``NATS_CREDS`` (a creds file), and for TLS ``NATS_CA`` (CA
        certificates to trust), ``NATS_CERT`` and ``NATS_KEY`` (a client
        certificate and its key), which build ``tls`` with
        :func:`tls_context` unless ``tls`` is given in ``overrides``.

        Args:
            environ: The mapping to read; ``os.environ`` by default.
            **overrides: Fields that win over the environment.

        Returns:
            A validated config.

        Raises:
            ConfigError: A value is invalid.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {"servers": env.get("NATS_URL") or DEFAULT_URL}
        for field, var in (
            ("user", "NATS_USER"),
            ("password", "NATS_PASSWORD"),
            ("token", "NATS_TOKEN"),
            ("nkeys_seed", "NATS_NKEY_SEED"),
            ("user_credentials", "NATS_CREDS"),
        ):
            if env.get(var):
                values[field] = env[var]
        tls_files = [env.get(var) or None for var in ("NATS_CA", "NATS_CERT", "NATS_KEY")]
        if any(tls_files) and "tls" not in overrides:
            try:
                values["tls"] = tls_context(*tls_files)
            except ConfigError as exc:
                raise ConfigError(f"NATS_CA / NATS_CERT / NATS_KEY: {exc}") from None
        values.update(overrides)
        return cls(**values)
