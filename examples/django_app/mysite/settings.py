"""Settings of the example project: sqlite, no auth, natsbus.

The database file is ``db.sqlite3`` here unless ``DJANGO_SQLITE_PATH`` says
otherwise; the NATS server is ``NATS_URL`` (``NATSBUS["SERVERS"]`` is None).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "example-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "natsbus.contrib.django",
    "signups",
]
MIDDLEWARE = [
    "signups.middleware.natsbus_errors_as_json",
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
    "POOL": "signups.handlers:build_pool",  # what manage.py natsbus_worker serves
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(process)d] [%(name)s] %(levelname)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"natsbus": {"handlers": ["stderr"], "level": "INFO"}},
}
