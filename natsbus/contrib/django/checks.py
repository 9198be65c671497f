"""The ``natsbus`` system check: ``manage.py check`` reports bad ``NATSBUS`` settings."""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional

from django.core import checks

from ...bus import Bus
from ...worker import WorkerPool
from .._common import find_problems
from . import DJANGO_KEYS, HINTS, label, natsbus_settings

__all__ = ["POOL_NOT_IMPORTABLE", "check_settings", "import_pool_factory"]

#: The check id of a ``NATSBUS["POOL"]`` that does not import as a pool factory.
POOL_NOT_IMPORTABLE = "natsbus.E004"

PoolFactory = Callable[[Bus], WorkerPool]


def import_pool_factory(path: str) -> PoolFactory:
    """Import ``module:attribute`` (or ``module.attribute``): a callable ``bus -> WorkerPool``.

    Raises:
        ImportError: the module or attribute does not exist, or is not callable;
            the text says which.
    """
    import importlib

    if not isinstance(path, str) or not path.strip():
        raise ImportError(f"expected an import path like 'shop.handlers:build_pool', got {path!r}")
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ImportError(f"{path!r} is not an import path like 'shop.handlers:build_pool'")
    module = importlib.import_module(module_name)
    factory = getattr(module, attribute, None)
    if factory is None:
        raise ImportError(f"module {module_name!r} has no attribute {attribute!r}")
    if not callable(factory):
        raise ImportError(f"{path} is not callable; it should take a Bus and return a WorkerPool")
    return factory  # type: ignore[no-any-return]


def _pool_problem(values: Any) -> Optional[str]:
    if not isinstance(values, Mapping) or values.get("POOL") is None:
        return None
    try:
        import_pool_factory(values["POOL"])
    except Exception as exc:  # anything the import raises is the user's error to see
        return f"{label('POOL')} = {values['POOL']!r} does not import: {exc}"
    return None


def check_settings(app_configs: Any = None, **kwargs: Any) -> List[checks.CheckMessage]:
    """Every problem with ``settings.NATSBUS``, as ``checks.Error`` objects.

    All of them at once: a bad ``OPTIONS`` hides no bad ``SERVERS``, an
    unknown key gets a "did you mean". With ``SERVERS`` ``None`` it checks
    ``NATS_URL`` as this process sees it.
    """
    values = natsbus_settings()
    errors: List[checks.CheckMessage] = [
        checks.Error(text, id=check_id, obj="settings.NATSBUS")
        for check_id, text in find_problems(values, label, extra_keys=DJANGO_KEYS, hints=HINTS)
    ]
    pool = _pool_problem(values)
    if pool:
        errors.append(checks.Error(pool, id=POOL_NOT_IMPORTABLE, obj="settings.NATSBUS"))
    return errors
