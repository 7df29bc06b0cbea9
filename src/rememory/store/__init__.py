"""Stores: the embedded SQLite store (a directory) and PostgreSQL (a ``postgresql://`` URL), behind one interface."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import POSTGRES_SCHEMES
from .base import MemoryStore


def is_postgres_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(
    location: str | os.PathLike[str], *, busy_timeout: float = 30.0, read_only: bool = False
) -> MemoryStore:
    """The store at ``location``: a ``postgresql://`` URL selects PostgreSQL, anything else is a directory."""
    if is_postgres_url(location):
        from .postgres import PostgresStore

        return PostgresStore(str(location), busy_timeout=busy_timeout, read_only=read_only)
    from .sqlite import Store

    return Store(Path(location), busy_timeout=busy_timeout, read_only=read_only)


__all__ = ["POSTGRES_SCHEMES", "MemoryStore", "is_postgres_url", "open_store"]
