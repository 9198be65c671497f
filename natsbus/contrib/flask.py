"""Flask integration: ``NatsBus``, an extension with the ``init_app`` pattern.

::

    from natsbus.contrib.flask import NatsBus

    cqrs = NatsBus()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["NATSBUS_SERVICE_ID"] = "web"
        cqrs.init_app(app)

        @app.post("/users")
        def create_user():
            created = cqrs.commands.execute(CreateUserCommand(**request.get_json()))
            return {"user_id": created.user_id}, 201

        return app

Config keys (all optional):

=========================  ================================================================
``NATSBUS_SERVERS``        URL(s); default ``None``: ``NATS_URL`` (else nats://127.0.0.1:4222)
``NATSBUS_TIMEOUT``        default seconds for commands (5.0); ``None``: no limit
``NATSBUS_QUERY_TIMEOUT``  default seconds for queries (3.0)
``NATSBUS_SERVICE_ID``     ``service_id`` in request envelopes; default the app's name
``NATSBUS_OPTIONS``        other :class:`~natsbus.NatsConfig` fields, e.g. ``{"connect_timeout": 2}``
``NATSBUS_IN_MEMORY``      a :class:`~natsbus.testing.InMemoryBus`: views run handlers
                           in-process, no server (for testing views)
=========================  ================================================================

One Bus per app per process, opened the first time a view uses it — never
at import, so a gunicorn ``--preload`` master forks without a connection
and every worker opens its own. Its threads share it. It is closed when
the process exits (or by :meth:`NatsBus.close`). Settings are read, and
checked, when the Bus is opened; a typo such as ``NATSBUS_TIMOUT`` is an
error, not ignored.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from flask import Flask, current_app

from ..bus import Bus
from ..ports import CommandBusPort, QueryBusPort
from ._common import DEFAULTS, BusSettings, LazyBus, find_problems, parse_settings

__all__ = ["NatsBus"]

PREFIX = "NATSBUS_"
EXTENSION_KEY = "natsbus"


def _label(key: str) -> str:
    return f"{PREFIX}{key}" if key else "the NATSBUS_* config"


def _settings_of(app: Flask) -> Dict[str, Any]:
    return {key[len(PREFIX) :]: value for key, value in app.config.items() if key.startswith(PREFIX)}


class NatsBus:
    """The Flask extension: ``cqrs = NatsBus(app)`` or ``cqrs.init_app(app)``.

    One instance may serve several apps; each has its own Bus and settings.
    The properties use the current app (``flask.current_app``).

    Args:
        app: The app to initialise now.
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set the config defaults and attach a (not yet opened) Bus to ``app``."""
        for key, value in DEFAULTS.items():
            app.config.setdefault(PREFIX + key, dict(value) if isinstance(value, dict) else value)
        app.config.setdefault(PREFIX + "SERVICE_ID", app.name)

        def load() -> BusSettings:
            return parse_settings(_settings_of(app), _label, default_service_id=app.name)

        app.extensions[EXTENSION_KEY] = LazyBus(load, owner=f"Flask app {app.name!r}")

    @staticmethod
    def _holder(app: Optional[Flask] = None) -> LazyBus:
        target = app if app is not None else current_app
        try:
            holder: LazyBus = target.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError("natsbus is not initialised on this app; call NatsBus.init_app(app) first") from None
        return holder

    @property
    def commands(self) -> CommandBusPort:
        """The current app's command bus (opens the Bus on first use)."""
        return self._holder().ports()[0]

    @property
    def queries(self) -> QueryBusPort:
        """The current app's query bus (opens the Bus on first use)."""
        return self._holder().ports()[1]

    @property
    def bus(self) -> Bus:
        """The current app's :class:`~natsbus.Bus` (opens it on first use)."""
        return self._holder().bus()

    def problems(self, app: Optional[Flask] = None) -> List[str]:
        """What is wrong with the ``NATSBUS_*`` config, without connecting (``[]``: nothing)."""
        target = app if app is not None else current_app
        return [text for _, text in find_problems(_settings_of(target), _label)]

    def close(self, app: Optional[Flask] = None) -> None:
        """Close the app's Bus now; the next use opens a new one. Safe twice."""
        self._holder(app).close()
