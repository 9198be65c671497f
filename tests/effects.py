"""Side effects counted in sqlite, so that they survive the process that made them.

``record`` is a handler's effect with no protection of its own: what the
idempotency tests need, to see whether natsbus ran a handler twice.
``apply_once`` is the pattern docs/exactly-once.rst recommends for durable commands:
the effect and the ``command_id`` are written in one transaction, so a
delivery after a crash between the handler's commit and natsbus storing the
reply finds the id and does nothing. Every call of either is logged in
``invocations`` (outside the transaction), so tests can tell runs from effects.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Dict, List, Union

PathLike = Union[str, Path]


def _connect(path: PathLike) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def create(path: PathLike) -> None:
    with _connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS effects (command_id TEXT NOT NULL, n INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS applied (command_id TEXT PRIMARY KEY, result INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS invocations (command_id TEXT NOT NULL)")
    conn.close()


def record(path: PathLike, command_id: str, n: int) -> int:
    """The effect, unprotected: a second run writes a second row."""
    conn = _connect(path)
    try:
        conn.execute("INSERT INTO invocations (command_id) VALUES (?)", (command_id,))
        conn.execute("INSERT INTO effects (command_id, n) VALUES (?, ?)", (command_id, n))
    finally:
        conn.close()
    return n * 2


def apply_once(path: PathLike, command_id: str, n: int) -> int:
    """The effect and the applied command_id in one transaction; a repeat returns the first result."""
    conn = _connect(path)
    try:
        conn.execute("INSERT INTO invocations (command_id) VALUES (?)", (command_id,))
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT result FROM applied WHERE command_id = ?", (command_id,)).fetchone()
        if row is not None:
            conn.execute("COMMIT")
            return int(row[0])
        conn.execute("INSERT INTO effects (command_id, n) VALUES (?, ?)", (command_id, n))
        conn.execute("INSERT INTO applied (command_id, result) VALUES (?, ?)", (command_id, n * 2))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return n * 2


def count(path: PathLike, table: str = "effects") -> int:
    conn = _connect(path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def per_command(path: PathLike, table: str = "effects") -> Dict[str, int]:
    """command_id -> rows in ``table``."""
    conn = _connect(path)
    try:
        rows = conn.execute(f"SELECT command_id, COUNT(*) FROM {table} GROUP BY command_id").fetchall()
    finally:
        conn.close()
    return {str(cid): int(n) for cid, n in rows}


def numbers(path: PathLike) -> List[int]:
    conn = _connect(path)
    try:
        return sorted(int(n) for (n,) in conn.execute("SELECT n FROM effects").fetchall())
    finally:
        conn.close()
