"""What the web integrations share: the settings checks."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from natsbus import QueryCache, RetryPolicy
from natsbus.contrib._common import find_problems, parse_settings
from natsbus.errors import ConfigError
from natsbus.middleware import ClientMiddleware, HandlerMiddleware, LoggingMiddleware, TraceContextMiddleware

# -- settings ------------------------------------------------------------------------------


def _label(key: str) -> str:
    return f"X[{key!r}]" if key else "X"


def _texts(values: Any, **options: Any) -> List[str]:
    return [text for _, text in find_problems(values, _label, **options)]


def test_unknown_keys_get_a_did_you_mean() -> None:
    assert _texts({"TIMOUT": 1, "query_timeout": 2, "CONNECT_TIMEOUT": 2, "COLOUR": "blue"}) == [
        "X['COLOUR'] is not a natsbus setting; known: IN_MEMORY, MIDDLEWARE, OPTIONS, QUERY_CACHE, QUERY_TIMEOUT, "
        "RETRY, SERVERS, SERVICE_ID, TIMEOUT",
        "X['CONNECT_TIMEOUT'] is not a natsbus setting; did you mean X['OPTIONS']['connect_timeout']?",
        "X['TIMOUT'] is not a natsbus setting; did you mean X['TIMEOUT']?",
        "X['query_timeout'] is not a natsbus setting; did you mean X['QUERY_TIMEOUT']?",
    ]
    assert _texts({"POOL": "x:y"}, hints={"POOL": "not here"}) == ["X['POOL'] is not a natsbus setting; not here"]


def test_every_bad_value_is_reported_at_once() -> None:
    class Recorder(ClientMiddleware):
        pass

    assert _texts(
        {
            "TIMEOUT": 0,
            "RETRY": RetryPolicy,
            "QUERY_CACHE": {"ttl": 5},
            "MIDDLEWARE": [Recorder(), HandlerMiddleware(), TraceContextMiddleware, "log", LoggingMiddleware()],
            "OPTIONS": {"conect_timeout": 1, "servers": ["nats://a:4222"]},
            "SERVERS": ["nats://a:4222", "b:4222"],
        }
    ) == [
        "X['TIMEOUT'] must be a number of seconds > 0, or None for no limit; got 0",
        "X['RETRY'] is the class RetryPolicy; give an instance, e.g. RetryPolicy(attempts=3)",
        "X['MIDDLEWARE'][1] is handler middleware (HandlerMiddleware); it goes on a WorkerPool",
        "X['MIDDLEWARE'][2] is the class TraceContextMiddleware; give an instance: TraceContextMiddleware()",
        "X['MIDDLEWARE'][3] must be client middleware (a natsbus.middleware.ClientMiddleware, or a built-in "
        "such as TraceContextMiddleware()), got 'log'",
        "X['QUERY_CACHE'] must be a natsbus.QueryCache (e.g. QueryCache(ttl=30)) or None, got {'ttl': 5}",
        "X['OPTIONS'] has 'conect_timeout', which NatsConfig does not take; did you mean 'connect_timeout'?",
        "X['OPTIONS'] has 'servers', which NatsConfig does not take; put server URLs in X['SERVERS']",
        "X['SERVERS']: server URL 'b:4222' has no scheme; expected e.g. nats://host:4222",
    ]


def test_a_bad_option_value_and_bad_servers_are_both_reported() -> None:
    texts = _texts({"OPTIONS": {"connect_timeout": -1}, "SERVERS": 42, "MIDDLEWARE": "TraceContextMiddleware"})
    assert texts[0] == (
        "X['MIDDLEWARE'] must be a list of client middleware, e.g. [TraceContextMiddleware()], "
        "got 'TraceContextMiddleware'"
    )
    assert texts[1].startswith("X['OPTIONS']: ") and "connect_timeout" in texts[1]
    assert texts[2] == "X['SERVERS'] must be a URL, a list of URLs or None, got 42"
    assert len(texts) == 3


def test_parse_settings_lists_every_problem_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"TIMOUT": 1, "RETRY": 3}, _label, default_service_id="web")
    assert str(caught.value) == (
        "2 problems in X:\n"
        "- X['TIMOUT'] is not a natsbus setting; did you mean X['TIMEOUT']?\n"
        "- X['RETRY'] must be a natsbus.RetryPolicy (e.g. RetryPolicy(attempts=3)) or None, got 3"
    )


def test_parse_settings_carries_retry_middleware_and_cache() -> None:
    policy, cache, tracing = RetryPolicy(attempts=2), QueryCache(ttl=5), TraceContextMiddleware()
    settings = parse_settings(
        {"SERVERS": "nats://a:4222", "RETRY": policy, "QUERY_CACHE": cache, "MIDDLEWARE": [tracing]},
        _label,
        default_service_id="web",
    )
    assert (settings.retry, settings.query_cache, settings.middleware, settings.service_id) == (
        policy,
        cache,
        (tracing,),
        "web",
    )
    assert settings.config is not None and settings.config.servers == ("nats://a:4222",)


def test_no_settings_at_all_are_fine() -> None:
    empty: Dict[str, Any] = {}
    assert _texts(empty) == []
