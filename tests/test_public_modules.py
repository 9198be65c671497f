"""The public modules outside the top level: sorted __all__, a docstring on everything public."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "natsbus.middleware",
    "natsbus.durable",
    "natsbus.idempotency",
    "natsbus.ports",
    "natsbus.testing",
    "natsbus.pytest_plugin",
    "natsbus.server",
    "natsbus.contrib.flask",
    "natsbus.contrib.django",
    "natsbus.contrib.django.checks",
]


@pytest.mark.parametrize("name", MODULES)
def test_public_module_surface_is_documented(name: str) -> None:
    module = importlib.import_module(name)
    assert inspect.getdoc(module)
    assert module.__all__ == sorted(module.__all__)
    missing = []
    for attr in module.__all__:
        obj = getattr(module, attr)
        obj = getattr(obj, "__wrapped__", obj)  # pytest fixtures
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(attr)
            for member_name, member in vars(obj).items() if inspect.isclass(obj) else ():
                if not member_name.startswith("_") and inspect.isfunction(member) and not inspect.getdoc(member):
                    missing.append(f"{attr}.{member_name}")
    assert missing == []
