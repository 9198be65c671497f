"""The public surface: __all__, docstrings, the exception tree, the error map."""

from __future__ import annotations

import inspect

import nats.errors

import natsbus
from natsbus import errors
from natsbus._transport import ERROR_MAP, map_error


def test_all_is_sorted_and_complete() -> None:
    assert natsbus.__all__ == sorted(natsbus.__all__)
    for name in natsbus.__all__:
        assert hasattr(natsbus, name), name


def test_every_public_object_has_a_docstring() -> None:
    missing = []
    for name in natsbus.__all__:
        obj = getattr(natsbus, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
            for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                if not attr.startswith("_") and inspect.isfunction(member) and not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert missing == []


def test_every_exception_derives_from_the_root() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if inspect.isclass(obj):
            assert issubclass(obj, natsbus.NatsBusError), name


def test_every_nats_error_class_is_mapped() -> None:
    nats_classes = [
        obj for obj in vars(nats.errors).values() if inspect.isclass(obj) and issubclass(obj, nats.errors.Error)
    ]
    unmapped = [cls.__name__ for cls in nats_classes if cls not in ERROR_MAP]
    assert unmapped == []


def test_map_error_picks_the_most_specific_class() -> None:
    assert isinstance(map_error(nats.errors.NoRespondersError(), "commands.X"), natsbus.NoHandlerError)
    assert isinstance(map_error(nats.errors.MaxPayloadError()), natsbus.PayloadTooLargeError)
    assert isinstance(map_error(nats.errors.ConnectionClosedError()), natsbus.BusClosedError)
    assert isinstance(map_error(OSError("x")), natsbus.TransportError)


def test_error_codes_map_to_classes() -> None:
    assert errors.error_class_for_code("404") is natsbus.NotFoundError
    assert errors.error_class_for_code(409) is natsbus.ConflictError
    assert errors.error_class_for_code("nonsense") is natsbus.ServiceError
    assert issubclass(natsbus.RequestTimeoutError, TimeoutError)
    assert issubclass(natsbus.DeadlineExceededError, TimeoutError)


def test_a_client_only_import_loads_no_worker_server_or_jetstream_code() -> None:
    import subprocess
    import sys

    script = (
        "import sys, natsbus\n"
        "from natsbus import Bus, CommandBus, QueryBus, NatsConfig\n"
        "lazy = ['natsbus.worker', 'natsbus.server', 'natsbus.durable', 'natsbus.idempotency',\n"
        "        'natsbus.metrics', 'natsbus.discovery', 'natsbus._transport.jetstream', 'urllib.request']\n"
        "print(sorted(m for m in lazy if m in sys.modules))\n"
        "from natsbus import WorkerPool, NatsServer\n"
        "print(WorkerPool.__module__, NatsServer.__module__, 'WorkerPool' in dir(natsbus))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "natsbus.worker natsbus.server True"]


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        natsbus.NoSuchThing  # noqa: B018
