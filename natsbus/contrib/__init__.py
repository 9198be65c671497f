"""Integrations with web frameworks.

* :mod:`natsbus.contrib.flask`: the ``NatsBus`` extension (``init_app``,
  ``NATSBUS_*`` config keys).
* :mod:`natsbus.contrib.django`: a Django app (``NATSBUS = {...}``, a system
  check, ``manage.py natsbus_worker``, ``execute_on_commit()``).

Both keep one :class:`~natsbus.Bus` per process, opened on first use: under
a pre-forking server (gunicorn ``--preload``, uWSGI) the master imports the
app without connecting, and each worker opens its own connection the first
time a view sends something. The Bus is closed when the process exits.
"""
