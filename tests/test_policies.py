"""Retries and the query cache: pure logic, then against a real server."""

from __future__ import annotations

import threading
from typing import Callable, Dict, Iterator, List

import attrs
import pytest

from natsbus import Bus, BusyError, Command, CommandBus, ConfigError, NoHandlerError, Query, QueryBus, WorkerPool
from natsbus.policies import QueryCache, RetryPolicy


@attrs.frozen
class Flaky(Command[str]):
    key: str


@attrs.frozen
class Lookup(Query[Dict[str, int]]):
    key: str


def test_retry_policy_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.1, multiplier=2, max_backoff=0.3, jitter=0)
    assert [policy.delay(i) for i in range(4)] == [0.1, 0.2, 0.3, 0.3]
    assert policy.should_retry(NoHandlerError("x"), 0)
    assert not policy.should_retry(NoHandlerError("x"), 4)
    assert not policy.should_retry(ValueError("x"), 0)


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(backoff=-1)


def test_query_cache_expires_and_evicts() -> None:
    cache = QueryCache(ttl=60, maxsize=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    short = QueryCache(ttl=0.001)
    short.put("x", 1)
    threading.Event().wait(0.01)
    assert short.get("x") is None


@pytest.fixture()
def flaky_pool(bus: Bus) -> Iterator[None]:
    """Flaky fails with busy twice per key, then succeeds; Lookup counts its calls."""
    failures: Dict[str, int] = {}
    pool = WorkerPool(bus, service_id="flaky")

    @pool.register
    def flaky(cmd: Flaky) -> str:
        failures[cmd.key] = failures.get(cmd.key, 0) + 1
        if failures[cmd.key] <= 2:
            raise BusyError("try again")
        return "ok"

    lookups: Dict[str, int] = {}

    @pool.register
    def lookup(query: Lookup) -> Dict[str, int]:
        lookups[query.key] = lookups.get(query.key, 0) + 1
        return {"calls": lookups[query.key]}

    with pool:
        yield


def test_without_retry_the_first_busy_error_is_raised(bus: Bus, flaky_pool: None) -> None:
    with pytest.raises(BusyError):
        CommandBus(bus).execute(Flaky("a"))


def test_retry_reuses_the_command_id(bus: Bus, flaky_pool: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="natsbus.bus")
    commands = CommandBus(bus, retry=RetryPolicy(attempts=3, backoff=0.01))
    assert commands.execute(Flaky("b")) == "ok"
    retried = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retried) == 2
    ids = {msg.split(" ")[1].rstrip(":") for msg in retried}
    assert len(ids) == 1 and ids.pop().startswith("cmd-")


def test_retry_gives_up_after_its_attempts(bus: Bus, flaky_pool: None) -> None:
    with pytest.raises(BusyError):
        CommandBus(bus).execute(Flaky("c"), retry=RetryPolicy(attempts=2, backoff=0.01))


@attrs.frozen(kw_only=True)
class HookedPolicy(RetryPolicy):
    """Calls ``hook(attempt)`` whenever it is about to wait for a retry."""

    hook: Callable[[int], None]

    def delay(self, attempt: int) -> float:
        self.hook(attempt)
        return 0.01


def test_retry_waits_for_a_handler_to_appear(bus: Bus) -> None:
    pool = WorkerPool(bus, service_id="late")

    @pool.register
    def lookup(query: Lookup) -> Dict[str, int]:
        return {"calls": 1}

    retries: List[int] = []

    def start_pool_on_first_retry(attempt: int) -> None:
        retries.append(attempt)
        if attempt == 0:
            pool.start()

    try:
        policy = HookedPolicy(attempts=10, hook=start_pool_on_first_retry)
        assert QueryBus(bus).ask(Lookup("k"), retry=policy) == {"calls": 1}
    finally:
        pool.stop(5)
    assert retries == [0]


def test_query_cache_serves_repeats_without_a_request(bus: Bus, flaky_pool: None) -> None:
    cache = QueryCache(ttl=60)
    queries = QueryBus(bus, cache=cache)
    first = queries.ask(Lookup("k"))
    second = queries.ask(Lookup("k"))
    assert first == second == {"calls": 1}
    assert first is not second  # each hit is decoded afresh
    assert queries.ask(Lookup("other")) == {"calls": 1}
    assert queries.ask(Lookup("k"), cache=False) == {"calls": 2}
    assert (cache.hits, cache.misses) == (1, 2)
