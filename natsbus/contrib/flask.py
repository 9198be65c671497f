"""Flask integration: ``NatsBus``, an extension with the ``init_app`` pattern.

::

    from natsbus.contrib.flask import NatsBus

    cqrs = NatsBus()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["NATSBUS_SERVICE_ID"] = "web"
        app.config["NATSBUS_ERROR_RESPONSES"] = True     # natsbus errors as JSON problems
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
``NATSBUS_ERROR_RESPONSES``  ``True``: natsbus errors become JSON problems (below); default ``False``
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

With ``NATSBUS_ERROR_RESPONSES`` (or ``init_app(app, error_responses=True)``)
a natsbus error raised by a view is answered with an RFC 9457 problem
(``application/problem+json``), e.g. ``404 {"type": "about:blank", "title":
"Not Found", "status": 404, "detail": "User not found: u-1", "error":
"not_found"}``; 503s carry ``Retry-After``. The statuses:

==========================================  ===============================================
not found, conflict, invalid request        404, 409, 400, with the service's text
busy                                        503, ``Retry-After: 1``
no handler, not connected, shutting down    503, ``Retry-After: 5``
timeout (no reply, or the handler's limit)  504
a handler's failure, anything else          500, without the error's text (it is logged)
==========================================  ===============================================

(every natsbus error class: the "Errors as HTTP" table of docs/web.rst). Your own
``@app.errorhandler`` for a natsbus error class wins over this one for that
class and its subclasses.

Health probes for the app's Bus, the same JSON and statuses as ``natsbus
worker --health-port`` (docs/health.rst)::

    app.register_blueprint(cqrs.health_blueprint())     # GET /livez, GET /readyz
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from flask import Blueprint, Flask, Response, current_app, request

from ..bus import Bus
from ..errors import ConfigError, NatsBusError
from ..health import Health
from ..ports import CommandBusPort, QueryBusPort
from ._common import (
    DEFAULTS,
    PROBLEM_CONTENT_TYPE,
    BusSettings,
    LazyBus,
    find_problems,
    http_problem,
    log_problem,
    parse_settings,
    problems_text,
)

__all__ = ["NatsBus"]

PREFIX = "NATSBUS_"
EXTENSION_KEY = "natsbus"
#: The keys only the Flask integration reads.
FLASK_KEYS = ("ERROR_RESPONSES",)
HINTS = {"POOL": "Flask has no worker command; run the pool with `natsbus worker module:factory`"}


def _label(key: str) -> str:
    return f"{PREFIX}{key}" if key else "the NATSBUS_* config"


def _settings_of(app: Flask) -> Dict[str, Any]:
    return {key[len(PREFIX) :]: value for key, value in app.config.items() if key.startswith(PREFIX)}


def _flask_problems(values: Dict[str, Any]) -> List[str]:
    flag = values.get("ERROR_RESPONSES", False)
    if not isinstance(flag, bool):
        return [f"{_label('ERROR_RESPONSES')} must be True or False, got {flag!r}"]
    return []


def _error_response(error: NatsBusError) -> Response:
    """The current app's answer to a natsbus error: a JSON problem (see the module docs)."""
    problem = http_problem(error)
    log_problem(error, problem, f"{request.method} {request.path}")
    return current_app.response_class(
        json.dumps(problem.body()), status=problem.status, headers=problem.headers(), mimetype=PROBLEM_CONTENT_TYPE
    )


class NatsBus:
    """The Flask extension: ``cqrs = NatsBus(app)`` or ``cqrs.init_app(app)``.

    One instance may serve several apps; each has its own Bus and settings.
    The properties use the current app (``flask.current_app``).

    Args:
        app: The app to initialise now.
        error_responses: As for :meth:`init_app`.
    """

    def __init__(self, app: Optional[Flask] = None, *, error_responses: Optional[bool] = None) -> None:
        if app is not None:
            self.init_app(app, error_responses=error_responses)

    def init_app(self, app: Flask, *, error_responses: Optional[bool] = None) -> None:
        """Check the config, set its defaults and attach a (not yet opened) Bus to ``app``.

        Args:
            app: The app.
            error_responses: ``True``: answer natsbus errors with JSON
                problems; ``None`` (default): as ``NATSBUS_ERROR_RESPONSES`` says.

        Raises:
            ConfigError: listing every problem with the ``NATSBUS_*`` config.
        """
        if error_responses is not None:
            app.config[PREFIX + "ERROR_RESPONSES"] = error_responses
        problems = self.problems(app)
        if problems:
            raise ConfigError(problems_text(f"the NATSBUS_* config of Flask app {app.name!r}", problems))
        for key, value in DEFAULTS.items():
            app.config.setdefault(PREFIX + key, dict(value) if isinstance(value, dict) else value)
        app.config.setdefault(PREFIX + "SERVICE_ID", app.name)
        app.config.setdefault(PREFIX + "ERROR_RESPONSES", False)

        def load() -> BusSettings:
            values = _settings_of(app)
            problems = _flask_problems(values)
            if problems:
                raise ConfigError(problems_text(_label(""), problems))
            return parse_settings(values, _label, default_service_id=app.name, extra_keys=FLASK_KEYS, hints=HINTS)

        app.extensions[EXTENSION_KEY] = LazyBus(load, owner=f"Flask app {app.name!r}")
        if app.config[PREFIX + "ERROR_RESPONSES"]:
            app.register_error_handler(NatsBusError, _error_response)

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
        values = _settings_of(target)
        found = [text for _, text in find_problems(values, _label, FLASK_KEYS, HINTS)]
        return found + _flask_problems(values)

    def close(self, app: Optional[Flask] = None) -> None:
        """Close the app's Bus now; the next use opens a new one. Safe twice."""
        self._holder(app).close()

    def health_blueprint(self, name: str = "natsbus_health") -> Blueprint:
        """A blueprint with ``GET /livez`` and ``GET /readyz`` for the app's Bus (docs/health.rst).

        ``app.register_blueprint(cqrs.health_blueprint())``. They answer as
        ``natsbus worker --health-port`` does (:mod:`natsbus.health`): 200
        with ``{"status": "ok", "reason": "", "checks": {...}}``, or 503 with
        ``"status": "unavailable"`` and the reason. ``/readyz``: the Bus is
        connected (it is opened if no view has opened it yet);
        ``/livez``: the Bus's event loop answers, and it never opens a
        connection.

        Args:
            name: The blueprint's name (one per app).

        Returns:
            The blueprint; register it with a ``url_prefix`` to move the paths.
        """
        blueprint = Blueprint(name, __name__)

        @blueprint.get("/livez")
        def livez() -> Response:
            return _health_response(self._holder().liveness())

        @blueprint.get("/readyz")
        def readyz() -> Response:
            return _health_response(self._holder().readiness())

        return blueprint


def _health_response(health: Health) -> Response:
    return current_app.response_class(
        json.dumps(health.to_json(), default=str),
        status=200 if health.ok else 503,
        headers={"Cache-Control": "no-store"},
        mimetype="application/json",
    )
