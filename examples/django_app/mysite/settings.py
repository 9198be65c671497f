"""Settings of the example project: sqlite, no auth, natsbus (run steps: ../README.rst).

The database file is ``db.sqlite3`` here unless ``DJANGO_SQLITE_PATH`` says
otherwise; the NATS server is ``NATS_URL`` (``NATSBUS["SERVERS"]`` is None).
"""

import os
from pathlib import Path

from natsbus import BusyError, NoHandlerError, RetryPolicy
from natsbus.middleware import TraceContextMiddleware

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "natsbus.contrib.django",
    "signups",
]
MIDDLEWARE = [
    # natsbus errors from views as JSON problems: 404, 409, 400, 503 + Retry-After, 504, 500.
    "natsbus.contrib.django.ErrorResponseMiddleware",
]
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

NATSBUS = {
    "SERVERS": None,  # the NATS_URL environment variable
    "TIMEOUT": 5.0,
    "QUERY_TIMEOUT": 3.0,
    "SERVICE_ID": "django-example",
    # Retry only what never ran: a full pool, or no worker yet (one restarting).
    "RETRY": RetryPolicy(attempts=3, backoff=0.05, retry_on=(BusyError, NoHandlerError)),
    # A W3C traceparent on every request; the worker's handlers continue the trace.
    "MIDDLEWARE": [TraceContextMiddleware()],
    "POOL": "signups.handlers:build_pool",  # what manage.py natsbus_worker serves
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(process)d] [%(name)s] %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"natsbus": {"handlers": ["stderr"], "level": "INFO"}},
}
