"""No secret in any text: a sentinel secret fed through every configuration path and every error path.

Passwords and tokens (as fields, in URLs, in environment variables and in a
natscli context), NKey seeds and creds files: whatever the way in, the
secret must not appear in an exception's text (nor in the exceptions it
chains), a log line (every logger, DEBUG and up), a ``repr()``, the CLI's
output or a tracing span. The sweep collects every such text on the way
and looks for the secrets once, at the end.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import attrs
import nkeys
import pytest
from auth_support import make_operator, new_keypair, seed
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from natsbus import (
    Bus,
    Command,
    CommandBus,
    ConfigError,
    ConnectError,
    NatsBusError,
    NatsConfig,
    NatsServer,
    NotConnectedError,
    WorkerPool,
)
from natsbus.cli.main import main as cli
from natsbus.middleware import OpenTelemetryMiddleware

#: The secret every way in carries; wrong ones (refused logins) start with it too.
SENTINEL = f"s3ntinel-{secrets.token_hex(8)}"
WRONG = f"{SENTINEL}-wrong"


@attrs.frozen
class Echo(Command[str]):
    text: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sweep:
    """Every text that could show a secret, collected on the way."""

    def __init__(self) -> None:
        self.texts: List[Tuple[str, str]] = []  # (where, text)
        self.secrets: List[str] = [SENTINEL]

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, str(text)))

    def error(self, where: str, call: Callable[[], Any]) -> BaseException:
        """Run ``call``, which must fail with a natsbus error; keep every text of it."""
        try:
            call()
        except NatsBusError as exc:
            self.add(f"{where}: str", exc)
            self.add(f"{where}: repr", repr(exc))
            self.add(f"{where}: traceback with its chain", "".join(traceback.format_exception(exc)))
            self.add(f"{where}: servers", getattr(exc, "servers", ()))
            return exc
        raise AssertionError(f"{where}: no error")

    def leaks(self) -> List[Tuple[str, str]]:
        return [(where, text) for where, text in self.texts if any(s in text for s in self.secrets)]


@pytest.fixture()
def sweep(caplog: pytest.LogCaptureFixture) -> Iterator[Sweep]:
    caplog.set_level(logging.DEBUG)  # every logger, nats-py's and asyncio's too
    found = Sweep()
    yield found
    for record in caplog.records:
        found.add(f"log {record.name}", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            found.add(f"log {record.name} exc_info", "".join(traceback.format_exception(record.exc_info[1])))
    assert found.texts, "nothing was swept"
    assert found.leaks() == []


@pytest.fixture()
def guarded() -> Iterator[NatsServer]:
    """A server whose one user's password is the sentinel."""
    with NatsServer(jetstream=False, args=["--user", "u", "--pass", SENTINEL]) as server:
        yield server


def _ways_in(server: NatsServer, tmp_path: Path, sweep: Sweep) -> List[Tuple[str, NatsConfig]]:
    """Every way a credential gets into a NatsConfig, each refused by ``server``."""
    url, port = server.url, server.port
    context = tmp_path / "context.json"
    context.write_text(json.dumps({"url": f"nats://u:{WRONG}@127.0.0.1:{port}", "password": WRONG, "token": WRONG}))
    seed_file = tmp_path / "user.nk"
    user_seed = seed(new_keypair(nkeys.PREFIX_BYTE_USER))
    seed_file.write_text(user_seed + "\n")
    operator = make_operator(tmp_path)
    sweep.secrets += [user_seed, operator.user_seed]
    sweep.secrets += [line for line in operator.creds.read_text().splitlines() if line.startswith("eyJ")]  # the JWT
    return [
        ("password in the URL", NatsConfig(servers=f"nats://u:{WRONG}@127.0.0.1:{port}")),
        ("token in the URL", NatsConfig(servers=f"nats://{WRONG}@127.0.0.1:{port}")),
        ("password field", NatsConfig(servers=url, user="u", password=WRONG)),
        ("token field", NatsConfig(servers=url, token=WRONG)),
        ("NATS_URL", NatsConfig.from_env({"NATS_URL": f"nats://u:{WRONG}@127.0.0.1:{port}"})),
        ("NATS_PASSWORD", NatsConfig.from_env({"NATS_URL": url, "NATS_USER": "u", "NATS_PASSWORD": WRONG})),
        ("NATS_TOKEN", NatsConfig.from_env({"NATS_URL": url, "NATS_TOKEN": WRONG})),
        ("NATS_CONTEXT", NatsConfig.from_env({"NATS_CONTEXT": str(context)})),
        ("NKey seed file", NatsConfig(servers=url, nkeys_seed=str(seed_file))),
        ("creds file", NatsConfig(servers=url, user_credentials=str(operator.creds))),
        (
            "several URLs",
            NatsConfig(servers=[f"nats://u:{WRONG}@127.0.0.1:{port}", f"nats://u:{WRONG}@127.0.0.1:{_free_port()}"]),
        ),
    ]


def test_no_secret_in_any_text_on_any_error_path(guarded: NatsServer, tmp_path: Path, sweep: Sweep) -> None:
    dead_port = _free_port()
    for way, config in _ways_in(guarded, tmp_path, sweep):
        sweep.add(f"{way}: repr(config)", repr(config))
        # The server refuses the login.
        error = sweep.error(f"{way}: refused login", lambda: Bus(config))  # noqa: B023
        assert isinstance(error, ConnectError) and "login refused" in str(error), (way, str(error))
        # Nothing listens.
        dead = attrs.evolve(config, servers=[u.replace(f":{guarded.port}", f":{dead_port}") for u in config.servers])
        sweep.error(f"{way}: nothing listens", lambda: Bus(dead))  # noqa: B023
        # A Bus connecting in the background, and a call meanwhile.
        with Bus(dead, connect_in_background=True, reconnect_time_wait=0.05) as waiting:
            sweep.add(f"{way}: repr(bus)", repr(waiting))
            error = sweep.error(
                f"{way}: a call before connecting",
                lambda: CommandBus(waiting).execute(Echo("x"), reconnect_grace=0.1),
            )
            assert isinstance(error, NotConnectedError)
    # Malformed URLs with a secret in them.
    sweep.error("a URL without a scheme", lambda: NatsConfig(servers=f"u:{SENTINEL}@127.0.0.1:4222"))
    sweep.error("a URL with a bad port", lambda: Bus(f"nats://u:{SENTINEL}@127.0.0.1:notaport"))


def test_no_secret_in_any_text_while_connected_and_across_an_outage(guarded: NatsServer, sweep: Sweep) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url = f"nats://u:{SENTINEL}@127.0.0.1:{guarded.port}"
    try:
        for config in (NatsConfig(servers=url), NatsConfig(servers=guarded.url, user="u", password=SENTINEL)):
            sweep.add("repr(config)", repr(config))
            with Bus(config, reconnect_time_wait=0.05) as bus:
                pool = WorkerPool(bus, service_id="secret", handlers=[_echo]).start()
                commands = CommandBus(bus, middleware=[OpenTelemetryMiddleware(provider)])
                try:
                    assert commands.execute(Echo("hi")) == "HI"
                    sweep.add("repr(bus)", repr(bus))
                    sweep.add("connected_url", bus.connected_url)
                    guarded.stop()
                    error = sweep.error("a call while down", lambda: commands.execute(Echo("x"), reconnect_grace=0.2))  # noqa: B023
                    assert isinstance(error, NotConnectedError)
                    sweep.add("repr(bus) while down", repr(bus))
                    guarded.start()
                    assert bus.wait_connected(10)
                    assert commands.execute(Echo("back")) == "BACK"
                finally:
                    pool.stop(drain_timeout=5)
        spans = exporter.get_finished_spans()
        assert spans
        for span in spans:
            sweep.add(f"span {span.name}", span.to_json())
    finally:
        provider.shutdown()


def test_no_secret_in_the_clis_output(
    guarded: NatsServer, sweep: Sweep, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = f"nats://u:{WRONG}@127.0.0.1:{guarded.port}"
    dead = f"nats://u:{SENTINEL}@127.0.0.1:{_free_port()}"
    runs = [
        ["execute", "Echo", "{}", "--server", wrong],
        ["ask", "Echo", "{}", "--server", dead],
        ["ls", "--server", wrong],
        ["worker", "natsbus.demo:build_pool", "--server", wrong, "--connect-timeout", "2"],
    ]
    monkeypatch.setenv("NATS_URL", wrong)
    runs.append(["ping"])  # from NATS_URL
    for argv in runs:
        status = cli(argv)
        out, err = capsys.readouterr()
        assert status != 0, argv
        sweep.add(f"cli {argv[0]} stdout", out)
        sweep.add(f"cli {argv[0]} stderr", err)
        assert "refused" in err, (argv, err)


def test_the_redaction_keeps_what_is_not_secret() -> None:
    config = NatsConfig(servers=f"nats://alice:{SENTINEL}@nats-1:4222,nats://nats-2:4222", token=SENTINEL)
    assert repr(config).count("nats://alice:***@nats-1:4222") == 1 and "nats://nats-2:4222" in repr(config)
    with pytest.raises(ConfigError, match=r"^server URL 'alice:\*\*\*@nats-1:4222' has no scheme"):
        NatsConfig(servers=f"alice:{SENTINEL}@nats-1:4222")


def _echo(cmd: Echo) -> str:
    return cmd.text.upper()
