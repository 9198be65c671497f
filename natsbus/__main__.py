"""``python -m natsbus``: the same as the ``natsbus`` command."""

from .cli import main

raise SystemExit(main())
