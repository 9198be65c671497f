"""What every ``natsbus`` command shares: the exit codes, the connection options, errors as exit codes.

One table for ``natsbus execute`` / ``ask`` / ``execute-many`` / ``worker``,
the ops and durable commands and ``manage.py natsbus_worker``
(docs/exit-codes.rst, which a test checks against real runs):

===  ====================================================================
0    success
1    a call or a batch line failed; a worker was not drained
2    usage error, found before anything is sent (bad arguments or input, a
     flag that would be ignored, a server URL that is not nats, tls, ws or
     wss, a worker module that does not import)
3    no NATS server answered within the connect timeout
130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM (128 + the signal)
===  ====================================================================
"""

from __future__ import annotations

import argparse
import json
import signal
from typing import TYPE_CHECKING, Any, Optional, TextIO

if TYPE_CHECKING:
    from ..bus import Bus
    from ..config import NatsConfig

__all__ = [
    "EXIT_CONNECT",
    "EXIT_FAILED",
    "EXIT_NOT_DRAINED",
    "EXIT_OK",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_USAGE",
    "add_connection_options",
    "add_json_option",
    "error_code",
    "exit_code",
    "fail",
    "nats_config",
    "non_negative_float",
    "non_negative_int",
    "open_bus",
    "positive_float",
    "positive_int",
    "server_urls",
    "write_json",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_NOT_DRAINED = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM


def server_urls(value: str) -> str:
    """An argparse ``type=``: NATS URL(s), comma-separated, each nats://, tls://, ws:// or wss://."""
    from ..config import NatsConfig
    from ..errors import ConfigError

    try:
        NatsConfig(servers=value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _number(kind: type, test: Any, text: str) -> Any:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not test(number):
            raise argparse.ArgumentTypeError(f"must be {text}, got {value}")
        return number

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda n: n >= 1, ">= 1")
non_negative_int = _number(int, lambda n: n >= 0, ">= 0")
positive_float = _number(float, lambda n: n > 0, "> 0")
non_negative_float = _number(float, lambda n: n >= 0, ">= 0")


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``--server`` and ``--connect-timeout``, as every command takes them."""
    parser.add_argument(
        "--server",
        type=server_urls,
        help="NATS URL(s), comma-separated: nats://, tls://, ws:// or wss:// "
        "(default: NATS_URL, else nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        help="seconds to reach NATS at start (default 5)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``-j`` / ``--json``: one JSON document on standard output, errors as JSON objects on standard error."""
    parser.add_argument(
        "-j",
        "--json",
        action="store_true",
        help="print one JSON document (stable snake_case keys) instead of text; errors go to "
        'standard error as {"error": ..., "code": ...}; exit codes are the same',
    )


# -- --json: one printer for every command ------------------------------------------


def write_json(stream: TextIO, document: Any) -> None:
    """Write ``document`` as one line of JSON (what ``--json`` prints, on either stream)."""
    stream.write(json.dumps(document, ensure_ascii=False) + "\n")


def fail(
    args: argparse.Namespace,
    err: TextIO,
    message: str,
    code: str,
    *,
    prefix: bool = True,
    command: Optional[str] = None,
    **extra: Any,
) -> None:
    """Report a failure on ``err``: ``natsbus CMD: message`` as text, or one JSON object with ``--json``.

    The JSON object's keys: ``error`` (the message), ``code`` (what kind
    of failure; each command's codes are in ``docs/cli-json.rst``) and the
    ``extra`` keys.

    Args:
        args: The parsed arguments (``args.json``: whether to write JSON).
        err: Standard error.
        message: What went wrong.
        code: The JSON object's ``code``.
        prefix: Start the text with the command's name.
        command: That name, when it is not ``natsbus {args.command}``.
        **extra: More keys for the JSON object (ignored in text).
    """
    if getattr(args, "json", False):
        write_json(err, {"error": message, "code": code, **extra})
    elif prefix:
        err.write(f"{command or f'natsbus {args.command}'}: {message}\n")
    else:
        err.write(message + "\n")


def error_code(exc: BaseException) -> str:
    """The ``code`` of a ``--json`` error object for an error that ended a command.

    ``no_handler``, ``timeout``, ``connect`` (no NATS), ``usage`` (as exit
    status 2), else ``failed``.
    """
    from ..errors import NoHandlerError, RequestTimeoutError

    if isinstance(exc, NoHandlerError):
        return "no_handler"
    if isinstance(exc, RequestTimeoutError):
        return "timeout"
    return {EXIT_CONNECT: "connect", EXIT_USAGE: "usage"}.get(exit_code(exc), "failed")


def nats_config(args: argparse.Namespace, name: Optional[str] = None) -> NatsConfig:
    """The connection settings: the environment (``NATS_URL``, credentials, TLS) and the options.

    Raises:
        ConfigError: a bad URL or setting (in ``NATS_URL`` too).
    """
    from ..config import NatsConfig

    overrides: dict[str, Any] = {}
    if name is not None:
        overrides["name"] = name
    if getattr(args, "server", None):
        overrides["servers"] = args.server
    if getattr(args, "connect_timeout", None) is not None:
        overrides["connect_timeout"] = args.connect_timeout
    return NatsConfig.from_env(**overrides)


def open_bus(args: argparse.Namespace, name: Optional[str] = None) -> Bus:
    """A connected Bus per the options.

    Raises:
        ConfigError: a bad URL or setting.
        ConnectError: no server answered within the connect timeout.
    """
    from ..bus import Bus

    return Bus(nats_config(args, name))


def exit_code(exc: BaseException) -> int:
    """The exit status for an error that ended a command.

    3 when NATS could not be reached, 2 for a usage error (a bad setting or
    message type), else 1.
    """
    from ..errors import ConfigError, ConnectError, MessageTypeError, NotConnectedError

    if isinstance(exc, (ConnectError, NotConnectedError)):
        return EXIT_CONNECT
    if isinstance(exc, (ConfigError, MessageTypeError)):
        return EXIT_USAGE
    return EXIT_FAILED
