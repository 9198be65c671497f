"""``manage.py natsbus_worker``: serve a WorkerPool with Django set up.

The options and exit codes are ``natsbus worker``'s (:mod:`natsbus.cli.worker`):
0 drained, 1 not drained, 2 usage error, 3 no NATS server, 128 + N stopped at
once by a second signal N. ``--processes N`` and ``--reload`` run a
supervisor (:mod:`natsbus.cli.supervisor`) whose children are
``python -m django natsbus_worker`` with the same settings module.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import Any, Callable, List

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from natsbus.cli.options import EXIT_OK, exit_code
from natsbus.cli.worker import (
    LOG_FORMAT,
    Refused,
    add_pool_options,
    apply_pool_options,
    call_factory,
    child_env,
    health_address,
    load,
    pool_argv,
    refuse_connection_flags,
    serve,
    supervise,
    supervised,
    supervisor_link,
)
from natsbus.contrib.django import close_bus, get_bus, natsbus_settings
from natsbus.errors import NatsBusError


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
        "handlers finish and reply); a second signal stops at once. The options and exit codes "
        "are natsbus worker's: 0 drained, 1 not drained, 2 usage error, 3 no NATS server."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """``--pool`` and ``natsbus worker``'s options."""
        parser.add_argument("--pool", help="import path 'module:factory' (default: NATSBUS['POOL'])")
        add_pool_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Build the pool, serve until a signal, drain, close the Bus.

        Raises:
            CommandError: with the exit status as its ``returncode``.
        """
        path = options["pool"] or natsbus_settings().get("POOL")
        if not path:
            raise CommandError("no pool to run: pass --pool module:factory, or set NATSBUS['POOL']", returncode=2)
        _log_to_stderr(options.get("log_level"))
        namespace = argparse.Namespace(**options)
        try:
            code = self._serve(path, namespace)
        except Refused as exc:
            raise CommandError(str(exc), returncode=exc.code) from None
        if code != EXIT_OK:
            raise CommandError("stopped without draining: see the log above", returncode=code)
        self.stdout.write("natsbus worker stopped")

    def _serve(self, path: str, options: argparse.Namespace) -> int:
        if supervised(options):  # --processes N / --reload: children of `python -m django natsbus_worker`
            return supervise(options, _child_command(path, options), path, _child_environ(options), load(path))
        link = supervisor_link(options)  # a supervised child's socket to its supervisor, else None
        _override_connection(options)
        health = health_address(options)  # its usage errors before anything connects
        factory = load(path)
        try:
            bus = get_bus()
        except NatsBusError as exc:
            raise Refused(str(exc), exit_code(exc)) from None
        try:
            pool = call_factory(factory, bus, path)
            if pool.bus is not bus:
                refuse_connection_flags(options, f"{path} returned a WorkerPool bound to another Bus")
            for route in pool.dispatcher.routes:
                route.call = _with_fresh_db_connections(route.call)
            apply_pool_options(pool, options)
            # run() installs the signal handlers, then subscribes: a SIGTERM at any moment drains.
            return serve(pool, options.drain_timeout, path, link=link, health=health)
        finally:
            close_bus()


def _child_command(path: str, options: argparse.Namespace) -> List[str]:
    """A supervised child: this command, by ``python -m django``, with the pool and its options."""
    command = [sys.executable, "-m", "django", "natsbus_worker", "--pool", path, *pool_argv(options)]
    if options.pythonpath:
        command += ["--pythonpath", options.pythonpath]
    return command


def _child_environ(options: argparse.Namespace) -> dict[str, str]:
    """This environment, with the settings module this process runs with, and its project on the path.

    Raises:
        Refused: the settings come from ``settings.configure()``, not a module.
    """
    if not settings.SETTINGS_MODULE:  # settings.configure(): nothing a new process could import
        raise Refused("--processes and --reload need a settings module (DJANGO_SETTINGS_MODULE or --settings)")
    env = child_env([os.path.abspath(sys.path[0] or os.curdir), os.getcwd()])
    env["DJANGO_SETTINGS_MODULE"] = settings.SETTINGS_MODULE
    return env


def _override_connection(options: argparse.Namespace) -> None:
    """``--server`` / ``--connect-timeout`` win over ``NATSBUS`` for this process (its handlers' sends too)."""
    if not options.server and options.connect_timeout is None:
        return
    values = dict(natsbus_settings())
    if options.server:
        values["SERVERS"] = options.server
    if options.connect_timeout is not None:
        values["OPTIONS"] = {**(values.get("OPTIONS") or {}), "connect_timeout": options.connect_timeout}
    close_bus()  # a Bus opened before (by an app's ready()) would keep the old settings
    settings.NATSBUS = values


def _log_to_stderr(level: Any) -> None:
    """natsbus's log on stderr as ``natsbus worker`` shows it, unless LOGGING already routes it."""
    natsbus_logger = logging.getLogger("natsbus")
    if level:
        natsbus_logger.setLevel(str(level).upper())
    if natsbus_logger.hasHandlers():
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    natsbus_logger.addHandler(handler)
    if not level:
        natsbus_logger.setLevel(logging.INFO)
