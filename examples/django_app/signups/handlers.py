"""The worker side: the user-service and a stats query on the ORM, served by ``manage.py natsbus_worker``.

``NATSBUS["POOL"] = "signups.handlers:build_pool"`` in settings names the
factory; the command calls it with the process's Bus and runs the pool with
Django set up, opening and closing database connections around each message.
It serves everything the project's views send: ``CreateUserCommand`` and
``GetUserQuery`` (the spec's user-service, here stored in ``UserAccount``)
and ``SignupStatsQuery``.
"""

import uuid
from datetime import UTC, datetime

import attrs
from django.db import IntegrityError

from natsbus import Bus, ConflictError, InvalidRequestError, NotFoundError, Query, WorkerPool
from natsbus.demo import CreateUserCommand, GetUserQuery, User, UserCreated
from natsbus.middleware import TraceContextMiddleware

from .models import Signup, UserAccount


@attrs.frozen
class SignupStats:
    total: int
    linked: int
    users: int


@attrs.frozen
class SignupStatsQuery(Query[SignupStats]):
    """How many signups there are, how many got a user id, and how many users exist."""


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_user(command: CreateUserCommand) -> UserCreated:
    # Other services may send this command too: the handler checks its input itself.
    if not command.name.strip() or "@" not in command.email:
        raise InvalidRequestError("a user needs a name and an email address")
    try:
        account = UserAccount.objects.create(id=f"user-{uuid.uuid4()}", name=command.name, email=command.email)
    except IntegrityError:
        raise ConflictError(f"User already exists with email: {command.email}") from None
    return UserCreated(user_id=account.id, created_at=_timestamp(account.created_at))


def get_user(query: GetUserQuery) -> User:
    account = UserAccount.objects.filter(pk=query.user_id).first()
    if account is None:
        raise NotFoundError(f"User not found: {query.user_id}")
    return User(id=account.id, name=account.name, email=account.email, created_at=_timestamp(account.created_at))


def signup_stats(query: SignupStatsQuery) -> SignupStats:
    return SignupStats(
        total=Signup.objects.count(),
        linked=Signup.objects.exclude(user_id="").count(),
        users=UserAccount.objects.count(),
    )


def build_pool(bus: Bus) -> WorkerPool:
    # The handlers continue the web request's trace (the views send a traceparent).
    pool = WorkerPool(bus, service_id="signups", max_workers=4, middleware=[TraceContextMiddleware()])
    pool.register(create_user)
    pool.register(get_user)
    pool.register(signup_stats)
    return pool
