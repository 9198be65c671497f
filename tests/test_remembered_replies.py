"""Pools remember command replies by default: a repeated command_id gets the first reply.

A client in another language that retries ``CreateUserCommand`` with the
same ``command_id`` after a lost reply must get its user, not "User already
exists". The default store is in memory, bounded in entries, bytes and time;
``WorkerPool(idempotency=None)`` turns it off.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Dict, List

import attrs
import pytest

from natsbus import Bus, BusyError, Command, CommandBus, ConflictError, RetryPolicy, WorkerPool
from natsbus.demo import SERVICE_ID, build_pool
from natsbus.envelope import utc_timestamp
from natsbus.idempotency import MemoryIdempotencyStore

pytestmark = pytest.mark.timeout(30)


def _create(command_id: str, email: str) -> bytes:
    """A CreateUserCommand envelope as a client that knows only the wire contract writes it."""
    envelope: Dict[str, Any] = {
        "command_type": "CreateUserCommand",
        "command_id": command_id,
        "service_id": "other-language-client",
        "timestamp": utc_timestamp(),
        "payload": {"name": "Ada", "email": email},
    }
    return json.dumps(envelope).encode()


def test_a_repeated_command_id_to_the_example_service_gets_the_first_reply(bus: Bus) -> None:
    with build_pool(bus):
        command_id = f"cmd-{uuid.uuid4()}"
        email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
        first = bus.request("commands.CreateUserCommand", _create(command_id, email), timeout=5)
        again = bus.request("commands.CreateUserCommand", _create(command_id, email), timeout=5)
        other = bus.request("commands.CreateUserCommand", _create(f"cmd-{uuid.uuid4()}", email), timeout=5)
    assert json.loads(first.data)["success"] is True
    assert again.data == first.data  # the recorded reply, byte for byte: the handler did not run again
    assert json.loads(other.data)["error"].startswith("User already exists")  # a new command_id runs


def test_the_default_store_is_bounded_and_documented() -> None:
    pool = WorkerPool(None, "bounded")
    store = pool.idempotency
    assert isinstance(store, MemoryIdempotencyStore)
    assert (store.ttl, store.max_entries, store.max_bytes) == (300.0, 10_000, 64 * 1024 * 1024)


def test_idempotency_none_turns_it_off(bus: Bus) -> None:
    from natsbus.demo import CreateUserHandler, GetUserHandler, UserRepository

    repository = UserRepository()
    pool = WorkerPool(bus, SERVICE_ID, handlers=[CreateUserHandler(repository), GetUserHandler(repository)])
    assert isinstance(pool.idempotency, MemoryIdempotencyStore)
    off = WorkerPool(bus, SERVICE_ID, idempotency=None, handlers=[CreateUserHandler(repository)])
    assert off.idempotency is None
    with off:
        command_id = f"cmd-{uuid.uuid4()}"
        email = f"bob-{uuid.uuid4().hex[:6]}@example.com"
        bus.request("commands.CreateUserCommand", _create(command_id, email), timeout=5)
        again = bus.request("commands.CreateUserCommand", _create(command_id, email), timeout=5)
    assert json.loads(again.data)["error"].startswith("User already exists")  # ran twice


@attrs.frozen
class Reserve(Command[int]):
    seat: str


def test_a_busy_reply_is_not_remembered_so_a_retry_runs_the_handler(bus: Bus) -> None:
    tries: List[str] = []
    lock = threading.Lock()

    def reserve(cmd: Reserve) -> int:
        with lock:
            tries.append(cmd.seat)
            if len(tries) == 1:
                raise BusyError("the seat map is being rebuilt; retry")
            return len(tries)

    with WorkerPool(bus, f"seats-{uuid.uuid4().hex[:6]}", handlers=[reserve]):
        got = CommandBus(bus).execute(Reserve("12A"), retry=RetryPolicy(attempts=3, backoff=0.01))
    assert (got, tries) == (2, ["12A", "12A"])


def test_a_final_answer_is_remembered_for_a_retry_with_the_same_command_id(bus: Bus) -> None:
    from natsbus.demo import CreateUserCommand

    with build_pool(bus):
        commands = CommandBus(bus)
        email = f"cy-{uuid.uuid4().hex[:6]}@example.com"
        commands.execute(CreateUserCommand("Cy", email))
        with pytest.raises(ConflictError):
            commands.execute(CreateUserCommand("Cy", email))


def test_the_memory_store_keeps_its_replies_under_max_bytes() -> None:
    store = MemoryIdempotencyStore(max_entries=100, max_bytes=1000)
    for n in range(5):
        claim = store.begin(None, f"cmd-{n}")  # type: ignore[arg-type]  # the memory store needs no bus
        store.finish(None, f"cmd-{n}", claim.token, (b"x" * 300, None))  # type: ignore[arg-type]
    assert len(store) == 3  # 900 bytes; the two oldest went
    assert store.begin(None, "cmd-0").state.value == "owned"  # type: ignore[arg-type]
    assert store.begin(None, "cmd-4").state.value == "done"  # type: ignore[arg-type]
    big = store.begin(None, "cmd-big")  # type: ignore[arg-type]
    store.finish(None, "cmd-big", big.token, (b"y" * 5000, None))  # type: ignore[arg-type]
    assert store.begin(None, "cmd-big").state.value == "owned"  # too big to keep: not kept  # type: ignore[arg-type]
