"""Health probe views for the process's Bus: ``livez`` and ``readyz`` (docs/health.rst).

In ``urls.py``::

    from natsbus.contrib.django import views as natsbus_views

    urlpatterns = [
        ...,
        path("livez", natsbus_views.livez),
        path("readyz", natsbus_views.readyz),
    ]

They answer as ``natsbus worker --health-port`` does (:mod:`natsbus.health`):
200 with ``{"status": "ok", "reason": "", "checks": {...}}``, or 503 with
``"status": "unavailable"`` and the reason; GET and HEAD only (405 else).
"""

from __future__ import annotations

from typing import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse

from ...health import Health
from . import process_bus

__all__ = ["livez", "readyz"]


def _response(request: HttpRequest, health: Callable[[], Health]) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    result = health()
    response = JsonResponse(result.to_json(), status=200 if result.ok else 503)
    response["Cache-Control"] = "no-store"
    return response


def livez(request: HttpRequest) -> HttpResponse:
    """``/livez``: the process's Bus's event loop answers; never opens a connection.

    200 also before the Bus is first used (``{"loop": "not opened"}``).
    """
    return _response(request, process_bus.liveness)


def readyz(request: HttpRequest) -> HttpResponse:
    """``/readyz``: the process's Bus is connected; it is opened now if no view opened it yet.

    503 ``"not connected (reconnecting)"`` while NATS is away.
    """
    return _response(request, process_bus.readiness)
