"""Integrations with web frameworks.

* :mod:`natsbus.contrib.flask`: the ``NatsBus`` extension (``init_app``,
  ``NATSBUS_*`` config keys, ``NATSBUS_ERROR_RESPONSES``).
* :mod:`natsbus.contrib.django`: a Django app (``NATSBUS = {...}``, a system
  check, ``manage.py natsbus_worker``, ``execute_on_commit()``,
  ``ErrorResponseMiddleware``).

Both take the same settings (servers, timeouts, retry policy, client
middleware, query cache), check them before the first request and report
every problem at once, and can answer natsbus errors with RFC 9457 JSON
problems (404, 409, 400, 503 with ``Retry-After``, 504, 500).

Both keep one :class:`~natsbus.Bus` per process, opened on first use: under
a pre-forking server (gunicorn ``--preload``, uWSGI) the master imports the
app without connecting, and each worker opens its own connection the first
time a view sends something. The Bus is closed when the process exits.
"""
