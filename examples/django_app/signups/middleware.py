"""natsbus errors as JSON responses with a fitting HTTP status."""

from typing import Callable, Optional

from django.http import HttpRequest, HttpResponse, JsonResponse

from natsbus import NatsBusError, NoHandlerError, RequestTimeoutError, ServiceError


def http_status(exc: NatsBusError) -> int:
    """The service's code (400, 404, 409, 503, 504); 503 with no handler; 504 on timeout; else 502."""
    if isinstance(exc, ServiceError):
        return exc.code if exc.code in (400, 404, 409, 503, 504) else 502
    if isinstance(exc, NoHandlerError):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    return 502


def natsbus_errors_as_json(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[..., HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        return get_response(request)

    def process_exception(request: HttpRequest, exc: Exception) -> Optional[HttpResponse]:
        if isinstance(exc, NatsBusError):
            return JsonResponse({"error": str(exc), "type": type(exc).__name__}, status=http_status(exc))
        return None

    middleware.process_exception = process_exception  # type: ignore[attr-defined]
    return middleware
