"""A URLconf for the Django health-view tests: the two probes, as a project's urls.py puts them."""

from __future__ import annotations

from django.urls import path

from natsbus.contrib.django import views as natsbus_views

urlpatterns = [
    path("livez", natsbus_views.livez),
    path("readyz", natsbus_views.readyz),
]
