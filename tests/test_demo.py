"""The demo and the example daemon, run as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from natsbus import Bus, NatsServer

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_on_the_embedded_server() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "natsbus", "demo"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "started the embedded nats-server" in proc.stdout
    assert '"error": "User already exists with email: alice@example.com"' in proc.stdout
    assert proc.stdout.rstrip().endswith("demo succeeded")


def _request(bus: Bus, subject: str, body: str) -> dict:  # type: ignore[type-arg]
    return json.loads(bus.request(subject, body.encode(), timeout=5).data)  # type: ignore[no-any-return]


def test_example_user_service_speaks_the_spec(nats_server: NatsServer) -> None:
    env = dict(os.environ, NATS_URL=nats_server.url)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "user_service.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with Bus(nats_server.url) as bus:
            # Hand-written envelopes, as a client in another language would send.
            create = (
                '{"command_type":"CreateUserCommand","command_id":"cmd-123e4567-e89b-12d3-a456-426614174000",'
                '"service_id":"other-lang","timestamp":"2025-11-29T12:34:56Z",'
                '"payload":{"name":"Alice","email":"alice@example.com"}}'
            )
            deadline = time.monotonic() + 20
            while True:  # until the daemon has subscribed
                try:
                    created = _request(bus, "commands.CreateUserCommand", create)
                    break
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            assert created["success"] is True
            assert created["command_id"] == "cmd-123e4567-e89b-12d3-a456-426614174000"
            user_id = created["payload"]["user_id"]
            # A retry of the same command_id (a lost reply) gets the first reply again ...
            assert _request(bus, "commands.CreateUserCommand", create) == created
            # ... while another command for the same email is the spec's duplicate error.
            other_id = create.replace(
                "cmd-123e4567-e89b-12d3-a456-426614174000", "cmd-223e4567-e89b-12d3-a456-426614174000"
            )
            duplicate = _request(bus, "commands.CreateUserCommand", other_id)
            assert duplicate == {
                "success": False,
                "command_id": "cmd-223e4567-e89b-12d3-a456-426614174000",
                "timestamp": duplicate["timestamp"],
                "payload": None,
                "error": "User already exists with email: alice@example.com",
            }
            query = (
                '{"query_type":"GetUserQuery","query_id":"qry-1","service_id":"other-lang",'
                '"timestamp":"2025-11-29T12:34:56Z","payload":{"user_id":"%s"}}' % user_id
            )
            found = _request(bus, "queries.GetUserQuery", query)
            assert found["success"] is True
            assert found["payload"]["email"] == "alice@example.com"
            assert sorted(found["payload"]) == ["created_at", "email", "id", "name"]
            missing = _request(bus, "queries.GetUserQuery", query.replace(user_id, "user-missing"))
            assert missing["success"] is False and missing["error"] == "User not found: user-missing"
            bad_input = other_id.replace('"name":"Alice",', "").replace("cmd-223e4567", "cmd-323e4567")
            bad = _request(bus, "commands.CreateUserCommand", bad_input)
            assert bad["error"] == "Invalid request format: expected 'name' field"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "worker pool user-service stopped" in out
