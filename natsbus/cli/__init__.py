"""The ``natsbus`` command line: ``natsbus worker``, the ops commands, batches, bench, demo."""

from .main import main

__all__ = ["main"]
