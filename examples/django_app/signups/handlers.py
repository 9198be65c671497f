"""The worker side: handlers that use the ORM, served by ``manage.py natsbus_worker``.

``NATSBUS["POOL"] = "signups.handlers:build_pool"`` in settings names the
factory; the command calls it with the process's Bus and runs the pool with
Django set up, opening and closing database connections around each message.
"""

import attrs

from natsbus import Bus, Query, WorkerPool

from .models import Signup


@attrs.frozen
class SignupStats:
    total: int
    linked: int


@attrs.frozen
class SignupStatsQuery(Query[SignupStats]):
    """How many signups there are, and how many got a user id."""


def signup_stats(query: SignupStatsQuery) -> SignupStats:
    return SignupStats(total=Signup.objects.count(), linked=Signup.objects.exclude(user_id="").count())


def build_pool(bus: Bus) -> WorkerPool:
    pool = WorkerPool(bus, service_id="signups", max_workers=4)
    pool.register(signup_stats)
    return pool
