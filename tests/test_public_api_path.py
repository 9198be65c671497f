"""The transport's public-API path, used when nats-py lacks the internals the fast path needs.

natsbus hands messages straight from nats-py's parser to waiting threads
and writes frames itself when this nats-py allows it (``FAST_PATH``);
otherwise it uses only nats-py's public API. Both paths must behave alike,
so the core integration tests run again here with the fast path off.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from natsbus import _transport

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.timeout(240)


def test_fast_path_is_used_with_this_nats_py() -> None:
    assert _transport.FAST_PATH is True


def test_core_suites_pass_on_the_public_api_path() -> None:
    env = dict(os.environ, NATSBUS_FAST_PATH="0")
    check = subprocess.run(
        [sys.executable, "-c", "import natsbus._transport as t; print(t.FAST_PATH)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == "False"
    suites = ["test_bus.py", "test_worker.py", "test_batch.py", "test_policies.py", "test_worker_daemon.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout.splitlines()[-1]
