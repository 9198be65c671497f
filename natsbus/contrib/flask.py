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

===========================  ==============================================================
``NATSBUS_SERVERS``          URL(s); default ``None``: ``NATS_URL`` (else nats://127.0.0.1:4222)
``NATSBUS_TIMEOUT``          default seconds for commands (5.0); ``None``: no limit
``NATSBUS_QUERY_TIMEOUT``    default seconds for queries (3.0)
``NATSBUS_SERVICE_ID``       ``service_id`` in request envelopes; default the app's name
``NATSBUS_OPTIONS``          other :class:`~natsbus.NatsConfig` fields, e.g. ``{"connect_timeout": 2}``
``NATSBUS_RETRY``            a :class:`~natsbus.RetryPolicy` for commands and queries
``NATSBUS_MIDDLEWARE``       client middleware for both, e.g. ``[TraceContextMiddleware()]``
``NATSBUS_QUERY_CACHE``      a :class:`~natsbus.QueryCache` (each process has its own copy)
``NATSBUS_IN_MEMORY``        a :class:`~natsbus.testing.InMemoryBus`: views run handlers
                             in-process, no server (for testing views)
===========================  ==============================================================

``init_app`` checks the config and raises :class:`~natsbus.ConfigError`
listing every problem (a misspelt key gets a "did you mean"); it connects
nothing. One Bus per app per process is opened the first time a view uses
it — never at import, so a gunicorn ``--preload`` master forks without a
connection and every worker opens its own, reading ``NATS_URL`` then. Its
threads share it. It is closed when the process exits (or by
:meth:`NatsBus.close`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from flask import Flask, current_app

from ..bus import Bus
from ..errors import ConfigError
from ..ports import CommandBusPort, QueryBusPort
from ._common import DEFAULTS, BusSettings, LazyBus, find_problems, parse_settings, problems_text

__all__ = ["NatsBus"]

PREFIX = "NATSBUS_"
EXTENSION_KEY = "natsbus"
HINTS = {"POOL": "Flask has no worker command; run the pool with `natsbus worker module:factory`"}


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
        """Check the config, set its defaults and attach a (not yet opened) Bus to ``app``.

        Raises:
            ConfigError: listing every problem with the ``NATSBUS_*`` config.
        """
        problems = self.problems(app)
        if problems:
            raise ConfigError(problems_text(f"the NATSBUS_* config of Flask app {app.name!r}", problems))
        for key, value in DEFAULTS.items():
            app.config.setdefault(PREFIX + key, dict(value) if isinstance(value, dict) else value)
        app.config.setdefault(PREFIX + "SERVICE_ID", app.name)

        def load() -> BusSettings:
            return parse_settings(_settings_of(app), _label, default_service_id=app.name, hints=HINTS)

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
        """What is wrong with the ``NATSBUS_*`` config, without connecting (``[]``: nothing).

        Reads ``NATS_URL`` to check it when ``NATSBUS_SERVERS`` is ``None``;
        the Bus reads it again when it opens, in the process that uses it.
        """
        target = app if app is not None else current_app
        return [text for _, text in find_problems(_settings_of(target), _label, hints=HINTS)]

    def close(self, app: Optional[Flask] = None) -> None:
        """Close the app's Bus now; the next use opens a new one. Safe twice."""
        self._holder(app).close()
