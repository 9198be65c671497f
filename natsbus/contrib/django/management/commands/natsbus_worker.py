"""``manage.py natsbus_worker``: serve a WorkerPool with Django set up."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from natsbus.contrib.django import close_bus, get_bus, natsbus_settings
from natsbus.contrib.django.checks import import_pool_factory
from natsbus.worker import WorkerPool


def _with_fresh_db_connections(call: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Do around each message what Django does around each request.

    Handlers run on worker threads, each with its own database connection;
    without this a connection the server dropped, or one past CONN_MAX_AGE,
    would be reused forever.
    """

    @functools.wraps(call)
    def handle(message: Any) -> Any:
        close_old_connections()
        try:
            return call(message)
        finally:
            close_old_connections()

    return handle


class Command(BaseCommand):
    """Serve commands and queries until SIGTERM or SIGINT, with Django set up."""

    help = (
        "Serve natsbus commands and queries with Django set up (models, settings). The pool comes "
        "from --pool or NATSBUS['POOL']: an import path 'module:factory' of a callable that takes "
        "a natsbus.Bus and returns a natsbus.WorkerPool. SIGTERM or SIGINT drains (in-flight "
        "handlers finish and reply); a second signal stops at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """``--pool`` and ``--drain-timeout``."""
        parser.add_argument("--pool", help="import path 'module:factory' (default: NATSBUS['POOL'])")
        parser.add_argument(
            "--drain-timeout",
            type=float,
            default=30.0,
            help="seconds to finish in-flight handlers after a signal (default 30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Build the pool, serve until a signal, drain, close the Bus."""
        path = options["pool"] or natsbus_settings().get("POOL")
        if not path:
            raise CommandError("no pool to run: pass --pool module:factory, or set NATSBUS['POOL']")
        try:
            factory = import_pool_factory(path)
        except ImportError as exc:
            raise CommandError(f"cannot import the pool factory {path!r}: {exc}") from exc
        try:
            pool = factory(get_bus())
            if not isinstance(pool, WorkerPool):
                raise CommandError(f"{path} returned {type(pool).__name__}, not a natsbus.WorkerPool")
            for route in pool.dispatcher.routes:
                route.call = _with_fresh_db_connections(route.call)
            pool.start()
            self.stdout.write(
                f"natsbus worker {pool.service_id} (pid {os.getpid()}): serving {', '.join(pool.subjects)}"
            )
            self.stdout.flush()
            pool.run(drain_timeout=options["drain_timeout"])
        finally:
            close_bus()
        self.stdout.write("natsbus worker stopped")
