"""A bare WSGI app whose Bus is created, and used, at import: in a gunicorn ``--preload`` master.

Every worker is forked from the master with that Bus; its first call opens
the worker's own connection. ``GET /echo?text=x`` answers
``{"pid", "result", "connected"}``; ``GET /`` does not touch the bus.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Tuple
from urllib.parse import parse_qs

import attrs

from natsbus import Bus, Command, CommandBus


@attrs.frozen
class PreloadEcho(Command[str]):
    text: str


bus = Bus(os.environ["NATS_URL"], name="preload-app")
commands = CommandBus(bus, timeout=5.0)
assert commands.execute(PreloadEcho("master")) == "MASTER"
print(f"[{os.getpid()}] preload-app: the master called the bus", file=sys.stderr, flush=True)


def app(environ: Dict[str, Any], start_response: Callable[[str, List[Tuple[str, str]]], Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] != "/echo":
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b"null"]
    text = parse_qs(environ["QUERY_STRING"])["text"][0]
    result = commands.execute(PreloadEcho(text))
    body = json.dumps({"pid": os.getpid(), "result": result, "connected": bus.is_connected}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
