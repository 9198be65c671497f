"""``CommandBus.send()``: its timeout and its retries follow the bus's settings."""

from __future__ import annotations

import uuid
from typing import Any, Iterator, List, Optional

import attrs
import pytest

from natsbus import Bus, CommandBus, ConfigError, DurableConfig, JetStreamError, RetryPolicy
from natsbus._transport.jetstream import JetStream
from natsbus.durable.client import NO_ACK_LIMIT
from natsbus.messages import Command

pytestmark = pytest.mark.timeout(60)


@attrs.frozen
class Ship(Command[None]):
    order: str


@pytest.fixture()
def config() -> Iterator[DurableConfig]:
    tag = uuid.uuid4().hex[:8]
    yield DurableConfig(
        stream=f"SEND_{tag}",
        subject_prefix=f"durable.send{tag}",
        dead_letter_stream=f"SEND_DEAD_{tag}",
        dead_letter_prefix=f"durable.senddead{tag}",
        results_bucket=f"send_results_{tag}",
        storage="memory",
    )


@pytest.fixture()
def publishes(monkeypatch: pytest.MonkeyPatch) -> List[Optional[float]]:
    """The ack timeout of every JetStream publish (the real publish still runs)."""
    seen: List[Optional[float]] = []
    real = JetStream.publish

    async def spy(self: JetStream, subject: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("timeout"))
        return await real(self, subject, data, *args, **kwargs)

    monkeypatch.setattr(JetStream, "publish", spy)
    return seen


def test_send_on_a_bus_without_timeout_waits_for_the_ack_without_a_limit(
    bus: Bus, config: DurableConfig, publishes: List[Optional[float]]
) -> None:
    CommandBus(bus, timeout=None).send(Ship("o-1"), durable=config)
    assert publishes == [NO_ACK_LIMIT]


def test_send_waits_for_the_ack_as_long_as_the_bus_timeout(
    bus: Bus, config: DurableConfig, publishes: List[Optional[float]]
) -> None:
    CommandBus(bus, timeout=1.5).send(Ship("o-2"), durable=config)
    assert publishes == [1.5]


def test_send_retries_as_the_bus_retry_policy_says(
    bus: Bus, config: DurableConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: List[str] = []
    real = JetStream.publish

    async def unavailable_twice(self: JetStream, subject: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        tries.append(subject)
        if len(tries) <= 2:
            raise JetStreamError("JetStream is electing a leader", code=503)
        return await real(self, subject, data, *args, **kwargs)

    monkeypatch.setattr(JetStream, "publish", unavailable_twice)
    once = RetryPolicy(attempts=1, retry_on=(JetStreamError,))
    with pytest.raises(JetStreamError, match="electing"):
        CommandBus(bus, retry=once).send(Ship("o-3"), durable=config)
    assert len(tries) == 1
    tries.clear()
    thrice = RetryPolicy(attempts=3, backoff=0.01, retry_on=(JetStreamError,))
    command_id = CommandBus(bus, retry=thrice).send(Ship("o-4"), durable=config)
    assert len(tries) == 3 and command_id.startswith("cmd-")


def test_send_retries_a_transient_jetstream_failure_by_default(
    bus: Bus, config: DurableConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: List[str] = []
    real = JetStream.publish

    async def unavailable_once(self: JetStream, subject: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        tries.append(subject)
        if len(tries) == 1:
            raise JetStreamError("JetStream is electing a leader", code=503)
        return await real(self, subject, data, *args, **kwargs)

    monkeypatch.setattr(JetStream, "publish", unavailable_once)
    CommandBus(bus).send(Ship("o-5"), durable=config)
    assert len(tries) == 2


def test_send_does_not_retry_a_refusal(bus: Bus, config: DurableConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    tries: List[str] = []

    async def refused(self: JetStream, subject: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        tries.append(subject)
        raise JetStreamError("maximum messages exceeded", code=400)

    monkeypatch.setattr(JetStream, "publish", refused)
    with pytest.raises(JetStreamError, match="maximum messages"):
        CommandBus(bus).send(Ship("o-6"), durable=config)
    assert len(tries) == 1


def test_send_and_result_on_an_in_memory_bus_say_they_need_nats() -> None:
    from natsbus.testing import InMemoryBus

    memory = InMemoryBus()
    with pytest.raises(ConfigError, match=r"needs a natsbus\.Bus connected to NATS"):
        memory.commands.send(Ship("o-7"))
    with pytest.raises(ConfigError, match=r"needs a natsbus\.Bus connected to NATS"):
        memory.commands.result("cmd-x")
