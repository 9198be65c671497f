"""gunicorn settings for the example: threaded workers, the app preloaded in the master.

``preload_app`` imports the app once in the master and forks the workers;
natsbus opens no connection at import, so each worker opens its own Bus on
its first request (and closes it when it exits).
"""

import logging
import sys

wsgi_app = "app:app"
bind = "127.0.0.1:8000"
workers = 2
threads = 4  # the gthread worker: 4 requests at once per worker, sharing one Bus
preload_app = True
graceful_timeout = 10

# Show natsbus's INFO lines (the Bus opened / closed, per process) beside gunicorn's.
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("[%(process)d] [%(name)s] %(levelname)s %(message)s"))
logging.getLogger("natsbus").addHandler(_handler)
logging.getLogger("natsbus").setLevel(logging.INFO)
