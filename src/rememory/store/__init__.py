"""Stores: the embedded SQLite store (a directory) and PostgreSQL (a ``postgresql://`` URL), behind one interface."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import POSTGRES_SCHEMES
from ..errors import ConfigError, SecretRequiredError, StoreError
from .base import MemoryStore


def is_postgres_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(
    location: str | os.PathLike[str],
    *,
    busy_timeout: float = 30.0,
    read_only: bool = False,
    secret: str | bytes | None = None,
    keyring: str | os.PathLike[str] | None = None,
    kdf: Any = None,
) -> MemoryStore:
    """The store at ``location``: a ``postgresql://`` URL selects PostgreSQL, anything else is a directory.

    ``secret`` opens an encrypted store, or makes a new (empty) store an encrypted one; ``keyring``
    is a file for its keyring (default: ``keyring.json`` in the store directory, or the ``keyring``
    table of a PostgreSQL store). See docs/encryption.md. ``kdf`` (a
    :class:`rememory.crypto.KdfParams`) sets Argon2id's cost for a new keyring.
    """
    store: Any
    if is_postgres_url(location):
        from .postgres import PostgresStore

        store = PostgresStore(str(location), busy_timeout=busy_timeout, read_only=read_only)
    else:
        from .sqlite import Store

        store = Store(Path(location), busy_timeout=busy_timeout, read_only=read_only)
    try:
        _attach_keyring(store, secret, keyring, kdf)
    except BaseException:
        store.close()
        raise
    return store


def _attach_keyring(store: Any, secret: str | bytes | None, keyring: str | os.PathLike[str] | None, kdf: Any) -> None:
    """Open (or, for a new store given a secret, create) the store's keyring and seal its columns with it."""
    from ..crypto.keyring import FileKeyringStorage, Keyring
    from .sealing import SealedCodec

    mark = store.encryption_mark()
    if mark is None and secret is None:
        return  # a plaintext store, as before
    storage = FileKeyringStorage(Path(keyring)) if keyring is not None else store.default_keyring()
    if mark is None:
        assert secret is not None
        if store.count() or store.embedder_info() is not None:
            raise ConfigError(
                f"The store at {store.location} holds plaintext memories, so a secret cannot encrypt it in place. "
                "Export it (rememory export FILE), then import the archive into a new store opened with the secret "
                "(see docs/encryption.md), or open this one without a secret."
            )
        if store.read_only:
            raise StoreError(f"The store at {store.location} is new; open it once for writing to encrypt it.")
        try:
            ring = Keyring.create(storage, secret, kdf)
        except StoreError:
            if store.encryption_mark() is None:
                raise
            # Another process (a second replica starting) encrypted the new store a moment ago: open its keyring.
            ring = Keyring.open(storage, secret, store=store.location)
        else:
            store.set_encryption_mark(ring.id)
        mark = store.encryption_mark()
    elif secret is None:
        raise SecretRequiredError(
            f"The store at {store.location} is encrypted and no secret was given. Give its secret: "
            "--secret-file FILE (or REMEMORY_SECRET_FILE), the REMEMORY_SECRET environment variable, or "
            "Memory(path, secret=...)."
        )
    else:
        ring = Keyring.open(storage, secret, store=store.location)
    if ring.id != mark:
        raise StoreError(
            f"The keyring at {ring.location} belongs to another store (id {ring.id}, this store names {mark}). "
            "Give this store's own keyring (keyring=..., CLI --keyring)."
        )
    store.codec = SealedCodec(ring)
    store.server_ann = False  # pgvector cannot search sealed keys: dense search runs in process
    store.server_keys = False  # ... and the keys must be unsealed: the index holds them, opened once


__all__ = ["POSTGRES_SCHEMES", "MemoryStore", "is_postgres_url", "open_store"]
