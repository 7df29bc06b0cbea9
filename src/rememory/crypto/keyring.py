"""The keyring: each namespace's random data key, wrapped by a key-encryption key derived from the secret.

Envelope encryption (the pattern of Google Tink and the AWS Encryption SDK): the secret never
encrypts data. Argon2id turns it (with the stored salt and parameters) into the key-encryption
key (KEK); the KEK wraps (AES-256-GCM) one random 32-byte data key per namespace. So:

- rotating the secret re-wraps a few dozen bytes per namespace and re-encrypts no data;
- destroying a namespace's wrapped key (crypto-erasure) makes every copy of its data unreadable;
- a wrong secret is told apart from damage by a check value sealed under the KEK.

The keyring is one small JSON document, kept apart from the data (a file, or a table of its own)
and replaced as a whole, atomically, on every change: an interrupted rotation leaves either the
old document or the new one, never a mix.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from ..errors import ConfigError, StoreError, WrongSecretError
from ..fsutil import FILE_MODE, tighten
from .cipher import NamespaceCipher, unwrap_key, wrap_key
from .format import KEY_ID_SIZE, SealError, frame

FORMAT = "rememory-keyring"
VERSION = 1
_CHECK = b"rememory keyring check v1"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id's cost. The defaults are RFC 9106's second recommendation (64 MiB, 3 passes): ~0.2 s."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024


DEFAULT_KDF = KdfParams()


def secret_bytes(secret: str | bytes) -> bytes:
    """A secret as bytes; an empty one is refused (it would protect nothing)."""
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not raw.strip():
        raise ConfigError("The secret is empty. Give a non-empty secret (a file of random text, say 32+ characters).")
    return raw


def derive_kek(secret: bytes, salt: bytes, kdf: KdfParams) -> bytes:
    return Argon2id(salt=salt, length=32, iterations=kdf.iterations, lanes=kdf.lanes,
                    memory_cost=kdf.memory_kib).derive(secret)  # fmt: skip


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any) -> bytes:
    if not isinstance(s, str):
        raise ValueError(f"{s!r} is not base64 text")
    return base64.b64decode(s.encode("ascii"), validate=True)


class KeyringStorage(Protocol):
    """Where a keyring document lives. ``update`` is an atomic read-modify-write across processes."""

    @property
    def location(self) -> str: ...

    def read(self) -> bytes | None: ...

    def update(self, change: Callable[[bytes | None], bytes | None]) -> None:
        """Call ``change`` with the current document under an exclusive lock; store what it returns
        (None: leave it), atomically."""
        ...


class FileKeyringStorage:
    """A keyring file (0600), replaced by rename; a ``.lock`` file beside it serialises writers."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def location(self) -> str:
        return str(self.path)

    def read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"Cannot read the keyring {self.path}: {exc.strerror or exc}.") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def update(self, change: Callable[[bytes | None], bytes | None]) -> None:
        with self._locked():
            new = change(self.read())
            if new is None:
                return
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(new)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            tighten(self.path, FILE_MODE)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)  # the rename itself survives a power cut
            finally:
                os.close(dfd)


@dataclass(frozen=True)
class _Doc:
    id: str
    kdf: KdfParams
    salt: bytes
    check: bytes
    keys: dict[str, tuple[bytes, bytes]]  # namespace -> (key id, wrapped data key)

    def to_bytes(self) -> bytes:
        return (json.dumps({
            "format": FORMAT, "version": VERSION, "id": self.id,
            "kdf": {"name": "argon2id", **asdict(self.kdf), "salt": _b64(self.salt)},
            "check": _b64(self.check),
            "keys": {ns: {"id": kid.hex(), "wrapped": _b64(w)} for ns, (kid, w) in sorted(self.keys.items())},
        }, indent=1) + "\n").encode("utf-8")  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes, where: str) -> _Doc:
        try:
            d = json.loads(raw.decode("utf-8"))
            if not isinstance(d, dict) or d.get("format") != FORMAT:
                raise ValueError(f"it is not a {FORMAT} document")
            if d.get("version") != VERSION:
                raise ValueError(f"its version {d.get('version')!r} is not {VERSION} (upgrade rememory?)")
            k = d["kdf"]
            if k.get("name") != "argon2id":
                raise ValueError(f"its key derivation {k.get('name')!r} is unknown")
            kdf = KdfParams(int(k["iterations"]), int(k["lanes"]), int(k["memory_kib"]))
            keys = {str(ns): (bytes.fromhex(v["id"]), _unb64(v["wrapped"])) for ns, v in d["keys"].items()}
            if any(len(kid) != KEY_ID_SIZE for kid, _ in keys.values()):
                raise ValueError("a key id is not 8 bytes")
            return cls(str(d["id"]), kdf, _unb64(k["salt"]), _unb64(d["check"]), keys)
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, binascii.Error) as exc:
            raise StoreError(
                f"The keyring at {where} is damaged ({type(exc).__name__}: {exc}). Restore it from its backup: "
                "without it, the encrypted memories cannot be read."
            ) from None


def _wrap_ad(keyring_id: str, namespace: str, key_id: bytes) -> bytes:
    return frame(b"rememory-keyring/1", keyring_id, namespace, key_id)


class Keyring:
    """An opened keyring: the KEK in memory, data keys unwrapped on first use and cached."""

    def __init__(self, storage: KeyringStorage, secret: bytes, doc: _Doc, kek: bytes):
        self.storage = storage
        self._secret = secret
        self._doc = doc
        self._kek = kek
        self._ciphers: dict[str, NamespaceCipher] = {}
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        """Names this keyring; the store records it, so another store's keyring is refused."""
        return self._doc.id

    @property
    def location(self) -> str:
        return self.storage.location

    @property
    def secret(self) -> bytes:
        """The secret it was opened with (sealed archives derive their own key from it)."""
        return self._secret

    @classmethod
    def create(cls, storage: KeyringStorage, secret: str | bytes, kdf: KdfParams | None = None) -> Keyring:
        """A new, empty keyring in ``storage``; one already there is an error (it belongs to some store)."""
        raw_secret = secret_bytes(secret)
        kdf = kdf or DEFAULT_KDF
        salt = os.urandom(16)
        kek = derive_kek(raw_secret, salt, kdf)
        kid = os.urandom(16).hex()
        doc = _Doc(kid, kdf, salt, wrap_key(kek, _CHECK, frame(b"check", kid)), {})

        def change(old: bytes | None) -> bytes:
            if old is not None:
                raise StoreError(
                    f"A keyring already exists at {storage.location}, but the store does not name it. Give the "
                    "store its own keyring location, or move that file aside if it belongs to a store deleted long ago."
                )
            return doc.to_bytes()

        storage.update(change)
        return cls(storage, raw_secret, doc, kek)

    @classmethod
    def open(cls, storage: KeyringStorage, secret: str | bytes, *, store: str) -> Keyring:
        raw_secret = secret_bytes(secret)
        raw = storage.read()
        if raw is None:
            raise StoreError(
                f"The store at {store} is encrypted, but its keyring is missing from {storage.location}. Restore the "
                "keyring from its backup (or give its location: keyring=..., CLI --keyring); without it the memories "
                "cannot be read."
            )
        doc = _Doc.parse(raw, storage.location)
        kek = derive_kek(raw_secret, doc.salt, doc.kdf)
        try:
            ok = unwrap_key(kek, doc.check, frame(b"check", doc.id)) == _CHECK
        except SealError:
            ok = False
        if not ok:
            raise WrongSecretError(
                f"The secret does not open the keyring of the store at {store} ({storage.location}): it is the wrong "
                "secret. Check --secret-file or REMEMORY_SECRET; after `rememory secret rotate`, only the new "
                "secret opens it."
            )
        return cls(storage, raw_secret, doc, kek)

    def _reload(self) -> None:
        raw = self.storage.read()
        if raw is None:
            raise StoreError(f"The keyring at {self.storage.location} disappeared. Restore it from its backup.")
        doc = _Doc.parse(raw, self.storage.location)
        if doc.salt != self._doc.salt or doc.kdf != self._doc.kdf:  # rotated by another process
            kek = derive_kek(self._secret, doc.salt, doc.kdf)
            try:
                unwrap_key(kek, doc.check, frame(b"check", doc.id))
            except SealError:
                raise WrongSecretError(
                    f"The keyring at {self.storage.location} was re-wrapped under a new secret by another process "
                    "(`rememory secret rotate`). Reopen the store with the new secret."
                ) from None
            self._kek = kek
        self._doc = doc
        self._ciphers = {ns: c for ns, c in self._ciphers.items() if doc.keys.get(ns, (b"",))[0] == c.key_id}

    def namespaces(self) -> list[str]:
        """The namespaces that have a data key."""
        with self._lock:
            self._reload()
            return sorted(self._doc.keys)

    def cipher(self, namespace: str, *, create: bool = False, key_id: bytes | None = None) -> NamespaceCipher | None:
        """The cipher of ``namespace`` (None if it has no key and ``create`` is False).

        ``key_id``: the id a sealed value names; when the cached key is another one (another process
        erased and re-created the namespace), the keyring is read again.
        """
        with self._lock:
            got = self._ciphers.get(namespace)
            if got is not None and (key_id is None or got.key_id == key_id):
                return got
            self._reload()
            entry = self._doc.keys.get(namespace)
            if entry is None and create:
                entry = self._add(namespace)
            if entry is None:
                return None
            kid, wrapped = entry
            try:
                data_key = unwrap_key(self._kek, wrapped, _wrap_ad(self._doc.id, namespace, kid))
            except SealError:
                raise StoreError(
                    f"The data key of namespace {namespace!r} in the keyring {self.storage.location} is damaged. "
                    "Restore the keyring from its backup."
                ) from None
            c = NamespaceCipher(namespace, kid, data_key)
            self._ciphers[namespace] = c
            return c

    def data_key(self, namespace: str) -> tuple[bytes, bytes] | None:
        """(key id, data key) of ``namespace`` in clear, for a sealed archive (None if it has none)."""
        with self._lock:
            self._reload()
            entry = self._doc.keys.get(namespace)
        if entry is None:
            return None
        return entry[0], unwrap_key(self._kek, entry[1], _wrap_ad(self._doc.id, namespace, entry[0]))

    def _add(self, namespace: str) -> tuple[bytes, bytes]:
        added: list[tuple[bytes, bytes]] = []

        def change(old: bytes | None) -> bytes | None:
            doc = _Doc.parse(old, self.storage.location) if old is not None else self._doc
            if doc.salt != self._doc.salt:  # rotated meanwhile: a key wrapped under our KEK would be lost
                raise WrongSecretError(
                    f"The keyring at {self.storage.location} was re-wrapped under a new secret by another process "
                    f"(`rememory secret rotate`), so no key can be added for namespace {namespace!r}. Reopen the "
                    "store (restart the server) with the new secret."
                )
            if namespace in doc.keys:  # another process made it first: use theirs
                added.append(doc.keys[namespace])
                self._doc = doc
                return None
            kid = os.urandom(KEY_ID_SIZE)
            entry = (kid, wrap_key(self._kek, os.urandom(32), _wrap_ad(doc.id, namespace, kid)))
            added.append(entry)
            self._doc = _Doc(doc.id, doc.kdf, doc.salt, doc.check, {**doc.keys, namespace: entry})
            return self._doc.to_bytes()

        self.storage.update(change)
        return added[0]

    def destroy(self, namespace: str) -> bool:
        """Crypto-erasure: drop the namespace's data key for good; every copy of its data becomes unreadable."""
        gone: list[bool] = []

        def change(old: bytes | None) -> bytes | None:
            doc = _Doc.parse(old, self.storage.location) if old is not None else self._doc
            gone.append(namespace in doc.keys)
            keys = {ns: v for ns, v in doc.keys.items() if ns != namespace}
            self._doc = _Doc(doc.id, doc.kdf, doc.salt, doc.check, keys)
            return self._doc.to_bytes() if gone[0] else None

        with self._lock:
            self.storage.update(change)
            self._ciphers.pop(namespace, None)
        return gone[0]

    def rotate(self, new_secret: str | bytes, kdf: KdfParams | None = None) -> int:
        """Re-wrap every data key under a key derived from ``new_secret`` (no data is re-encrypted).

        One atomic replacement of the document: killed at any moment, the keyring opens with exactly
        one of the two secrets. Returns how many data keys were re-wrapped.
        """
        raw_new = secret_bytes(new_secret)
        kdf = kdf or self._doc.kdf
        salt = os.urandom(16)
        new_kek = derive_kek(raw_new, salt, kdf)
        count: list[int] = []

        def change(old: bytes | None) -> bytes:
            doc = _Doc.parse(old, self.storage.location) if old is not None else self._doc
            if doc.salt != self._doc.salt:
                raise WrongSecretError(
                    f"The keyring at {self.storage.location} was rotated by another process meanwhile; nothing was "
                    "changed. Reopen the store with the current secret and rotate again."
                )
            keys = {}
            for ns, (kid, wrapped) in doc.keys.items():
                ad = _wrap_ad(doc.id, ns, kid)
                keys[ns] = (kid, wrap_key(new_kek, unwrap_key(self._kek, wrapped, ad), ad))
            count.append(len(keys))
            self._doc = _Doc(doc.id, kdf, salt, wrap_key(new_kek, _CHECK, frame(b"check", doc.id)), keys)
            return self._doc.to_bytes()

        with self._lock:
            self.storage.update(change)
            self._kek = new_kek
            self._secret = raw_new
        return count[0]
