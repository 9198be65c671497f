"""A URLconf for the Django tests: views that raise natsbus errors, and one that asks a query."""

from __future__ import annotations

import attrs
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from web_errors import CASES

from natsbus.contrib.django import get_query_bus
from natsbus.demo import GetUserQuery


def raise_it(request: HttpRequest, name: str) -> HttpResponse:
    raise CASES[name][0]()


def not_natsbus(request: HttpRequest) -> HttpResponse:
    raise LookupError("not a natsbus error")


def get_user(request: HttpRequest, user_id: str) -> HttpResponse:
    return JsonResponse(attrs.asdict(get_query_bus().ask(GetUserQuery(user_id=user_id))))


urlpatterns = [
    path("raise/<str:name>", raise_it),
    path("other", not_natsbus),
    path("users/<str:user_id>", get_user),
]
