"""SQLite connections for gallery.db, shared by the gallery and the server's job records.

One connection per call (sqlite3 connections must not cross threads), a generous busy
timeout so concurrent writers wait for each other instead of failing, and transactions that
commit on success and roll back on error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

BUSY_TIMEOUT_S = 30


def connect(database: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(database, timeout=BUSY_TIMEOUT_S)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    return connection


@contextmanager
def reading(database: Path) -> Iterator[sqlite3.Connection]:
    """A connection for queries, closed afterwards."""
    with closing(connect(database)) as connection:
        yield connection


@contextmanager
def transaction(database: Path) -> Iterator[sqlite3.Connection]:
    """A connection whose changes commit together when the block ends without error."""
    with closing(connect(database)) as connection, connection:
        yield connection
