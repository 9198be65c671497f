"""``ErrorResponseMiddleware``: natsbus errors raised by views as JSON problems (RFC 9457)."""

from __future__ import annotations

from typing import Callable, Optional

from django.http import HttpRequest, HttpResponse, JsonResponse

from ...errors import NatsBusError
from .._common import PROBLEM_CONTENT_TYPE, http_problem, log_problem

__all__ = ["ErrorResponseMiddleware"]


class ErrorResponseMiddleware:
    """Answers a natsbus error that a view raised with a JSON problem.

    ``MIDDLEWARE = [..., "natsbus.contrib.django.ErrorResponseMiddleware"]``.
    The status, ``error`` and ``detail`` are those of the "Errors as HTTP"
    table of docs/web.rst, as for Flask: 404, 409, 400 with the service's text;
    503 with ``Retry-After`` for busy, no handler and not connected; 504
    for a timeout; 500 for the rest, with the error logged (logger
    ``natsbus.contrib``), not shown. Other exceptions go on to
    Django as before. Only exceptions from views reach it (Django's
    ``process_exception``), wherever it is in the list.

    Args:
        get_response: The next middleware or the view (Django passes it).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Pass the request on."""
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> Optional[HttpResponse]:
        """The problem response for a natsbus error; ``None`` (Django goes on) for any other."""
        if not isinstance(exception, NatsBusError):
            return None
        problem = http_problem(exception)
        log_problem(exception, problem, f"{request.method} {request.path}")
        response = JsonResponse(problem.body(), status=problem.status, content_type=PROBLEM_CONTENT_TYPE)
        for name, value in problem.headers().items():
            response[name] = value
        return response
