"""The one encryption layer of both backends: what an episode becomes in columns, and back.

A backend never encrypts anything itself. It asks its codec for the column values of an episode
(``episode``), of staged keys (``staged``), and turns what it reads back into typed records
(``row``, ``index_row``, ``artifact``). :class:`PlainCodec` keeps today's plaintext columns;
:class:`SealedCodec` seals every value derived from an episode's content under its namespace's
key (AES-256-GCM, bound to the namespace, the column and the episode id):

==============  =========================================================================
keywords        sealed, base64 text
time            sealed with the episode's parsed time (``event_time``), base64 text; the
                ``event_time`` column stays NULL
key, ctx_key    sealed int8 vector and its scale; the ``*_scale`` columns hold 1.0, and
                PostgreSQL's pgvector columns stay NULL (dense search runs in process)
tokens          keyed hashes (see NamespaceCipher.token_hash), sealed
cell            the engine config, sealed, base64 text
streams         the artifact's streams packed into one blob, sealed: one ``uint8`` stream
==============  =========================================================================

The digest column holds a keyed digest (format 3) made by :class:`~rememory.Memory`, which also
seeds cells with a keyed hash of the keywords. A value that fails to open names its episode.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..crypto.format import KEY_ID_SIZE, SealError
from ..engine import Artifact, SharedModel
from ..errors import IntegrityError
from . import shards
from .base import build_index_row
from .records import IndexRow, NewEpisode, Row, StagedKey, StoredModel

if TYPE_CHECKING:
    from ..crypto.cipher import NamespaceCipher
    from ..crypto.keyring import Keyring


@dataclass(frozen=True)
class KeyColumns:
    """A row's recall keys as stored; ``unit``/``ctx_unit``: float copies for server-side search (None: none)."""

    key: bytes
    key_scale: float
    ctx_key: bytes
    ctx_key_scale: float
    unit: np.ndarray | None
    ctx_unit: np.ndarray | None


@dataclass(frozen=True)
class EpisodeColumns:
    """What a backend writes for one episode (besides ids, sizes, the digest and bookkeeping)."""

    keywords: str
    time: str | None
    keys: KeyColumns
    tokens: bytes
    event_time: float | None
    cell: str  # the engine config: JSON text, or sealed
    streams: dict[str, np.ndarray]  # what the backend packs (a shard span, or a weights blob)


class PlainCodec:
    """Plaintext columns, exactly as stores wrote them before encryption existed."""

    keyring: Keyring | None = None
    sealed = False

    def keys(self, namespace: str, id: str, key: np.ndarray, scale: float, ctx: np.ndarray,
             ctx_scale: float) -> KeyColumns:  # fmt: skip
        return KeyColumns(
            key.astype(np.int8).tobytes(), float(scale), ctx.astype(np.int8).tobytes(), float(ctx_scale),
            key.astype(np.float32) * np.float32(scale), ctx.astype(np.float32) * np.float32(ctx_scale),
        )  # fmt: skip

    def episode(self, item: NewEpisode, art: Artifact) -> EpisodeColumns:
        ep = item.episode
        return EpisodeColumns(
            ep.keywords, ep.time, self.keys(ep.namespace, ep.id, item.key, item.key_scale, item.ctx_key,
                                            item.ctx_key_scale),
            item.tokens.astype("<u4").tobytes(), item.event_time, json.dumps(art.config, separators=(",", ":")),
            art.streams,
        )  # fmt: skip

    def staged(self, namespace: str, id: str, k: StagedKey) -> KeyColumns:
        return self.keys(namespace, id, k.key, k.key_scale, k.ctx_key, k.ctx_key_scale)

    def artifact_columns(self, namespace: str, id: str, art: Artifact) -> tuple[str, dict[str, np.ndarray]]:
        """An artifact as stored: its engine config (the ``cell`` column) and the streams the backend packs."""
        return json.dumps(art.config, separators=(",", ":")), art.streams

    def model_columns(self, namespace: str, model: SharedModel) -> tuple[str, bytes]:
        """A shared model's config (JSON text) and data as the ``models`` table keeps them."""
        return json.dumps(model.config, separators=(",", ":"), sort_keys=True), bytes(model.data)

    def model(self, t: Sequence[Any]) -> StoredModel:
        """A :class:`StoredModel` from (namespace, engine, version, config, data, trained_on, created_at);
        ``ValueError``/``TypeError`` say what is damaged."""
        ns, engine, version, cfg, data, trained_on, created_at = (_blob(v) for v in t)
        cfg, data = self._open_model(str(ns), f"{engine}/{version}", cfg, data)
        return StoredModel(str(ns), SharedModel(str(engine), int(version), engine_config(cfg), bytes(data),
                                                int(trained_on)), int(created_at))  # fmt: skip

    def _open_model(self, namespace: str, owner: str, cfg: Any, data: Any) -> tuple[Any, Any]:
        return cfg, data

    def row(self, t: Sequence[Any]) -> Row:
        """A :class:`Row` from ``ROW_COLS``. Damaged values stay visibly wrong (not guessed): ``damaged()``
        and the digest check report them."""
        digest = _blob(t[7])
        return Row(
            rowid=int(t[0]), id=str(t[1]), namespace=str(t[2]), keywords=str(t[3]),
            time=t[4] if isinstance(t[4], str) else None, created_at=_int(t[5], 0), n_bytes=_int(t[6], -1),
            digest=digest if isinstance(digest, bytes) else b"", digest_format=_int(t[8], 0), engine=str(t[9]),
        )  # fmt: skip

    def index_row(self, t: Sequence[Any], dim: int | None, namespace: str, event_time: Any, time: Any) -> IndexRow:
        """From (rowid, id, key, scale, ctx_key, ctx_scale, tokens) as stored; ``time`` is the time column."""
        return build_index_row([_blob(v) for v in t], dim, event_time)

    def artifact(self, r: Row, cell: Any, streams: dict[str, np.ndarray]) -> Artifact:
        """The artifact from a stored config and streams; ``ValueError``/``TypeError`` name what is damaged."""
        return Artifact(r.engine, engine_config(cell), streams)

    def seal_bytes(self, namespace: str, data: bytes, purpose: str, owner: str) -> bytes:
        """Any other blob a backend keeps for ``namespace`` (a shared model, say), as stored: sealed under the
        namespace's key and bound to ``purpose`` and ``owner`` (its id) in an encrypted store, else as it is."""
        return bytes(data)

    def open_bytes(self, namespace: str, blob: bytes, purpose: str, owner: str) -> bytes:
        """Inverse of :meth:`seal_bytes`; a blob that fails to open is an :class:`IntegrityError` naming ``owner``."""
        return bytes(blob)


class SealedCodec(PlainCodec):
    """Every content-derived column sealed under its namespace's key (see the module's table)."""

    sealed = True

    def __init__(self, keyring: Keyring):
        self.keyring = keyring

    def _writer(self, namespace: str) -> NamespaceCipher:
        c = self.keyring.cipher(namespace, create=True) if self.keyring is not None else None
        assert c is not None
        return c

    def _open(self, namespace: str, blob: Any, purpose: str, owner: str) -> bytes:
        if not isinstance(blob, bytes) or len(blob) < 1 + KEY_ID_SIZE:
            raise SealError(f"its {purpose} is not a sealed value")
        assert self.keyring is not None
        c = self.keyring.cipher(namespace, key_id=blob[1 : 1 + KEY_ID_SIZE])
        if c is None:
            raise SealError(f"its namespace {namespace!r} has no data key (it was erased)")
        try:
            return c.open(blob, purpose, owner)
        except SealError as exc:
            raise SealError(f"its {purpose}: {exc}") from None

    def _open_text(self, namespace: str, text: Any, purpose: str, owner: str) -> bytes:
        try:
            blob = base64.b64decode(str(text).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise SealError(f"its {purpose} is not a sealed value") from None
        return self._open(namespace, blob, purpose, owner)

    def keys(self, namespace: str, id: str, key: np.ndarray, scale: float, ctx: np.ndarray,
             ctx_scale: float) -> KeyColumns:  # fmt: skip
        c = self._writer(namespace)
        own = c.seal(struct.pack("<d", float(scale)) + key.astype(np.int8).tobytes(), "key", id)
        near = c.seal(struct.pack("<d", float(ctx_scale)) + ctx.astype(np.int8).tobytes(), "ctx_key", id)
        return KeyColumns(own, 1.0, near, 1.0, None, None)  # no float copy: pgvector would hold it in clear

    def episode(self, item: NewEpisode, art: Artifact) -> EpisodeColumns:
        ep = item.episode
        c = self._writer(ep.namespace)
        when = math.nan if item.event_time is None else float(item.event_time)
        time_blob = struct.pack("<Bd", ep.time is not None, when) + (ep.time or "").encode("utf-8")
        cell, streams = self.artifact_columns(ep.namespace, ep.id, art)
        return EpisodeColumns(
            _text(c.seal(ep.keywords.encode("utf-8"), "keywords", ep.id)), _text(c.seal(time_blob, "time", ep.id)),
            self.keys(ep.namespace, ep.id, item.key, item.key_scale, item.ctx_key, item.ctx_key_scale),
            c.seal(item.tokens.astype("<u4").tobytes(), "tokens", ep.id), None, cell, streams,
        )  # fmt: skip

    def artifact_columns(self, namespace: str, id: str, art: Artifact) -> tuple[str, dict[str, np.ndarray]]:
        c = self._writer(namespace)
        weights, spans = shards.pack_streams(art.streams)
        sealed = c.seal(struct.pack("<I", len(spans)) + spans + weights, "streams", id)
        cfg = json.dumps(art.config, separators=(",", ":")).encode("utf-8")
        return _text(c.seal(cfg, "cell", id)), {"uint8": np.frombuffer(sealed, dtype=np.uint8)}

    def model_columns(self, namespace: str, model: SharedModel) -> tuple[str, bytes]:
        # A model trained on a namespace's episodes is content too: sealed, bound to its engine and version.
        c = self._writer(namespace)
        cfg, data = super().model_columns(namespace, model)
        owner = f"{model.engine}/{model.version}"
        return _text(c.seal(cfg.encode("utf-8"), "model-config", owner)), c.seal(data, "model", owner)

    def _open_model(self, namespace: str, owner: str, cfg: Any, data: Any) -> tuple[Any, Any]:
        return (self._open_text(namespace, cfg, "model-config", owner).decode("utf-8"),
                self._open(namespace, data, "model", owner))  # fmt: skip

    def _time(self, namespace: str, id: str, raw: Any) -> tuple[str | None, float | None]:
        blob = self._open_text(namespace, raw, "time", id)
        if len(blob) < 9:
            raise SealError("its time is malformed")
        has, when = struct.unpack_from("<Bd", blob)
        return (blob[9:].decode("utf-8") if has else None), (None if math.isnan(when) else float(when))

    def row(self, t: Sequence[Any]) -> Row:
        plain = super().row(t)
        try:
            keywords = self._open_text(plain.namespace, t[3], "keywords", plain.id).decode("utf-8")
            time, _ = self._time(plain.namespace, plain.id, t[4])
        except (SealError, UnicodeDecodeError) as exc:
            why = f"its sealed metadata cannot be opened ({exc})"
            return Row(plain.rowid, plain.id, plain.namespace, "", None, plain.created_at, plain.n_bytes, plain.digest,
                       plain.digest_format, plain.engine, damage=why)  # fmt: skip
        return Row(plain.rowid, plain.id, plain.namespace, keywords, time, plain.created_at, plain.n_bytes,
                   plain.digest, plain.digest_format, plain.engine)  # fmt: skip

    def _key(self, namespace: str, id: str, blob: Any, purpose: str) -> tuple[bytes, float]:
        raw = self._open(namespace, _blob(blob), purpose, id)
        if len(raw) < 8:
            raise SealError(f"its {purpose} is malformed")
        return raw[8:], struct.unpack_from("<d", raw)[0]

    def index_row(self, t: Sequence[Any], dim: int | None, namespace: str, event_time: Any, time: Any) -> IndexRow:
        rowid, id_ = int(t[0]), str(t[1])
        try:
            key, scale = self._key(namespace, id_, t[2], "key")
            ctx, ctx_scale = self._key(namespace, id_, t[4], "ctx_key")
            tokens = self._open(namespace, _blob(t[6]), "tokens", id_)
            _, when = self._time(namespace, id_, time)
        except (SealError, UnicodeDecodeError) as exc:
            empty = np.zeros(dim or 0, dtype=np.int8)
            return IndexRow(rowid, id_, empty, 1.0, empty, 1.0, np.zeros(0, np.uint32),
                            f"its sealed recall data cannot be opened ({exc})")  # fmt: skip
        return build_index_row((rowid, id_, key, scale, ctx, ctx_scale, tokens), dim, when)

    def staged(self, namespace: str, id: str, k: StagedKey) -> KeyColumns:
        return self.keys(namespace, id, k.key, k.key_scale, k.ctx_key, k.ctx_key_scale)

    def seal_bytes(self, namespace: str, data: bytes, purpose: str, owner: str) -> bytes:
        return self._writer(namespace).seal(data, purpose, owner)

    def open_bytes(self, namespace: str, blob: bytes, purpose: str, owner: str) -> bytes:
        try:
            return self._open(namespace, bytes(blob), purpose, owner)
        except SealError as exc:
            raise IntegrityError(f"the {purpose} {owner!r} of namespace {namespace!r} cannot be opened: {exc}",
                                 ids=[owner]) from None  # fmt: skip

    def artifact(self, r: Row, cell: Any, streams: dict[str, np.ndarray]) -> Artifact:
        try:
            cfg = self._open_text(r.namespace, cell, "cell", r.id)
            blob = streams.get("uint8")
            if blob is None or set(streams) != {"uint8"}:
                raise SealError("its weights are not one sealed stream")
            packed = self._open(r.namespace, np.ascontiguousarray(blob, dtype=np.uint8).tobytes(), "streams", r.id)
        except SealError as exc:
            raise IntegrityError(f"the memory {r.id!r} cannot be opened: {exc}", ids=[r.id]) from None
        (n,) = struct.unpack_from("<I", packed)
        inner = shards.unpack_streams(packed[4 + n :], packed[4 : 4 + n])
        return Artifact(r.engine, engine_config(cfg.decode("utf-8")), inner)


def engine_config(raw: Any) -> dict[str, Any]:
    """A stored engine config (JSON text) as a dict; ``ValueError`` names what is wrong with a damaged one."""
    cfg = json.loads(raw)  # json.JSONDecodeError is a ValueError; a non-string is a TypeError
    if not isinstance(cfg, dict):
        raise ValueError(f"its engine config is a JSON {type(cfg).__name__}, not an object")
    return cfg


def _text(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def _blob(v: Any) -> Any:
    """A driver's memoryview as bytes."""
    return bytes(v) if isinstance(v, memoryview) else v


def _int(v: Any, damaged: int) -> int:
    return v if isinstance(v, int) else damaged


PLAIN = PlainCodec()
