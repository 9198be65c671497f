"""The Django app config: registers the system check and the settings listener."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.core.signals import setting_changed


class NatsbusConfig(AppConfig):
    """``natsbus.contrib.django`` in ``INSTALLED_APPS``."""

    name = "natsbus.contrib.django"
    label = "natsbus"
    verbose_name = "natsbus"

    def ready(self) -> None:
        """Register the ``natsbus`` system check; reopen the Bus when NATSBUS changes."""
        from . import _on_setting_changed
        from .checks import check_settings

        checks.register(check_settings, "natsbus")
        setting_changed.connect(_on_setting_changed, dispatch_uid="natsbus-setting-changed")
