"""A Flask app that sends the user-service's commands and queries over NATS.

Run a NATS server and the user-service, then the app::

    nats-server &                                   # or: natsbus demo's embedded server
    NATS_URL=nats://127.0.0.1:4222 python examples/user_service.py &
    cd examples/flask_app
    NATS_URL=nats://127.0.0.1:4222 gunicorn -c gunicorn.conf.py     # --preload -w 2 --threads 4

    curl -X POST localhost:8000/users -H 'content-type: application/json' \\
         -d '{"name": "Alice", "email": "alice@example.com"}'
    curl localhost:8000/users/<user_id>

natsbus errors are JSON problems (``NATSBUS_ERROR_RESPONSES``): a duplicate
email is 409, an unknown user 404, bad input (``-d '{}'``) 400, no
service running 503 with ``Retry-After``, a timeout 504.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import attrs
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from natsbus import BusyError, InvalidRequestError, NoHandlerError, RetryPolicy
from natsbus.contrib.flask import NatsBus
from natsbus.demo import CreateUserCommand, GetUserQuery
from natsbus.middleware import TraceContextMiddleware

cqrs = NatsBus()


def create_app(config: Optional[Dict[str, Any]] = None) -> Flask:
    """The app; ``config`` overrides (e.g. ``NATSBUS_IN_MEMORY`` in tests)."""
    app = Flask(__name__)
    app.config.update(
        NATSBUS_SERVICE_ID="flask-example",
        NATSBUS_TIMEOUT=5.0,
        NATSBUS_QUERY_TIMEOUT=3.0,
        NATSBUS_ERROR_RESPONSES=True,
        # Retry only what never ran: a full pool, or no worker yet (one restarting).
        NATSBUS_RETRY=RetryPolicy(attempts=3, backoff=0.05, retry_on=(BusyError, NoHandlerError)),
        # A W3C traceparent on every request; handlers see the caller's trace.
        NATSBUS_MIDDLEWARE=[TraceContextMiddleware()],
    )
    app.config.update(config or {})
    cqrs.init_app(app)  # checks the NATSBUS_* config; connects nothing

    @app.post("/users")
    def create_user() -> ResponseReturnValue:
        name, email = _user_fields(request.get_json(force=True, silent=True))
        created = cqrs.commands.execute(CreateUserCommand(name=name, email=email))
        return jsonify(user_id=created.user_id, created_at=created.created_at, pid=os.getpid()), 201

    @app.get("/users/<user_id>")
    def get_user(user_id: str) -> ResponseReturnValue:
        user = cqrs.queries.ask(GetUserQuery(user_id=user_id))
        return jsonify(attrs.asdict(user))

    return app


def _user_fields(data: Any) -> Tuple[str, str]:
    """``name`` and ``email`` from a JSON body; InvalidRequestError (a 400 problem) if they are not there."""
    if not isinstance(data, dict):
        raise InvalidRequestError("expected a JSON object with a name and an email")
    name, email = data.get("name"), data.get("email")
    name = name.strip() if isinstance(name, str) else ""
    email = email.strip() if isinstance(email, str) else ""
    problems = []
    if not name:
        problems.append("name must be a non-empty string")
    if "@" not in email:
        problems.append("email must be an email address")
    if problems:
        raise InvalidRequestError("; ".join(problems))
    return name, email


app = create_app()
