"""The spec's user-service, and ``natsbus demo``, which drives it.

``CreateUserCommand {name, email}`` -> ``{user_id, created_at}``; the same
email again -> ``User already exists with email: <email>``;
``GetUserQuery {user_id}`` -> ``{id, name, email, created_at}``; an unknown
id -> ``User not found: <id>``. ``examples/user_service.py`` runs it as a
daemon.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, Optional, TextIO

import attrs

from .bus import Bus
from .cqrs import CommandBus, QueryBus
from .envelope import utc_timestamp
from .errors import ConflictError, NotFoundError, ServiceError
from .messages import Command, Query

if TYPE_CHECKING:  # loaded by build_pool: a client of the demo's messages needs no worker code
    from .worker import WorkerPool

SERVICE_ID = "user-service"


@attrs.frozen
class UserCreated:
    user_id: str
    created_at: str


@attrs.frozen
class User:
    id: str
    name: str
    email: str
    created_at: str


@attrs.frozen
class CreateUserCommand(Command[UserCreated]):
    name: str
    email: str


@attrs.frozen
class GetUserQuery(Query[User]):
    user_id: str


@attrs.define
class UserRepository:
    """An in-memory store; thread-safe, as handlers run concurrently."""

    _users: Dict[str, User] = attrs.field(factory=dict)
    _by_email: Dict[str, str] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def add(self, name: str, email: str) -> User:
        with self._lock:
            if email in self._by_email:
                raise ConflictError(f"User already exists with email: {email}")
            user = User(id=f"user-{uuid.uuid4()}", name=name, email=email, created_at=utc_timestamp())
            self._users[user.id] = user
            self._by_email[email] = user.id
            return user

    def get(self, user_id: str) -> User:
        with self._lock:
            user = self._users.get(user_id)
        if user is None:
            raise NotFoundError(f"User not found: {user_id}")
        return user


@attrs.define
class CreateUserHandler:
    repository: UserRepository

    def handle(self, cmd: CreateUserCommand) -> UserCreated:
        user = self.repository.add(cmd.name, cmd.email)
        return UserCreated(user_id=user.id, created_at=user.created_at)


@attrs.define
class GetUserHandler:
    repository: UserRepository

    def handle(self, query: GetUserQuery) -> User:
        return self.repository.get(query.user_id)


def build_pool(bus: Bus, max_workers: int = 8) -> WorkerPool:
    """The user-service pool on ``bus``, with a fresh repository."""
    from .worker import WorkerPool

    repository = UserRepository()
    pool = WorkerPool(bus, service_id=SERVICE_ID, max_workers=max_workers)
    pool.register(CreateUserHandler(repository))
    pool.register(GetUserHandler(repository))
    return pool


def _show(out: TextIO, title: str, envelope: Dict[str, Any]) -> None:
    out.write(f"{title}\n{json.dumps(envelope, indent=2)}\n\n")


def run_demo(url: Optional[str] = None, out: Optional[TextIO] = None) -> int:
    """Serve the user-service and drive it: a create, a duplicate, a query.

    Prints every request and response envelope as sent on the wire. Without
    ``url`` (and without ``NATS_URL``) it starts the embedded server.

    Returns:
        0 when every step behaved as the spec says, else 1.
    """
    import sys

    from .server import NatsServer

    out = out or sys.stdout
    url = url or os.environ.get("NATS_URL")
    server: Optional[NatsServer] = None
    if not url:
        server = NatsServer().start()
        url = server.url
        out.write(f"started the embedded nats-server at {url}\n\n")
    try:
        with Bus(url) as bus:
            pool = build_pool(bus).start()
            try:
                return _drive(bus, out)
            finally:
                pool.stop()
    finally:
        if server is not None:
            server.close()


def _drive(bus: Bus, out: TextIO) -> int:
    from . import codec
    from .envelope import decode_response

    def call(kind: str, subject: str, envelope: Dict[str, Any]) -> Dict[str, Any]:
        _show(out, f"-> {subject}", envelope)
        reply = bus.request(subject, codec.dumps(envelope), timeout=5.0)
        response: Dict[str, Any] = codec.loads(reply.data)
        decode_response(reply.data)  # validate the shape
        _show(out, f"<- {kind} response", response)
        return response

    def request(kind: str, type_name: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        prefix, key = ("cmd", "command") if kind == "command" else ("qry", "query")
        return {
            f"{key}_type": type_name,
            f"{key}_id": f"{prefix}-{uuid.uuid4()}",
            "service_id": "demo-client",
            "timestamp": utc_timestamp(),
            "payload": payload,
        }

    alice = {"name": "Alice", "email": "alice@example.com"}
    created = call("command", "commands.CreateUserCommand", request("command", "CreateUserCommand", alice))
    duplicate = call("command", "commands.CreateUserCommand", request("command", "CreateUserCommand", alice))
    user_id = (created.get("payload") or {}).get("user_id", "")
    found = call("query", "queries.GetUserQuery", request("query", "GetUserQuery", {"user_id": user_id}))

    # The same through the typed buses, as application code would do it.
    commands = CommandBus(bus, service_id="demo-client")
    queries = QueryBus(bus, service_id="demo-client")
    bob = commands.execute(CreateUserCommand(name="Bob", email="bob@example.com"))
    user = queries.ask(GetUserQuery(user_id=bob.user_id))
    out.write(f"typed API: execute() -> {bob!r}\n           ask() -> {user!r}\n")
    try:
        queries.ask(GetUserQuery(user_id="user-unknown"))
        missing_ok = False
    except NotFoundError as exc:
        out.write(f"           ask(unknown) raised {type(exc).__name__}: {exc}\n")
        missing_ok = True
    except ServiceError:
        missing_ok = False

    ok = (
        created.get("success") is True
        and duplicate.get("success") is False
        and duplicate.get("error") == "User already exists with email: alice@example.com"
        and found.get("success") is True
        and (found.get("payload") or {}).get("email") == "alice@example.com"
        and user.email == "bob@example.com"
        and missing_ok
    )
    out.write("\ndemo " + ("succeeded" if ok else "FAILED") + "\n")
    return 0 if ok else 1


__all__ = [
    "CreateUserCommand",
    "CreateUserHandler",
    "GetUserHandler",
    "GetUserQuery",
    "SERVICE_ID",
    "User",
    "UserCreated",
    "UserRepository",
    "build_pool",
    "run_demo",
]
