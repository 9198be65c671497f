"""A Flask app that sends the user-service's commands and queries over NATS.

Run the user-service (``python examples/user_service.py``), then::

    cd examples/flask_app
    NATS_URL=nats://127.0.0.1:4222 gunicorn -c gunicorn.conf.py     # --preload -w 2 --threads 4

    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"name": "Alice", "email": "alice@example.com"}'
    curl localhost:8000/users/<user_id>

Errors become HTTP statuses: a duplicate email is 409, an unknown user
404, bad input 400, no service running 503, a timeout 504.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import attrs
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from natsbus import NatsBusError, NoHandlerError, RequestTimeoutError, ServiceError
from natsbus.contrib.flask import NatsBus
from natsbus.demo import CreateUserCommand, GetUserQuery

cqrs = NatsBus()


def create_app(config: Optional[Dict[str, Any]] = None) -> Flask:
    """The app; ``config`` overrides (e.g. ``NATSBUS_IN_MEMORY`` in tests)."""
    app = Flask(__name__)
    app.config.update(NATSBUS_SERVICE_ID="flask-example", NATSBUS_TIMEOUT=5.0, NATSBUS_QUERY_TIMEOUT=3.0)
    app.config.update(config or {})
    cqrs.init_app(app)

    @app.post("/users")
    def create_user() -> ResponseReturnValue:
        data = request.get_json(force=True, silent=True) or {}
        created = cqrs.commands.execute(CreateUserCommand(name=data.get("name", ""), email=data.get("email", "")))
        return jsonify(user_id=created.user_id, created_at=created.created_at, pid=os.getpid()), 201

    @app.get("/users/<user_id>")
    def get_user(user_id: str) -> ResponseReturnValue:
        user = cqrs.queries.ask(GetUserQuery(user_id=user_id))
        return jsonify(attrs.asdict(user))

    @app.errorhandler(NatsBusError)
    def natsbus_error(exc: NatsBusError) -> Tuple[Any, int]:
        return jsonify(error=str(exc), type=type(exc).__name__), http_status(exc)

    return app


def http_status(exc: NatsBusError) -> int:
    """The HTTP status for a natsbus error: the service's code, 503, 504 or 502."""
    if isinstance(exc, ServiceError):
        return exc.code if exc.code in (400, 404, 409, 503, 504) else 502
    if isinstance(exc, NoHandlerError):
        return 503
    if isinstance(exc, RequestTimeoutError):
        return 504
    return 502


app = create_app()
