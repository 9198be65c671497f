"""Configuration: frozen attrs classes, validated when built."""

from __future__ import annotations

import json
import os
import re
import ssl
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

import attrs

from .errors import ConfigError

__all__ = ["DEFAULT_URL", "NatsConfig", "SCHEMES", "redact_text", "redact_url", "tls_context"]

#: Where natsbus connects when neither ``servers`` nor ``NATS_URL`` is given.
DEFAULT_URL = "nats://127.0.0.1:4222"

#: The URL schemes a NATS client connects with.
SCHEMES = ("nats", "tls", "ws", "wss")


def redact_url(url: str) -> str:
    """``url`` fit to show: a password (or token) in it becomes ``***``.

    ``nats://alice:s3cret@host:4222`` -> ``nats://alice:***@host:4222``;
    ``nats://t0ken@host`` (a token) -> ``nats://***@host``; the same
    without a scheme (``alice:s3cret@host`` -> ``alice:***@host``).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at or "/" in userinfo:
        return url
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{shown}@{hostpart}"


# A URL with credentials inside a longer text: scheme://userinfo@
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^\s/@'\"]+)@")

#: Secrets shorter than this are not searched for in texts (they would
#: garble them); URLs are redacted whatever their password's length.
MIN_SECRET_LENGTH = 4


def redact_text(text: str, secrets: Iterable[Optional[str]] = ()) -> str:
    """``text`` fit to show: credentials of URLs in it, and each of ``secrets``, become ``***``.

    Args:
        text: An error text, log line, ...
        secrets: Values that must not appear (passwords, tokens, seeds);
            empty ones and those shorter than :data:`MIN_SECRET_LENGTH` are skipped.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match.group(2).partition(":")
        return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"

    text = _URL_USERINFO.sub(userinfo, text)
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, "***")
    return text


def _servers_repr(servers: Tuple[str, ...]) -> str:
    return repr(tuple(redact_url(url) for url in servers))


def _to_servers(value: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    servers = tuple(s for s in value if s)
    if not servers:
        raise ConfigError("NatsConfig.servers must name at least one server URL")
    for url in servers:
        scheme, sep, _ = url.partition("://")
        if not sep:
            raise ConfigError(f"server URL {redact_url(url)!r} has no scheme; expected e.g. nats://host:4222")
        if scheme.lower() not in SCHEMES:
            raise ConfigError(
                f"server URL {redact_url(url)!r} has the scheme {scheme!r}; "
                "NATS URLs start with nats://, tls://, ws:// or wss://"
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


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"NatsConfig.{attribute.name} must be >= 0 or None, got {value!r}")


def _file_secrets(path: Optional[str]) -> List[str]:
    """The lines of a seed or creds file that could be keys: long, with no spaces."""
    if not path:
        return []
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as handle:
            lines = [line.strip() for line in handle]
    except OSError:
        return []
    return [line for line in lines if len(line) >= 16 and " " not in line and not line.startswith(("---", "***"))]


@attrs.frozen(kw_only=True)
class NatsConfig:
    """How a :class:`~natsbus.Bus` connects to NATS.

    Credential and TLS options are passed through to nats-py unchanged.

    Args:
        servers: One URL, a comma-separated string, or a sequence of URLs
            (several for a cluster; the client fails over between them);
            each ``nats://``, ``tls://``, ``ws://`` or ``wss://``.
        name: The client name the server shows in its monitoring.
        connect_timeout: Seconds the first connection may take in all.
            Each server is tried once, in random order, within its share
            of it; one that refuses (nothing listens, the login or TLS is
            refused) fails at once, so :class:`ConnectError` comes as soon
            as every server has failed, naming each and its reason.
        connect_in_background: When no server lets the Bus in at first,
            do not raise :class:`ConnectError`: return a Bus that keeps
            trying every ``reconnect_time_wait`` and serves once NATS is
            there (a web process started before NATS); calls fail with
            :class:`NotConnectedError` meanwhile. For clients: a
            ``WorkerPool`` needs a connected Bus.
        allow_reconnect: Reconnect after a lost connection.
        max_reconnect_attempts: Attempts per server; -1 retries forever.
        reconnect_time_wait: Seconds between attempts on one server.
        reconnect_grace: Seconds a call made while the Bus is not
            connected waits for the connection before it fails with
            :class:`NotConnectedError` (nothing sent); ``None``: up to the
            call's own timeout. Short, so that an outage does not hold a
            web thread for a call's whole timeout; long enough to ride out
            a cluster failover, which can take one ``reconnect_time_wait``
            (when nats-py tried the next server less than that ago) and a
            handshake: keep it above ``reconnect_time_wait``. A call's
            ``reconnect_grace=`` argument wins over it.
        ping_interval: Seconds between client PINGs (detects dead servers).
        max_outstanding_pings: Unanswered PINGs before the connection is
            considered dead.
        fail_fast_when_disconnected: ``reconnect_grace=0``, by its older
            name: calls made while disconnected fail at once.
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

    servers: Tuple[str, ...] = attrs.field(default=(DEFAULT_URL,), converter=_to_servers, repr=_servers_repr)
    name: Optional[str] = None
    connect_timeout: float = attrs.field(default=5.0, validator=_positive)
    connect_in_background: bool = False
    allow_reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_time_wait: float = attrs.field(default=0.5, validator=_positive)
    reconnect_grace: Optional[float] = attrs.field(default=1.0, validator=_non_negative)
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

    def secrets(self) -> List[str]:
        """What must never appear in a text: passwords and tokens (in URLs too), key file contents.

        Reads the NKey seed and creds files, so it is for error paths, not
        hot ones. See :func:`redact_text`.
        """
        found = [value for value in (self.password, self.token) if value]
        for url in self.servers:
            try:
                parts = urlsplit(url if "://" in url else f"nats://{url}")
                values = [parts.password, parts.username if parts.password is None else None]
            except ValueError:
                continue
            for value in values:
                if value:
                    found += [value, unquote(value)]
        found += _file_secrets(self.nkeys_seed) + _file_secrets(self.user_credentials)
        return found

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> NatsConfig:
        """Build a config from environment variables (natscli's), then ``overrides``.

        Reads ``NATS_URL`` (one URL or a comma-separated list; default
        :data:`DEFAULT_URL`), ``NATS_USER``, ``NATS_PASSWORD``,
        ``NATS_TOKEN``, ``NATS_NKEY`` (a seed file; ``NATS_NKEY_SEED`` is
        read too, as an older name), ``NATS_CREDS`` (a creds file), and for
        TLS ``NATS_CA`` (CA certificates to trust), ``NATS_CERT`` and
        ``NATS_KEY`` (a client certificate and its key), which build
        ``tls`` with :func:`tls_context` unless ``tls`` is given in
        ``overrides``.

        ``NATS_CONTEXT`` names a natscli context (a file
        ``$XDG_CONFIG_HOME/nats/context/NAME.json``, by default under
        ``~/.config``, or a path to such a file): its ``url``, ``user``,
        ``password``, ``token``, ``creds``, ``nkey``, ``ca``, ``cert`` and
        ``key`` are used where the variable of the same setting is not
        set, as natscli does.

        Args:
            environ: The mapping to read; ``os.environ`` by default.
            **overrides: Fields that win over the environment.

        Returns:
            A validated config.

        Raises:
            ConfigError: A value is invalid, or the context cannot be read.
        """
        env = dict(os.environ if environ is None else environ)
        context = env.get("NATS_CONTEXT")
        if context:
            for var, value in _read_context(context, env).items():
                env.setdefault(var, value)  # set variables win over the context
                if not env[var]:
                    env[var] = value
        values: dict[str, Any] = {"servers": env.get("NATS_URL") or DEFAULT_URL}
        for field, names in (
            ("user", ("NATS_USER",)),
            ("password", ("NATS_PASSWORD",)),
            ("token", ("NATS_TOKEN",)),
            ("nkeys_seed", ("NATS_NKEY", "NATS_NKEY_SEED")),
            ("user_credentials", ("NATS_CREDS",)),
        ):
            for var in names:
                if env.get(var):
                    values[field] = env[var]
                    break
        tls_files = [env.get(var) or None for var in ("NATS_CA", "NATS_CERT", "NATS_KEY")]
        if any(tls_files) and "tls" not in overrides:
            try:
                values["tls"] = tls_context(*tls_files)
            except ConfigError as exc:
                raise ConfigError(f"NATS_CA / NATS_CERT / NATS_KEY: {exc}") from None
        values.update(overrides)
        return cls(**values)


#: natscli context keys, and the variable each stands in for.
_CONTEXT_KEYS = {
    "url": "NATS_URL",
    "user": "NATS_USER",
    "password": "NATS_PASSWORD",
    "token": "NATS_TOKEN",
    "creds": "NATS_CREDS",
    "nkey": "NATS_NKEY",
    "ca": "NATS_CA",
    "cert": "NATS_CERT",
    "key": "NATS_KEY",
}


def _read_context(name: str, env: Mapping[str, str]) -> Dict[str, str]:
    """The variables a natscli context file stands for (only its non-empty string settings)."""
    if name.endswith(".json") or os.sep in name:
        path = os.path.expanduser(name)
    else:
        base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        path = os.path.join(base, "nats", "context", f"{name}.json")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"NATS_CONTEXT {name!r}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"NATS_CONTEXT {name!r}: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"NATS_CONTEXT {name!r}: {path} does not hold a JSON object")
    return {var: data[key] for key, var in _CONTEXT_KEYS.items() if isinstance(data.get(key), str) and data[key]}
