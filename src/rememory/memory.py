"""The :class:`Memory` facade: wires the embedder, the store and the memory engine together."""

from __future__ import annotations

import builtins
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace as dc_replace
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from .archive import ArchiveProgress, ExportReport, ImportReport
from .cells.engine import MlpCellEngine
from .cells.model import CellConfig
from .config import resolve_max_text_bytes, resolve_store_path
from .embed import Embedder, load_embedder
from .engine import Artifact, MemoryEngine, get_engine
from .episodes import validate_episode, validate_many, validate_namespace, validate_query
from .errors import ConfigError, IntegrityError, NotFoundError, RememoryError
from .index import snapshot
from .index.config import RankingConfig
from .index.live import NamespaceIndex, TimeSignal
from .index.tokenize import token_hashes
from .integrity import episode_digest
from .limits import MAX_PAGE, MAX_TOP_K
from .quant import quantize_int8
from .records import Episode, RecallHit, StoreStats, TrainProgress, VerifyFailure, VerifyReport
from .store import open_store
from .store.base import check_duplicate, mismatch
from .store.records import NewEpisode, Row
from .timeparse import TimeRange, episode_time, filter_range, query_range

logger = logging.getLogger(__name__)

ProgressFn = Callable[[TrainProgress], None]


def key_text(keywords: str, text: str) -> str:
    """What the key vector embeds: keywords and text together (keyword-only keys recall poorly)."""
    return f"{keywords}: {text}" if keywords.strip() else text


class Memory:
    """An episodic memory store: add episodes, recall them by meaning, get them back byte-exact.

    >>> mem = Memory(tmp_path / "store")
    >>> mem.add("Ilya, bridge, night", "We walked with Ilya across the bridge.", id="e1")
    'e1'
    >>> mem.recall("walking on a bridge with Ilya", top_k=1)[0].text
    'We walked with Ilya across the bridge.'
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        embedder: str | Embedder | None = None,
        cell_config: CellConfig | None = None,
        ranking: RankingConfig | None = None,
        max_text_bytes: int | None = None,
        batch_size: int = 256,
        busy_timeout: float = 30.0,
        read_only: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.path = resolve_store_path(path)
        self.read_only = read_only
        self._store = open_store(self.path, busy_timeout=busy_timeout, read_only=read_only)
        try:
            bound = self._store.embedder_info()
            if embedder is None and bound is not None:
                embedder = bound[0]  # reopen with the model the store was built with
            self._embedder = load_embedder(embedder)
            if bound is not None and bound[0] != self._embedder.id:
                raise mismatch(self.location, bound[0], bound[1], self._embedder.id, None)
        except BaseException:
            self._store.close()  # a refused open leaves no connection (or pool) behind
            raise
        self._engine: MemoryEngine = MlpCellEngine(cell_config)
        self.ranking = ranking or RankingConfig()
        self._max_text_bytes = resolve_max_text_bytes(max_text_bytes)
        self._batch_size = batch_size
        self._indexes: dict[str, NamespaceIndex] = {}
        self._slot_times: dict[str, np.ndarray] = {}  # namespace -> (slots,) epoch seconds, NaN: no time
        self._snapshot_dir = self._store.snapshot_dir
        self._index_lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the store lives, for messages: its directory, or its URL without the password."""
        return self._store.location

    # --- lifecycle ---

    def close(self) -> None:
        """Close the store. The object must not be used afterwards."""
        self._store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._store.count()

    @property
    def max_text_bytes(self) -> int:
        """The largest episode text accepted, in UTF-8 bytes."""
        return self._max_text_bytes

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    # --- writes ---

    def add(
        self,
        keywords: str,
        text: str,
        *,
        id: str | None = None,
        time: str | None = None,
        namespace: str = "default",
        replace: bool = False,
    ) -> str:
        """Train one episode into a cell and store it; returns its id.

        >>> mem.add("Sergey, van, repair", "Sergey brought an old van with a stuck window.")
        'ep-...'
        """
        item = {"keywords": keywords, "text": text, "id": id, "time": time}
        ep = validate_episode(item, index=None, namespace=namespace, max_text_bytes=self._max_text_bytes)
        return self._add([ep], progress=None, replace=replace)[0]

    def add_many(
        self,
        episodes: Iterable[dict[str, Any] | Episode],
        *,
        namespace: str = "default",
        progress: ProgressFn | None = None,
        replace: bool = False,
    ) -> list[str]:
        """Train many episodes in batches; returns their ids in input order (duplicates collapsed).

        The whole input is validated first: a bad item raises before anything is stored. Each
        batch is committed as it finishes, so an interrupted call loses at most one batch and a
        rerun resumes (episodes already stored with identical content are skipped).

        >>> mem.add_many([{"keywords": "tea", "text": "Green tea at noon.", "id": "t1"}])
        ['t1']
        """
        eps = validate_many(episodes, namespace=namespace, max_text_bytes=self._max_text_bytes)
        return self._add(eps, progress=progress, replace=replace)

    def _add(self, eps: list[Episode], *, progress: ProgressFn | None, replace: bool) -> list[str]:
        existing: dict[tuple[str, str], Row] = {}
        for ns in {ep.namespace for ep in eps}:
            for r in self._store.rows(ns, [e.id for e in eps if e.namespace == ns]).values():
                existing[(ns, r.id)] = r
        todo: list[tuple[Episode, bytes, bytes]] = []
        for ep in eps:
            data = ep.text.encode("utf-8")
            dg = episode_digest(ep.namespace, ep.id, data)
            if check_duplicate(existing.get((ep.namespace, ep.id)), ep, dg, replace=replace):
                todo.append((ep, data, dg))
        if todo:
            self._store.bind_embedder(self._embedder.id, self._embedder.dim)
        contexts = self._context_texts([ep for ep, _, _ in todo])
        total_bytes = sum(len(d) for _, d, _ in todo)
        start = time.perf_counter()
        done_cells = done_bytes = 0
        for i in range(0, len(todo), self._batch_size):
            chunk = todo[i : i + self._batch_size]
            vecs = self._embedder.embed_batch([key_text(ep.keywords, ep.text) for ep, _, _ in chunk])
            ctx_vecs = self._embedder.embed_batch(contexts[i : i + self._batch_size])

            def relay(ev: TrainProgress, base_cells: int = done_cells, base_bytes: int = done_bytes) -> None:
                if progress is not None:
                    progress(dc_replace(ev, cells_done=base_cells + ev.cells_done, cells_total=len(todo),
                                        bytes_done=base_bytes + ev.bytes_done, bytes_total=total_bytes,
                                        elapsed_s=time.perf_counter() - start))  # fmt: skip

            arts = self._engine.encode([ep.keywords for ep, _, _ in chunk], [d for _, d, _ in chunk], relay)
            items = []
            for (ep, data, dg), vec, ctx_vec in zip(chunk, vecs, ctx_vecs):
                q, scale = quantize_int8(vec)
                cq, cscale = quantize_int8(ctx_vec)
                tokens = token_hashes(f"{ep.keywords} {ep.text}")
                items.append(NewEpisode(ep, dg, len(data), q, scale, tokens, cq, cscale))
            self._store.commit_batch(items, arts, (self._embedder.id, self._embedder.dim), replace=replace)
            done_cells += len(chunk)
            done_bytes += sum(len(d) for _, d, _ in chunk)
        return [e.id for e in eps]

    def _context_texts(self, eps: list[Episode]) -> list[str]:
        """Each episode with its neighbours (previous and next of the same namespace), for the context key.

        Neighbours come from this batch, in order; the first episode of a namespace also gets
        the namespace's latest stored episode, reconstructed from its cell.
        """
        by_ns: dict[str, list[int]] = {}
        for i, ep in enumerate(eps):
            by_ns.setdefault(ep.namespace, []).append(i)
        out = [""] * len(eps)
        for ns, idx in by_ns.items():
            texts = [f"{eps[i].keywords} {eps[i].text}" for i in idx]
            last = self._store.list_rows_desc(ns, limit=1)
            before = ""
            if last:
                prev = self._reconstruct(last)[last[0].rowid]
                if isinstance(prev, bytes):
                    before = f"{last[0].keywords} {prev.decode('utf-8')}"
                else:  # a damaged memory must not block new ones; verify and recall report it
                    logger.warning(
                        "The context key of the new episodes in namespace %r leaves out their predecessor %r, whose "
                        "memory is damaged (%s). Run `rememory verify` and re-add it.", ns, last[0].id, prev
                    )  # fmt: skip
            for j, i in enumerate(idx):
                window = [before if j == 0 else texts[j - 1], texts[j], texts[j + 1] if j + 1 < len(texts) else ""]
                out[i] = " ".join(t for t in window if t)
        return out

    def forget(self, id: str, *, namespace: str = "default") -> None:
        """Delete an episode and erase it from every file the store owns, before returning.

        Its row is overwritten, the database's write-ahead log truncated, its weights zeroed, and
        the namespace's recall snapshot dropped (the next process rebuilds it from the store).

        >>> mem.forget("t1")
        """
        namespace = validate_namespace(namespace)
        if not self._store.delete(namespace, [id]):
            raise NotFoundError(
                f"No memory with id {id!r} in namespace {namespace!r}; nothing was forgotten. "
                "Check the id and the namespace (rememory show ID --namespace NS)."
            )
        if self._snapshot_dir is not None:
            with snapshot.locked(self._snapshot_dir):
                snapshot.discard(self._snapshot_dir, namespace)
        with self._index_lock:
            idx = self._indexes.get(namespace)
            if idx is not None:
                idx.snapshot_size = 0  # re-snapshot (without the forgotten episode) once the index syncs

    def _row(self, id: str, namespace: str) -> Row | None:
        return self._store.rows(validate_namespace(namespace), [id]).get(id)

    # --- reads ---

    def _reconstruct(self, rows: Sequence[Row]) -> dict[int, bytes | IntegrityError]:
        """Each row's exact text by rowid, or the :class:`IntegrityError` that says why it is unreadable."""
        arts = self._store.load_artifacts(rows)
        out: dict[int, bytes | IntegrityError] = {}
        for r in rows:
            art = arts[r.rowid]
            if isinstance(art, IntegrityError):
                out[r.rowid] = IntegrityError(
                    f"The memory {r.id!r} (namespace {r.namespace!r}) is unreadable: {art}. Run `rememory verify` "
                    "to list every affected memory, then re-add them.",
                    ids=[r.id],
                )
                continue
            out[r.rowid] = self._decode_checked(r, art)
        return out

    def _decode_checked(self, r: Row, art: Artifact) -> bytes | IntegrityError:
        try:
            data = get_engine(art.engine).decode(art, r.keywords, n_bytes=r.n_bytes)
        except Exception as exc:  # any engine, any damage: stored data that fails to decode is damaged
            what = str(exc) if isinstance(exc, RememoryError) else f"{type(exc).__name__}: {exc}"
            return IntegrityError(
                f"The memory {r.id!r} (namespace {r.namespace!r}) is malformed ({what}); re-add the episode.",
                ids=[r.id],
            )
        try:
            want = episode_digest(r.namespace, r.id, data, r.digest_format)
        except ValueError:
            want = b""
        if len(data) != r.n_bytes or want != r.digest:
            return IntegrityError(
                f"The memory {r.id!r} (namespace {r.namespace!r}) did not reconstruct its exact text for its own "
                "namespace and id (digest mismatch): its data is damaged or was moved. Run `rememory verify` to list "
                "every affected memory, then re-add them.",
                ids=[r.id],
            )
        return data

    def _text(self, r: Row, got: dict[int, bytes | IntegrityError]) -> str:
        data = got[r.rowid]
        if isinstance(data, Exception):
            raise data
        return data.decode("utf-8")

    def get(self, id: str, *, namespace: str = "default") -> Episode:
        """The episode with this id in ``namespace``, its text reconstructed from its memory.

        Ids are unique per namespace: an episode of another namespace is simply not there.

        >>> mem.get("e1").text
        'We walked with Ilya across the bridge.'
        """
        r = self._row(id, namespace)
        if r is None:
            raise NotFoundError(f"No memory with id {id!r} in namespace {namespace!r}. Check the id and the namespace.")
        return Episode(r.id, r.keywords, self._text(r, self._reconstruct([r])), r.time, r.namespace)

    def list(self, namespace: str = "default", *, limit: int = 100, offset: int = 0) -> list[Episode]:
        """A page of a namespace's episodes (oldest first), texts reconstructed.

        >>> [e.id for e in mem.list(limit=1)]
        ['e1']
        """
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise ConfigError(f"limit must be 1..{MAX_PAGE} and offset >= 0, got limit={limit}, offset={offset}.")
        rows = self._store.list_rows(validate_namespace(namespace), limit=limit, offset=offset)
        got = self._reconstruct(rows)
        return [Episode(r.id, r.keywords, self._text(r, got), r.time, r.namespace) for r in rows]

    def count(self, namespace: str | None = None) -> int:
        """Number of episodes in ``namespace`` (all namespaces if ``None``)."""
        return self._store.count(namespace)

    def _index(self, namespace: str) -> NamespaceIndex:
        gen = self._store.generation()
        with self._index_lock:
            idx = self._indexes.get(namespace)
            if idx is None:
                idx = None
                if self._snapshot_dir is not None:
                    idx = snapshot.load(self._snapshot_dir, namespace, self._embedder.dim, self.ranking)
                idx = idx or NamespaceIndex(self._embedder.dim, self.ranking)
                idx.snapshot_size = idx.lex.n
                self._indexes[namespace] = idx
            if idx.generation != gen:
                for bad in idx.sync(self._store.namespace_rowids(namespace), self._store.index_rows):
                    logger.warning(
                        "Memory %r of namespace %r cannot be recalled: %s. Run `rememory verify`, then re-add it.",
                        bad.id, namespace, bad.damage,
                    )  # fmt: skip
                idx.generation = gen
                # Large namespaces keep a snapshot so that a new process starts fast.
                grown = idx.lex.n - idx.snapshot_size
                if (not self.read_only and self._snapshot_dir is not None and idx.size >= self.ranking.ann_threshold
                        and grown >= max(1, idx.snapshot_size // 10)):  # fmt: skip
                    self._save_snapshot(idx, namespace)
            return idx

    def _save_snapshot(self, idx: NamespaceIndex, namespace: str) -> None:
        # Under the snapshot lock, and only if every episode in it is still stored: a forget that
        # committed meanwhile must not be written back to disk (forget drops snapshots under this lock).
        assert self._snapshot_dir is not None
        with snapshot.locked(self._snapshot_dir):
            if set(idx.slot_of) <= set(self._store.namespace_rowids(namespace).tolist()):
                snapshot.save(idx, self._snapshot_dir, namespace)
                idx.snapshot_size = idx.lex.n

    # `builtins.list`: inside this class `list` names the method above.
    def recall(
        self,
        query: str,
        top_k: int = 3,
        namespace: str = "default",
        *,
        since: str | datetime | date | None = None,
        until: str | datetime | date | None = None,
    ) -> builtins.list[RecallHit]:
        """The ``top_k`` episodes of ``namespace`` that best match ``query``, best first.

        Ranking fuses BM25 (over the episode and windows of its neighbours) with dense key
        similarity (see :class:`~rememory.index.config.RankingConfig`). ``RecallHit.score`` is
        that hybrid relevance in [0, 1]. Only the hits' cells are decoded, each checked
        against its digest.

        An episode's time is its ``time``, or else a date written in its keywords
        (:func:`rememory.timeparse.episode_time`). ``since`` and ``until`` (ISO 8601 strings or
        datetimes, both inclusive; a date alone as ``until`` includes that day) keep only the
        episodes whose time falls between them, inside the ranking, so ``top_k`` hits come back
        when that many match; episodes with no time are left out whenever either is given. A
        query that names a time ("in May 2023", "last week") ranks the episodes of that time higher.

        >>> [hit.id for hit in mem.recall("bridge at night", top_k=1)]
        ['e1']
        """
        query = validate_query(query)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}.")
        window = filter_range(since, until)
        namespace = validate_namespace(namespace)
        if namespace not in self._indexes and self._store.count(namespace) == 0:
            return []  # answers without loading the model
        idx = self._index(namespace)
        if idx.size == 0:
            return []
        q = self._embedder.embed_query(query)
        if q.shape[0] != idx.dim:
            raise mismatch(self.location, "?", idx.dim, self._embedder.id, q.shape[0])
        when = self._time_signal(idx, namespace, query, window)
        scored = idx.search(q, idx.lexical(token_hashes(query)), top_k, when)
        # The index is a cache: every hit is checked against its store row in this namespace
        # before anything is decoded (a concurrent forget, or a tampered snapshot, yields nothing).
        rows = self._store.rows(namespace, [s.id for s in scored])
        picked = [(rows[s.id], s.score) for s in scored if s.id in rows]
        got = self._reconstruct([r for r, _ in picked])
        return [RecallHit(r.id, s, r.keywords, self._text(r, got), r.time, r.namespace) for r, s in picked]

    def _time_signal(
        self, idx: NamespaceIndex, namespace: str, query: str, window: TimeRange | None
    ) -> TimeSignal | None:
        """The since/until mask and the query's time-range boost, or None when neither applies."""
        named = query_range(query, datetime.now(timezone.utc)) if self.ranking.time_match else None
        if window is None and named is None:
            return None
        times = self._times(idx, namespace)
        return TimeSignal(allowed=_within(times, window), in_range=_within(times, named))

    def _times(self, idx: NamespaceIndex, namespace: str) -> np.ndarray:
        """(slots,) each slot's episode time in epoch seconds (NaN: none), read once per slot.

        Derived when first needed, not stored: existing stores need no migration, and recall of
        queries that name no time never parses a date.
        """
        with self._index_lock:
            have = self._slot_times.get(namespace, np.zeros(0))
            n = len(idx.ids)
            if have.size < n:
                new_ids = idx.ids[have.size : n]
                rows = self._store.rows(namespace, [i for i in new_ids if i])
                add = np.full(n - have.size, np.nan)
                for k, id_ in enumerate(new_ids):
                    r = rows.get(id_)
                    t = episode_time(r.time, r.keywords) if r is not None else None
                    if t is not None:
                        add[k] = t.replace(tzinfo=timezone.utc).timestamp()
                have = np.concatenate([have, add])
                self._slot_times[namespace] = have
            return have

    def verify(
        self, progress: Callable[[int, int], None] | None = None, *, namespace: str | None = None
    ) -> VerifyReport:
        """Check every memory (of ``namespace``, or of the whole store): decode it, compare its digest, and
        check the metadata recall needs. Lists all damage and carries on; never writes.

        >>> mem.verify().ok
        True
        """
        if namespace is not None:
            namespace = validate_namespace(namespace)
        total = self._store.count(namespace)
        checked = 0
        failures = [VerifyFailure(d.namespace, d.id, d.reason) for d in self._store.damaged(namespace)]
        for rows in self._store.iter_rows(namespace, batch=500):
            got = self._reconstruct(rows)
            failures += [VerifyFailure(r.namespace, r.id, str(got[r.rowid])) for r in rows
                         if isinstance(got[r.rowid], IntegrityError)]  # fmt: skip
            checked += len(rows)
            if progress is not None:
                progress(checked, total)
        return VerifyReport(checked=checked, failures=failures)

    def stats(self, namespace: str | None = None) -> StoreStats:
        """Sizes of the store (or of one namespace): episodes, text, cell and on-disk bytes."""
        rep = self._store.size_report(namespace)
        bound = self._store.embedder_info()
        emb, dim = bound if bound is not None else (self._embedder.id, 0)
        return StoreStats(
            episodes=rep.episodes, text_bytes=rep.text_bytes, cell_bytes=rep.cell_bytes,
            store_bytes=rep.store_bytes, embedder=emb, dim=dim, namespaces=rep.namespaces,
        )  # fmt: skip

    # --- export and import (rememory.archive) ---

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        format: str = "archive",
        progress: Callable[[ArchiveProgress], None] | None = None,
    ) -> ExportReport:
        """Write the store (or one namespace) to ``path``, replacing it atomically.

        ``format="archive"`` writes a portable archive (docs/archive.md): the memories' weights as
        stored, their metadata, keys and digests, and no decoded text; every memory is checked
        against its digest first. ``format="jsonl"`` writes the decoded episodes (namespace, id,
        keywords, text, time), one JSON object a line, for other tools and for ``rememory train``.
        """
        from .archive import write_archive, write_jsonl

        if namespace is not None:
            namespace = validate_namespace(namespace)
        if format == "archive":
            return write_archive(self._store, path, namespace=namespace, progress=progress)
        if format == "jsonl":
            return write_jsonl(self._store.iter_rows(namespace, batch=500), self._reconstruct, path,
                               total=self._store.count(namespace), progress=progress)  # fmt: skip
        raise ConfigError(f"Unknown export format {format!r}; use 'archive' or 'jsonl'.")

    def import_archive(
        self, path: str | os.PathLike[str], *, progress: Callable[[ArchiveProgress], None] | None = None
    ) -> ImportReport:
        """Load an archive written by :meth:`export` into this store.

        The whole archive is checked first (its hashes, its structure, and every memory decoded
        against its digest); a damaged or truncated archive, another embedder, or an episode that
        differs from one stored under the same id raises, and nothing from it is stored. Episodes
        already stored with identical content are skipped, so importing twice changes nothing.
        """
        from .archive import import_archive

        return import_archive(self._store, path, embedder_id=self._embedder.id,
                              max_text_bytes=self._max_text_bytes, progress=progress)  # fmt: skip


def _within(times: np.ndarray, rng: TimeRange | None) -> np.ndarray | None:
    """Which slots' times fall in ``rng`` (a slot with no time never does), or None without a range."""
    if rng is None:
        return None
    with np.errstate(invalid="ignore"):
        ok = ~np.isnan(times)
        if rng.start is not None:
            ok &= times >= rng.start.replace(tzinfo=timezone.utc).timestamp()
        if rng.end is not None:
            ok &= times < rng.end.replace(tzinfo=timezone.utc).timestamp()
    return ok
