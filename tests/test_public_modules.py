"""The public modules outside the top level: sorted __all__, a docstring on everything public."""

from __future__ import annotations

import importlib
import inspect

import pytest

import natsbus

MODULES = list(natsbus.PUBLIC_MODULES)


def test_the_package_docstring_lists_the_public_modules() -> None:
    doc = inspect.getdoc(natsbus) or ""
    listed = [line.split()[0] for line in doc.splitlines() if line.startswith("    natsbus.")]
    assert listed == MODULES == sorted(MODULES)


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
