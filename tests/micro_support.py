"""Helpers for the NATS micro tests: the official schemas, nats-py as a client, a nats-py service.

nats-py is used directly here, on purpose: these helpers stand for the
rest of the NATS world (its own client and its own micro services).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import nats
import nats.micro
from jsonschema import Draft7Validator
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]


#: A copy of the official NATS micro v1 schemas (shared/spec/micro-v1), so the
#: suite runs from a plain clone; test_schema_copy_matches_the_spec checks it
#: against the spec folder wherever that sits beside the repository.
SCHEMA_DIR = REPO / "tests" / "schemas" / "micro-v1"


def spec_schema_dirs() -> List[Path]:
    """``shared/spec/micro-v1`` folders in the repository's ancestors (CI has ../shared)."""
    return [
        base / "shared" / "spec" / "micro-v1"
        for base in REPO.parents
        if (base / "shared" / "spec" / "micro-v1" / "definitions.json").is_file()
    ]


def _schema_dir() -> Path:
    if not (SCHEMA_DIR / "definitions.json").is_file():
        raise AssertionError(f"the NATS micro JSON schemas are missing from {SCHEMA_DIR}")
    return SCHEMA_DIR


def load_validators() -> Dict[str, Draft7Validator]:
    """``{"ping": ..., "info": ..., "stats": ...}``: validators for the three responses."""
    folder = _schema_dir()
    schemas = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas
    )
    checker = Draft7Validator.FORMAT_CHECKER
    # Without rfc3339-validator jsonschema silently accepts any "date-time".
    assert not checker.conforms("not a time", "date-time"), "install rfc3339-validator (in the test extra)"
    validators = {}
    for verb in ("ping", "info", "stats"):
        (schema,) = [s for s in schemas if s["$id"].endswith(f"/{verb}_response.json")]
        validators[verb] = Draft7Validator(schema, registry=registry, format_checker=checker)
    return validators


def schema_errors(validator: Draft7Validator, response: Dict[str, Any]) -> List[str]:
    """Every schema violation of ``response``, readable (empty when valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(response)]


def raw_gather(
    url: str,
    subject: str,
    until: Callable[[List[Dict[str, Any]]], bool],
    timeout: float = 10.0,
) -> List[Dict[str, Any]]:
    """Send an empty request with plain nats-py; collect JSON replies until ``until(replies)``."""

    async def run() -> List[Dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            replies: List[Dict[str, Any]] = []
            done = asyncio.Event()

            async def on_reply(msg: Any) -> None:
                replies.append(json.loads(msg.data))
                if until(replies):
                    done.set()

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=on_reply)
            await nc.publish(subject, b"", reply=inbox)
            try:
                await asyncio.wait_for(done.wait(), timeout)
            finally:
                await sub.unsubscribe()
            return replies
        finally:
            await nc.close()

    return asyncio.run(run())


def nats_py_request(url: str, subject: str) -> bytes:
    """One request with plain nats-py; the reply's body."""

    async def run() -> bytes:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(subject, b"", timeout=5)
            return msg.data  # type: ignore[no-any-return]
        finally:
            await nc.close()

    return asyncio.run(run())


class NatsPyService:
    """A NATS micro service built with nats-py's own ``nats.micro``, on a thread of its own.

    Service ``echo-py`` 1.2.3 (no description, so nats-py sends ``null``)
    with one endpoint, ``EchoCommand`` on ``commands.EchoCommand`` in
    nats-py's default queue group ``q``: it answers a natsbus command
    envelope with a success envelope echoing the payload, or with a
    400 error reply (headers only) when the payload has ``"fail": true``.
    """

    name = "echo-py"

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-py-service", daemon=True)
        self._nc: Any = None
        self._service: Any = None

    @property
    def id(self) -> str:
        """The instance id nats-py gave the service."""
        return str(self._service.id)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> NatsPyService:
        self._thread.start()

        async def handler(request: Any) -> None:
            body = json.loads(request.data)
            if body["payload"].get("fail"):
                await request.respond_error("400", "told to fail")
                return
            reply = {
                "success": True,
                "command_id": body["command_id"],
                "timestamp": body["timestamp"],
                "payload": body["payload"],
                "error": None,
            }
            await request.respond(json.dumps(reply).encode())

        async def start() -> None:
            self._nc = await nats.connect(self.url)
            self._service = await nats.micro.add_service(self._nc, name=self.name, version="1.2.3")
            await self._service.add_endpoint(name="EchoCommand", subject="commands.EchoCommand", handler=handler)
            await self._nc.flush()

        self._call(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._service is not None:
                await self._service.stop()
            if self._nc is not None:
                await self._nc.close()

        try:
            self._call(stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


def running_nats_py_service(url: str) -> Iterator[NatsPyService]:
    """A generator for a fixture: a started :class:`NatsPyService`, stopped afterwards."""
    service = NatsPyService(url).start()
    try:
        yield service
    finally:
        service.stop()


def first(items: List[Any], predicate: Optional[Callable[[Any], bool]] = None) -> Any:
    """The only item matching ``predicate`` (asserting there is exactly one)."""
    matching = [item for item in items if predicate is None or predicate(item)]
    assert len(matching) == 1, matching
    return matching[0]
