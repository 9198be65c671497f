"""Helpers for tests that fork: run a function in a forked child, and a server that never answers."""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
from typing import Any, Callable, Dict, Iterator


def run_forked(target: Callable[..., None], *args: Any, timeout: float = 30.0) -> Dict[str, Any]:
    """``target(*args, out)`` in a forked child; the report it put on ``out`` (the child must exit 0)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, out))
    child.start()
    try:
        report: Dict[str, Any] = out.get(timeout=timeout)
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0, child.exitcode
    return report


@contextlib.contextmanager
def silent_server(port: int) -> Iterator[socket.socket]:
    """Something on 127.0.0.1:``port`` that accepts connections and never says a word."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        silent.bind(("127.0.0.1", port))
        silent.listen(64)
        yield silent
    finally:
        silent.close()
