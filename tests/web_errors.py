"""The natsbus errors a view may raise, and the HTTP answer each should get (shared by the web tests)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

from natsbus import (
    BusyError,
    ConflictError,
    HandlerError,
    InvalidRequestError,
    NatsBusError,
    NoHandlerError,
    NotConnectedError,
    NotFoundError,
    RequestTimeoutError,
)

PROBLEM_JSON = "application/problem+json"

#: name -> (a factory of the error, the status, the body, the Retry-After header)
CASES: Dict[str, Tuple[Callable[[], NatsBusError], int, Dict[str, Any], Optional[str]]] = {
    "not_found": (
        lambda: NotFoundError("User not found: u-1", subject="queries.GetUserQuery"),
        404,
        {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": "User not found: u-1",
            "error": "not_found",
        },
        None,
    ),
    "conflict": (
        lambda: ConflictError("User already exists with email: a@example.com"),
        409,
        {
            "type": "about:blank",
            "title": "Conflict",
            "status": 409,
            "detail": "User already exists with email: a@example.com",
            "error": "conflict",
        },
        None,
    ),
    "invalid_request": (
        lambda: InvalidRequestError("Invalid request format: email: missing"),
        400,
        {
            "type": "about:blank",
            "title": "Bad Request",
            "status": 400,
            "detail": "Invalid request format: email: missing",
            "error": "invalid_request",
        },
        None,
    ),
    "busy": (
        lambda: BusyError("Service busy: 8 of 8 workers in use", subject="commands.CreateUserCommand"),
        503,
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "The service is busy; try again shortly.",
            "error": "busy",
        },
        "1",
    ),
    "no_handler": (
        lambda: NoHandlerError("No handler available for queries.GetUserQuery", subject="queries.GetUserQuery"),
        503,
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "No service is available for this request.",
            "error": "no_handler",
        },
        "5",
    ),
    "not_connected": (
        lambda: NotConnectedError("disconnected from nats://web:s3cret@10.0.0.5:4222"),
        503,
        {
            "type": "about:blank",
            "title": "Service Unavailable",
            "status": 503,
            "detail": "The message bus is not reachable.",
            "error": "not_connected",
        },
        "5",
    ),
    "timeout": (
        lambda: RequestTimeoutError("Query request timeout after 3000ms", subject="queries.GetUserQuery", timeout=3.0),
        504,
        {
            "type": "about:blank",
            "title": "Gateway Timeout",
            "status": 504,
            "detail": "The service did not answer in time.",
            "error": "timeout",
        },
        None,
    ),
    "handler_error": (
        lambda: HandlerError("OperationalError: password authentication failed for user 'app' (s3cret)"),
        500,
        {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "The service failed to handle this request.",
            "error": "handler_error",
        },
        None,
    ),
}
