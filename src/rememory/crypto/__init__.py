"""Encryption at rest: a keyring of per-namespace data keys (envelope encryption) and namespace ciphers.

The names load on first use: a plaintext store never imports ``cryptography``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cipher import NamespaceCipher
    from .format import SealError
    from .keyring import DEFAULT_KDF, FileKeyringStorage, KdfParams, Keyring, KeyringStorage

_WHERE = {
    "NamespaceCipher": "cipher", "SealError": "format", "DEFAULT_KDF": "keyring", "FileKeyringStorage": "keyring",
    "KdfParams": "keyring", "Keyring": "keyring", "KeyringStorage": "keyring",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "DEFAULT_KDF", "FileKeyringStorage", "KdfParams", "Keyring", "KeyringStorage", "NamespaceCipher", "SealError",
]  # fmt: skip
