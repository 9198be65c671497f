"""natsbus errors as HTTP answers (one pure function, checked as a table) and the shared settings checks."""

from __future__ import annotations

import inspect
from http import HTTPStatus
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import pytest
from web_errors import CASES

import natsbus.errors
from natsbus import QueryCache, RetryPolicy
from natsbus.contrib._common import (
    RETRY_AFTER_BUSY,
    RETRY_AFTER_UNAVAILABLE,
    HttpProblem,
    find_problems,
    http_problem,
    parse_settings,
)
from natsbus.errors import (
    BusClosedError,
    BusyError,
    ConfigError,
    ConflictError,
    ConnectError,
    DeadlineExceededError,
    EnvelopeError,
    HandlerError,
    IncompatibleSettingsError,
    InvalidRequestError,
    JetStreamError,
    LifecycleError,
    LoopThreadError,
    MessageTypeError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RegistrationError,
    RequestError,
    RequestTimeoutError,
    ResultNotReadyError,
    ServiceError,
    TraceContextError,
    TransportError,
)
from natsbus.middleware import (
    ClientMiddleware,
    HandlerMiddleware,
    LoggingMiddleware,
    StopCall,
    TraceContextMiddleware,
)

SECRET = "nats://web:s3cret@10.0.0.5:4222 commands.ChargeCard Traceback"


class ForbiddenError(ServiceError):
    code: ClassVar[int] = 403


class TeapotError(ServiceError):
    code: ClassVar[int] = 418


class OddCodeError(ServiceError):
    code: ClassVar[int] = 599


BUSY = "The service is busy; try again shortly."
UNREACHABLE = "The message bus is not reachable."
TIMEOUT = "The service did not answer in time."
FAILED = "The service failed to handle this request."
INTERNAL = "The server failed to handle this request."

#: (the error, status, ``error``, ``detail``, Retry-After): every class natsbus raises.
TABLE: List[Tuple[NatsBusError, int, str, str, Optional[int]]] = [
    (
        InvalidRequestError("Invalid request format: name: missing"),
        400,
        "invalid_request",
        "Invalid request format: name: missing",
        None,
    ),
    (NotFoundError("User not found: u-1"), 404, "not_found", "User not found: u-1", None),
    (
        ConflictError("User already exists with email: a@b"),
        409,
        "conflict",
        "User already exists with email: a@b",
        None,
    ),
    (ForbiddenError("not your order"), 403, "forbidden", "not your order", None),
    (TeapotError("short and stout"), 418, "im_a_teapot", "short and stout", None),
    (BusyError(SECRET), 503, "busy", BUSY, RETRY_AFTER_BUSY),
    (DeadlineExceededError(SECRET), 504, "timeout", TIMEOUT, None),
    (HandlerError(SECRET), 500, "handler_error", FAILED, None),
    (ServiceError(SECRET), 500, "handler_error", FAILED, None),
    (OddCodeError(SECRET), 500, "handler_error", FAILED, None),
    (NoHandlerError(SECRET), 503, "no_handler", "No service is available for this request.", RETRY_AFTER_UNAVAILABLE),
    (NotConnectedError(SECRET), 503, "not_connected", UNREACHABLE, RETRY_AFTER_UNAVAILABLE),
    (
        ConnectError(SECRET, ("nats://web:s3cret@10.0.0.5:4222",)),
        503,
        "not_connected",
        UNREACHABLE,
        RETRY_AFTER_UNAVAILABLE,
    ),
    (TransportError(SECRET), 503, "not_connected", UNREACHABLE, RETRY_AFTER_UNAVAILABLE),
    (BusClosedError(SECRET), 503, "shutting_down", "This server is shutting down.", RETRY_AFTER_UNAVAILABLE),
    (ResultNotReadyError(SECRET), 503, "not_ready", "The result is not ready yet.", RETRY_AFTER_BUSY),
    (RequestTimeoutError(SECRET, timeout=3.0), 504, "timeout", TIMEOUT, None),
    (
        PayloadTooLargeError(SECRET, size=2, limit=1),
        413,
        "too_large",
        "The request is too large to send to the service.",
        None,
    ),
    (EnvelopeError(SECRET), 502, "bad_reply", "The service's reply could not be read.", None),
    (JetStreamError(SECRET, code=503), 500, "internal", INTERNAL, None),
    (PermissionDeniedError(SECRET), 500, "internal", INTERNAL, None),
    (RequestError(SECRET), 500, "internal", INTERNAL, None),
    (LoopThreadError(SECRET), 500, "internal", INTERNAL, None),
    (LifecycleError(SECRET), 500, "internal", INTERNAL, None),
    (ConfigError(SECRET), 500, "internal", INTERNAL, None),
    (IncompatibleSettingsError("stream S", "retention", SECRET, "limits"), 500, "internal", INTERNAL, None),
    (RegistrationError(SECRET), 500, "internal", INTERNAL, None),
    (MessageTypeError(SECRET), 500, "internal", INTERNAL, None),
    (TraceContextError(SECRET), 500, "internal", INTERNAL, None),
    (StopCall(ValueError(SECRET)), 500, "internal", INTERNAL, None),
    (NatsBusError(SECRET), 500, "internal", INTERNAL, None),
]


@pytest.mark.parametrize(("error", "status", "name", "detail", "retry_after"), TABLE, ids=lambda v: type(v).__name__)
def test_http_problem_maps_each_error_class(
    error: NatsBusError, status: int, name: str, detail: str, retry_after: Optional[int]
) -> None:
    assert http_problem(error) == HttpProblem(status, name, detail, retry_after)


def test_the_table_covers_every_error_class_natsbus_defines() -> None:
    defined = {
        cls
        for cls in vars(natsbus.errors).values()
        if inspect.isclass(cls) and issubclass(cls, NatsBusError) and cls.__module__ == "natsbus.errors"
    }
    assert defined - {type(error) for error, *_ in TABLE} == set()


@pytest.mark.parametrize(("error", "status", "name", "detail", "retry_after"), TABLE, ids=lambda v: type(v).__name__)
def test_problem_bodies_follow_rfc_9457_and_never_show_a_5xx_text(
    error: NatsBusError, status: int, name: str, detail: str, retry_after: Optional[int]
) -> None:
    problem = http_problem(error)
    assert problem.body() == {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "error": name,
    }
    assert problem.headers() == ({} if retry_after is None else {"Retry-After": str(retry_after)})
    if status >= 500:
        assert "s3cret" not in str(problem.body()) and "Traceback" not in str(problem.body())


def test_the_shared_web_cases_agree_with_the_function() -> None:
    for make, status, body, retry_after in CASES.values():
        problem = http_problem(make())
        assert (problem.status, problem.body(), problem.headers().get("Retry-After")) == (status, body, retry_after)


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
