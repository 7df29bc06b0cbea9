"""Settings: explicit argument > ``REMEMORY_*`` environment variable > default."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

from .limits import DEFAULT_MAX_TEXT_BYTES

T = TypeVar("T")

DEFAULT_EMBEDDER = "multilingual-e5-small"  # see embed/registry.py and the README, "Embedders"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")  # a store named by such a URL lives in PostgreSQL


def user_data_dir() -> Path:
    """The per-user data directory (``REMEMORY_HOME`` overrides it)."""
    env = os.environ.get("REMEMORY_HOME")
    if env:
        return Path(env)
    from platformdirs import user_data_path

    return user_data_path("rememory", appauthor=False)


def resolve_store_path(path: str | os.PathLike[str] | None) -> Path | str:
    """Where a store lives: ``path``, else ``$REMEMORY_STORE``, else ``<user data dir>/default``.

    A ``postgresql://`` URL is returned as it is (a string); anything else is a directory path.
    """
    if path is None:
        path = os.environ.get("REMEMORY_STORE") or None
    if path is None:
        return user_data_dir() / "default"
    if isinstance(path, str) and path.startswith(POSTGRES_SCHEMES):
        return path
    return Path(path)


def resolve_secret(secret: str | bytes | None) -> str | bytes | None:
    """An encrypted store's secret: ``secret``, else ``$REMEMORY_SECRET``, else the file ``$REMEMORY_SECRET_FILE``.

    Never a command-line argument (those show in ``ps``). A file's one trailing newline is dropped.
    """
    if secret is not None:
        return secret
    env = os.environ.get("REMEMORY_SECRET")
    if env:
        return env
    path = os.environ.get("REMEMORY_SECRET_FILE")
    return read_secret_file(path) if path else None


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The secret kept in the file ``path`` (its trailing newline dropped)."""
    from .errors import ConfigError

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"Cannot read the secret file {path}: {exc.strerror or exc}. Check the path.") from None
    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
    if not raw.strip():
        raise ConfigError(f"The secret file {path} is empty. Put the secret in it (say 32+ random characters).")
    return raw


def dataclass_from_dict(cls: type[T], d: dict, what: str) -> T:
    """Build config dataclass ``cls`` from ``d``, naming unknown keys (a typo must not silently use a default)."""
    from .errors import ConfigError

    valid = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - valid)
    if unknown:
        raise ConfigError(f"Unknown {what} keys {unknown}; valid keys are {sorted(valid)}.")
    return cls(**d)


def resolve_max_text_bytes(value: int | None) -> int:
    from .errors import ConfigError

    if value is None:
        raw = os.environ.get("REMEMORY_MAX_TEXT_BYTES")
        if raw is None:
            return DEFAULT_MAX_TEXT_BYTES
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"REMEMORY_MAX_TEXT_BYTES must be a whole number of bytes, got {raw!r}.") from None
    if value < 1:
        raise ConfigError(f"max_text_bytes must be at least 1, got {value}.")
    return value
