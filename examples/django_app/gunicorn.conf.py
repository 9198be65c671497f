"""gunicorn settings for the example: threaded workers, the app preloaded in the master.

``preload_app`` sets Django up once in the master and forks the workers;
natsbus opens no connection until a view sends something, so each worker
opens its own Bus (and closes it when it exits). Logging comes from
``LOGGING`` in mysite/settings.py.
"""

wsgi_app = "mysite.wsgi:application"
bind = "127.0.0.1:8000"
workers = 2
threads = 4  # the gthread worker: 4 requests at once per worker, sharing one Bus
preload_app = True
graceful_timeout = 10
raw_env = ["DJANGO_SETTINGS_MODULE=mysite.settings"]
