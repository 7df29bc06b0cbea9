"""The :class:`Memory` facade: wires the embedder, the store and the memory engine together."""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace as dc_replace
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from .archive import ArchivedEpisode, ArchiveProgress, ExportReport, ImportReport
from .cells.model import CellConfig
from .config import resolve_max_text_bytes, resolve_secret, resolve_store_path
from .content import PLAIN_KEYS, ContentKeys, SealedKeys
from .contextkeys import CONTEXT_REACH, OwnKey, context_key, key_bytes, own_key
from .embed import Embedder, load_embedder
from .engine import DEFAULT_ENGINE, Artifact, DecodeItem, MemoryEngine, create_engine, engine_class
from .episodes import validate_episode, validate_many, validate_namespace, validate_query
from .errors import ConfigError, EmbedderMismatchError, IntegrityError, NotFoundError, RememoryError, StoreBusyError
from .index import snapshot
from .index.config import RankingConfig
from .index.live import NamespaceIndex, Pool, RankingFeatures, Span, TimeSignal
from .limits import MAX_PAGE, MAX_TOP_K
from .records import (
    DayCount,
    EncodeProgress,
    Episode,
    EpisodeDetail,
    EpisodePage,
    EpisodeView,
    RecallHit,
    ReembedReport,
    ReencodeReport,
    StoreStats,
    VerifyFailure,
    VerifyReport,
)
from .store import open_store
from .store.base import StoreKeys, check_duplicate, mismatch
from .store.records import ArtifactSwap, NewEpisode, Row, StagedKey
from .timeparse import TimeRange, episode_seconds, filter_range, query_range

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

ProgressFn = Callable[[EncodeProgress], None]
# From this size a namespace's recall index is snapshotted (mapped by the next process, not rebuilt):
# building it from 10k rows takes ~0.8 s of a new `rememory recall`, mapping its snapshot ~0.05 s.
SNAPSHOT_MIN_EPISODES = 2000
# `reencode` trains a new model version when a namespace holds this many times the episodes its newest
# model was trained on: a model fitted on few episodes predicts a grown store's text poorly.
REFIT_GROWTH = 2.0
REENCODE_BATCH = 256


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
        engine: str | None = None,
        engine_config: Any = None,
        cell_config: CellConfig | None = None,
        ranking: RankingConfig | None = None,
        max_text_bytes: int | None = None,
        batch_size: int = 256,
        busy_timeout: float = 30.0,
        read_only: bool = False,
        secret: str | bytes | None = None,
        keyring: str | os.PathLike[str] | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        if engine is not None:
            engine_class(engine)  # an unknown name fails here, before the store is opened
        if cell_config is not None:
            if engine_config is not None:
                raise ConfigError("Give either cell_config or engine_config, not both (cell_config is the cell's).")
            if engine not in (None, DEFAULT_ENGINE):
                raise ConfigError(f"cell_config configures the {DEFAULT_ENGINE!r} engine, not {engine!r}; "
                                  "pass that engine's settings as engine_config.")  # fmt: skip
            engine = engine or DEFAULT_ENGINE
            engine_config = cell_config
        self.path = resolve_store_path(path)
        self.read_only = read_only
        # An encrypted store needs its secret (argument > REMEMORY_SECRET > REMEMORY_SECRET_FILE); given one, a
        # new store becomes an encrypted one. ``keyring``: where its keyring lives (docs/encryption.md).
        self._store = open_store(self.path, busy_timeout=busy_timeout, read_only=read_only,
                                 secret=resolve_secret(secret), keyring=keyring)  # fmt: skip
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
        # The engine new episodes are made with: the one asked for (recorded as the store's at its first
        # add), else the store's own, else the default. Stored episodes each decode with their own engine.
        self._engine_explicit = engine is not None
        self._engine_name = engine or self._store.default_engine() or DEFAULT_ENGINE
        self._engine_config = engine_config
        self._engines: dict[tuple[str, str], MemoryEngine] = {}
        self._engines_lock = threading.Lock()
        self.ranking = ranking or RankingConfig()
        self._max_text_bytes = resolve_max_text_bytes(max_text_bytes)
        self._batch_size = batch_size
        self._indexes: dict[str, NamespaceIndex] = {}
        self._snapshot_dir = self._store.snapshot_dir
        # An encrypted store's snapshots are sealed (they hold keys and token hashes): one file of
        # snapshot.to_bytes, read whole, instead of memory-mapped arrays; PostgreSQL's are sealed in their table.
        self._sealed_files = self._store.keyring is not None and self._snapshot_dir is not None
        self._store_snapshots = self._store.snapshot_dir is None  # PostgreSQL keeps them in the database
        self._index_lock = threading.Lock()
        # Where the store searches keys itself (pgvector), recall runs those searches on these threads
        # while it computes BM25 and the query's time (see NamespaceIndex.search_ahead); made at first use.
        self._searches: ThreadPoolExecutor | None = None
        self._searches_lock = threading.Lock()

    @property
    def location(self) -> str:
        """Where the store lives, for messages: its directory, or its URL without the password."""
        return self._store.location

    # --- lifecycle ---

    def close(self) -> None:
        """Close the store. The object must not be used afterwards."""
        with self._searches_lock:
            searches, self._searches = self._searches, None
        if searches is not None:
            searches.shutdown(wait=True)  # before the store: a search in flight still has its connection
        self._store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self._store.count()

    @property
    def encrypted(self) -> bool:
        """Whether the store is encrypted at rest (docs/encryption.md)."""
        return self._store.keyring is not None

    def _keys(self, namespace: str, *, create: bool = False) -> ContentKeys:
        """How ``namespace``'s content is keyed: its cipher in an encrypted store (made on first write)."""
        ring = self._store.keyring
        if ring is None:
            return PLAIN_KEYS
        cipher = ring.cipher(namespace, create=create and not self.read_only)
        if cipher is None:
            raise IntegrityError(
                f"The namespace {namespace!r} of the encrypted store at {self.location} has no data key (it was "
                f"erased, or never written). Erase what is left of it: rememory forget --namespace {namespace} --all."
            )
        return SealedKeys(cipher)

    @property
    def max_text_bytes(self) -> int:
        """The largest episode text accepted, in UTF-8 bytes."""
        return self._max_text_bytes

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def engine(self) -> str:
        """The name of the memory engine new episodes are encoded with (see ``rememory engines``)."""
        return self._engine_name

    def _engine_for(self, name: str, namespace: str) -> MemoryEngine:
        """The engine ``name`` working in ``namespace`` (its shared models are that namespace's), built once.

        An unknown name is an :class:`~rememory.errors.UnknownEngineError`.
        """
        key = (name, namespace)
        with self._engines_lock:
            eng = self._engines.get(key)
            if eng is None:
                config = self._engine_config if name == self._engine_name else None
                cls = engine_class(name)
                models = self._store.models(namespace) if cls.uses_models else None
                eng = create_engine(name, models=models, config=config)
                self._engines[key] = eng
            return eng

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
        keys = {ns: self._keys(ns, create=True) for ns in {ep.namespace for ep in eps}}
        for ep in eps:
            data = ep.text.encode("utf-8")
            dg = keys[ep.namespace].digest(ep.namespace, ep.id, data, keys[ep.namespace].digest_format)
            if check_duplicate(existing.get((ep.namespace, ep.id)), ep, dg, replace=replace):
                todo.append((ep, data, dg))
        if todo:
            self._store.bind_embedder(self._embedder.id, self._embedder.dim)
            if self._engine_explicit and self._store.default_engine() != self._engine_name:
                self._store.set_default_engine(self._engine_name)  # the store's engine from now on
            self._engine_explicit = False
        # Context keys blend each episode's own key with its neighbours' (rememory.contextkeys): a chunk's
        # last episodes need the own keys of the first ones of the next chunk, embedded ahead and kept.
        order: dict[str, builtins.list[int]] = {}  # each namespace's positions in ``todo``
        for p, (ep, _, _) in enumerate(todo):
            order.setdefault(ep.namespace, []).append(p)
        rank = {p: k for ps in order.values() for k, p in enumerate(ps)}  # position within its namespace
        known = {ns: self._stored_tail(ns) for ns in order}  # own keys by rank; the stored ones before 0
        total_bytes = sum(len(d) for _, d, _ in todo)
        start = time.perf_counter()
        done_cells = done_bytes = 0
        for i in range(0, len(todo), self._batch_size):
            chunk = todo[i : i + self._batch_size]
            span = range(i, i + len(chunk))
            need: set[int] = set()  # the chunk and the next CONTEXT_REACH of each namespace, if not embedded yet
            for p in span:
                ns = todo[p][0].namespace
                ahead_of_p = range(rank[p], min(rank[p] + CONTEXT_REACH + 1, len(order[ns])))
                need.update(order[ns][k] for k in ahead_of_p if k not in known[ns])
            ahead = sorted(need)
            vecs = self._embedder.embed_batch([key_text(todo[p][0].keywords, todo[p][0].text) for p in ahead])
            for p, vec in zip(ahead, vecs, strict=True):
                ep = todo[p][0]
                known[ep.namespace][rank[p]] = own_key(vec, key_bytes(ep.keywords, len(todo[p][1])))
            arts: builtins.list[Artifact | None] = [None] * len(chunk)
            # One encode per namespace: an engine with shared models encodes with its namespace's model.
            for ns in sorted({ep.namespace for ep, _, _ in chunk}):
                pos = [j for j, (ep, _, _) in enumerate(chunk) if ep.namespace == ns]

                def relay(ev: EncodeProgress, base_cells: int = done_cells, base_bytes: int = done_bytes) -> None:
                    if progress is not None:
                        progress(dc_replace(ev, done=base_cells + ev.done, total=len(todo),
                                            bytes_done=base_bytes + ev.bytes_done, bytes_total=total_bytes,
                                            elapsed_s=time.perf_counter() - start))  # fmt: skip

                engine = self._engine_for(self._engine_name, ns)
                seeds = [keys[ns].seed(chunk[j][0].keywords) for j in pos]
                got = engine.encode(seeds, [chunk[j][1] for j in pos], relay)
                for j, art in zip(pos, got, strict=True):
                    arts[j] = art
                done_cells += len(pos)
                done_bytes += sum(len(chunk[j][1]) for j in pos)
            items = []
            for p, (ep, data, dg) in zip(span, chunk):
                own = known[ep.namespace][rank[p]]
                cq, cscale = context_key(known[ep.namespace], rank[p])
                tokens = keys[ep.namespace].tokens(f"{ep.keywords} {ep.text}")
                when = episode_seconds(ep.time, ep.keywords)  # once, here: recall never parses keywords
                items.append(NewEpisode(ep, dg, len(data), own.key, own.scale, tokens, cq, cscale,
                                        digest_format=keys[ep.namespace].digest_format, event_time=when))
            self._store.commit_batch(items, [a for a in arts if a is not None], (self._embedder.id, self._embedder.dim),
                                     replace=replace)  # fmt: skip
            for p in span:  # what no later context key reads
                known[todo[p][0].namespace].pop(rank[p] - CONTEXT_REACH, None)
        return [e.id for e in eps]

    def _stored_tail(self, ns: str) -> dict[int, OwnKey]:
        """The own keys of the namespace's latest stored episodes, at ranks -1, -2, ...: new episodes' predecessors.

        Read from the store as they are (the text is not decoded); one whose key is damaged is left out.
        """
        rows = self._store.list_rows_desc(ns, limit=CONTEXT_REACH)
        stored = {k.rowid: k for k in self._store.index_rows([r.rowid for r in rows])}
        out: dict[int, OwnKey] = {}
        for k, r in enumerate(rows, start=1):
            got = stored.get(r.rowid)
            if got is None:  # forgotten meanwhile
                continue
            if got.damage is not None or r.damage is not None or got.key.shape != (self._embedder.dim,):
                logger.warning(
                    "The context key of the new episodes in namespace %r leaves out their predecessor %r, whose "
                    "key is damaged (%s). Run `rememory verify` and re-add it.", ns, r.id, got.damage or r.damage
                )  # fmt: skip
                continue
            out[-k] = OwnKey(got.key, got.key_scale, float(key_bytes(r.keywords, r.n_bytes)))
        return out

    def reembed(
        self,
        embedder: str | Embedder | None = None,
        *,
        namespace: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReembedReport:
        """Rebuild the recall keys (own and context) of every episode with ``embedder``, and make it the store's.

        No cell is retrained or rewritten: each text is decoded from its cell (and checked against its digest),
        then embedded. The new keys are staged out of recall's sight and swapped in, all at once and with the
        store's embedder, in one transaction: an interrupted reembed leaves the store on its old embedder, and
        rerunning it with the same embedder resumes. ``namespace`` rebuilds only that namespace's keys, with the
        store's own embedder (a store has one embedder). ``progress(done, total)`` follows the episodes.

        >>> mem.reembed("all-MiniLM-L6-v2").embedder
        'sentence-transformers/all-MiniLM-L6-v2'
        """
        if self.read_only:
            raise ConfigError(f"The store at {self.location} is open read-only; open it for writing to reembed it.")
        new = load_embedder(embedder) if embedder is not None else self._embedder
        target = (new.id, new.dim)  # `dim` loads the model: one that cannot load fails here, nothing changed
        bound = self._store.embedder_info()
        if namespace is not None:
            namespace = validate_namespace(namespace)
            if bound is not None and bound[0] != new.id:
                raise ConfigError(
                    f"The store at {self.location} uses the embedder {bound[0]!r} for every namespace; switching to "
                    f"{new.id!r} must rebuild all of them. Drop --namespace (or namespace=) to reembed the whole store."
                )
        self._discard_snapshots(namespace)
        self._store.clear_staged_keys(keep=target)  # what an interrupted reembed to another model left
        total = self._store.count(namespace)
        done = 0
        if progress is not None:
            progress(0, total)
        for _ in range(3):  # writers may add episodes meanwhile: each pass embeds what is still missing
            staged = self._store.staged_rowids(target)
            names = [namespace] if namespace is not None else sorted(self._store.size_report().namespaces)
            damaged: builtins.list[str] = []
            for ns in names:
                done = self._stage_namespace(ns, new, staged, damaged, done, total, progress)
            if damaged:
                raise IntegrityError(
                    f"{len(damaged)} memories cannot be decoded, so their keys cannot be rebuilt (first: "
                    f"{damaged[:5]}); the store still uses {(bound or target)[0]!r}. Run `rememory verify`, re-add or "
                    "forget them, then rerun the reembed (the keys already made are kept).",
                    ids=damaged,
                )
            if self._store.swap_staged_keys(target, namespace) == 0:
                break
            total = max(total, done + self._store.count(namespace) - len(self._store.staged_rowids(target)))
        else:
            raise StoreBusyError(
                f"Episodes kept being added to {self.location} during the reembed, so it still uses "
                f"{(bound or target)[0]!r}. Rerun it when writers pause: the keys already made are kept."
            )
        self._embedder = new
        self._discard_snapshots(namespace)
        with self._index_lock:
            for ns in [namespace] if namespace is not None else builtins.list(self._indexes):
                self._indexes.pop(ns, None)
        return ReembedReport(embedder=new.id, previous=bound[0] if bound else None, episodes=done)

    def _stage_namespace(
        self, ns: str, new: Embedder, staged: set[int], damaged: builtins.list[str], done: int, total: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:  # fmt: skip
        """Stage new keys for the rows of ``ns`` not in ``staged``; returns ``done`` advanced by their count.

        The context key is built as at add time (:func:`rememory.contextkeys.context_key`), from the new own keys
        of the episode and its neighbours in the namespace; an undecodable neighbour is left out.
        """
        rowids = self._store.namespace_rowids(ns).tolist()
        todo = [i for i, r in enumerate(rowids) if r not in staged]
        own: dict[int, OwnKey] = {}  # new own keys by position, kept while a later context key reads them
        ids: dict[int, str] = {}
        for c in range(0, len(todo), self._batch_size):
            pos = todo[c : c + self._batch_size]
            near = sorted({j for i in pos for j in range(i - CONTEXT_REACH, i + CONTEXT_REACH + 1)
                           if 0 <= j < len(rowids) and j not in own})  # fmt: skip
            rows = self._store.rows_by_rowid([rowids[j] for j in near])
            got = self._reconstruct(builtins.list(rows.values()))
            texts: dict[int, tuple[Row, str]] = {}
            for j in near:
                r = rows.get(rowids[j])
                data = got.get(rowids[j])
                if r is not None and isinstance(data, bytes):
                    texts[j] = (r, data.decode("utf-8"))
                elif r is not None and j in pos:
                    damaged.append(r.id)
            fresh = sorted(texts)
            for j, vec in zip(fresh, new.embed_batch([key_text(texts[j][0].keywords, texts[j][1]) for j in fresh])):
                own[j] = own_key(vec, key_bytes(texts[j][0].keywords, texts[j][0].n_bytes))
                ids[j] = texts[j][0].id
            keys = []
            for i in pos:
                if i in own:  # else damaged, or forgotten meanwhile (then simply gone)
                    cq, cscale = context_key(own, i)
                    keys.append(StagedKey(rowids[i], ns, ids[i], own[i].key, own[i].scale, cq, cscale))
            self._store.stage_keys((new.id, new.dim), keys)
            done += len(pos)
            if progress is not None:
                progress(min(done, total), total)
            for j in [j for j in own if j < pos[-1] + 1 - CONTEXT_REACH]:  # what no later context key reads
                del own[j], ids[j]
        return done

    def reencode(
        self,
        engine: str | None = None,
        *,
        namespace: str | None = None,
        batch: int | None = None,
        retrain: bool | None = None,
        progress: ProgressFn | None = None,
    ) -> ReencodeReport:
        """Convert stored episodes (of ``namespace``, or of the whole store) to ``engine`` (default: the store's).

        Each episode is decoded from its own artifact and checked against its digest, encoded with
        ``engine``, checked to decode to exactly the same bytes, and swapped in; ``batch`` episodes
        (default: the store's batch size) commit at a time, so a crash loses at most the batch in
        flight, and rerunning resumes (episodes already converted are skipped). Recall keys stay as
        they are. A damaged episode is reported in ``failures`` and left as it was.

        For an engine with shared models, a namespace first gets a new model version trained on its
        texts (``fit``) when ``retrain`` is True, when it has none, or (``retrain`` None) when it holds
        :data:`REFIT_GROWTH` times the episodes its newest model was trained on; ``retrain=False``
        never trains. Episodes on an older version are then re-encoded with the newest; until they
        are, they decode with their own version. Converting the whole store also makes ``engine``
        the store's engine for new episodes.

        >>> mem.reencode("mlp-cell/1").reencoded
        0
        """
        if self.read_only:
            raise ConfigError(f"The store at {self.location} is open read-only; open it for writing to reencode it.")
        target = engine or self._engine_name
        cls = engine_class(target)
        size = self._batch_size if batch is None else batch
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"batch must be a whole number of at least 1, got {batch!r}.")
        if namespace is not None:
            namespace = validate_namespace(namespace)
        rep = self._store.size_report(namespace)
        names = [namespace] if namespace is not None else sorted(rep.namespaces)
        failures: dict[tuple[str, str], VerifyFailure] = {}
        made: dict[str, int] = {}
        total, bytes_total = rep.episodes, rep.text_bytes
        start = time.perf_counter()
        looked = reencoded = unchanged = bytes_done = 0

        def fail(r: Row, why: object) -> None:
            failures[(r.namespace, r.id)] = VerifyFailure(r.namespace, r.id, str(why))

        for ns in names:
            eng = self._engine_for(target, ns)
            current: int | None = None
            if cls.uses_models:
                assert eng.models is not None
                latest = eng.models.latest(target)
                n = self._store.count(ns)
                if n and retrain is not False and (retrain or latest is None or n >= REFIT_GROWTH * latest.trained_on):
                    texts = [data for r, data in self._namespace_texts(ns, fail)]
                    model = eng.fit(texts, progress) if texts else None
                    if model is not None:
                        made[ns] = model.version
                current = eng.models.latest_version(target)
            for rows in self._store.iter_rows(ns, batch=size):
                looked += len(rows)
                arts = self._store.load_artifacts(rows)
                todo = []
                for r in rows:
                    art = arts[r.rowid]
                    if isinstance(art, Artifact) and art.engine == target and eng.model_version(art) == current:
                        unchanged += 1
                    else:
                        todo.append(r)
                ok = _decoded(todo, self._decode_many(todo, arts), fail)
                if ok:
                    keys = self._keys(ns)
                    new = eng.encode([keys.seed(r.keywords) for r, _ in ok], [d for _, d in ok])
                    back = eng.decode_batch(
                        [DecodeItem(a, keys.seed(r.keywords), len(d)) for (r, d), a in zip(ok, new, strict=True)]
                    )
                    for (r, d), b in zip(ok, back, strict=True):
                        if b != d:  # an engine bug, not damage: nothing of this batch is swapped in
                            raise IntegrityError(
                                f"The engine {target!r} encoded memory {r.id!r} (namespace {ns!r}) into an artifact "
                                f"that does not decode to its text ({b if isinstance(b, Exception) else 'other bytes'})"
                                "; nothing of this batch was changed. Report this bug; the store is intact.",
                                ids=[r.id],
                            )
                    swaps = [ArtifactSwap(r.rowid, r.id, r.namespace, r.digest, a) for (r, _), a in zip(ok, new)]
                    reencoded += len(self._store.replace_artifacts(swaps))
                bytes_done += sum(r.n_bytes for r in rows)
                if progress is not None:
                    progress(EncodeProgress(looked, max(total, looked), bytes_done, max(bytes_total, bytes_done),
                                            time.perf_counter() - start, stage="reencode"))  # fmt: skip
        if namespace is None and target != self._store.default_engine():
            self._store.set_default_engine(target)
        if namespace is None and target != self._engine_name:
            self._engine_name, self._engine_config = target, None  # the settings given were the old engine's
        return ReencodeReport(target, looked, reencoded, unchanged, builtins.list(failures.values()), made)

    def _namespace_texts(
        self, namespace: str, fail: Callable[[Row, object], None]
    ) -> Iterable[tuple[Row, bytes]]:  # fmt: skip
        """Every episode of ``namespace`` with its decoded, digest-checked text; damaged ones go to ``fail``."""
        out: builtins.list[tuple[Row, bytes]] = []
        for rows in self._store.iter_rows(namespace, batch=500):
            out += _decoded(rows, self._reconstruct(rows), fail)
        return out

    def _discard_snapshots(self, namespace: str | None) -> None:
        """Drop recall snapshots (of ``namespace``, or all): their keys are about to change."""
        if self._snapshot_dir is None or not self._snapshot_dir.exists():
            return
        names = [namespace] if namespace is not None else sorted(self._store.size_report().namespaces)
        with snapshot.locked(self._snapshot_dir):
            for ns in names:
                snapshot.discard(self._snapshot_dir, ns)

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

    def erase_namespace(self, namespace: str) -> int:
        """Forget every episode of ``namespace``; in an encrypted store, by crypto-erasure. Returns how many.

        In an encrypted store the namespace's data key is destroyed first: from that moment every copy of
        its data (database backups, WAL files, replicas, shards, snapshots) is unreadable with the secret.
        Then its rows are deleted and erased as :meth:`forget` erases one. Rerun it if it was interrupted.

        >>> mem.erase_namespace("scratch")
        0
        """
        namespace = validate_namespace(namespace)
        if self.read_only:
            raise ConfigError(f"The store at {self.location} is open read-only; open it for writing to erase.")
        ring = self._store.keyring
        if ring is not None:
            ring.destroy(namespace)
        ids = [r.id for rows in self._store.iter_rows(namespace, batch=1000) for r in rows]
        removed = 0
        for i in range(0, len(ids), 1000):
            removed += len(self._store.delete(namespace, ids[i : i + 1000]))
        # A shared model (byte-trace/1) learnt from the namespace's episodes: it goes with them.
        self._store.delete_models(namespace)
        with self._engines_lock:
            for key in [k for k in self._engines if k[1] == namespace]:
                del self._engines[key]
        if self._snapshot_dir is not None:
            with snapshot.locked(self._snapshot_dir):
                snapshot.discard(self._snapshot_dir, namespace)
        with self._index_lock:
            self._indexes.pop(namespace, None)
        return removed

    def rotate_secret(self, new_secret: str | bytes) -> int:
        """Re-wrap the encrypted store's data keys under ``new_secret``; returns how many. No data is re-encrypted.

        Afterwards only ``new_secret`` opens the store. An interrupted rotation leaves the keyring as it was or
        as it would be after it: the store opens with one of the two secrets.
        """
        ring = self._store.keyring
        if ring is None:
            raise ConfigError(f"The store at {self.location} is not encrypted; there is no secret to rotate.")
        if self.read_only:
            raise ConfigError(f"The store at {self.location} is open read-only; open it for writing to rotate.")
        return int(ring.rotate(new_secret))

    def _row(self, id: str, namespace: str) -> Row | None:
        return self._store.rows(validate_namespace(namespace), [id]).get(id)

    # --- reads ---

    def _reconstruct(self, rows: Sequence[Row]) -> dict[int, bytes | IntegrityError]:
        """Each row's exact text by rowid, or the :class:`IntegrityError` that says why it is unreadable."""
        return self._decode_many(rows, self._store.load_artifacts(rows))

    def _decode_many(
        self, rows: Sequence[Row], arts: dict[int, Artifact | IntegrityError]
    ) -> dict[int, bytes | IntegrityError]:
        """Decode ``rows`` from their loaded artifacts, a batch per (engine, namespace), each checked
        against its digest. Damage is returned per row, never raised."""
        out: dict[int, bytes | IntegrityError] = {}
        groups: dict[tuple[str, str], builtins.list[Row]] = {}
        for r in rows:
            art = arts[r.rowid]
            if r.damage is not None or isinstance(art, IntegrityError):  # sealed metadata or artifact unreadable
                bad = r.damage if r.damage is not None else art
                out[r.rowid] = IntegrityError(
                    f"The memory {r.id!r} (namespace {r.namespace!r}) is unreadable: {bad}. Run `rememory verify` "
                    "to list every affected memory, then re-add them.",
                    ids=[r.id],
                )
            else:
                groups.setdefault((art.engine, r.namespace), []).append(r)
        for (name, ns), group in groups.items():
            try:
                engine = self._engine_for(name, ns)
            except RememoryError as exc:  # an engine this rememory does not know
                for r in group:
                    out[r.rowid] = self._malformed(r, exc)
                continue
            keys = self._keys(ns)  # the cell seed is keyed by the namespace's key in an encrypted store
            items = []
            for r in group:
                art = arts[r.rowid]
                assert not isinstance(art, IntegrityError)
                items.append(DecodeItem(art, keys.seed(r.keywords), r.n_bytes))
            for r, data in zip(group, engine.decode_batch(items), strict=True):
                out[r.rowid] = self._malformed(r, data) if isinstance(data, Exception) else self._checked(r, data)
        return out

    def _views(self, rows: Sequence[Row]) -> builtins.list[EpisodeView]:
        """Each row as a viewer shows it: decoded and checked against its digest, damage named, not raised."""
        arts = self._store.load_artifacts(rows)
        got = self._decode_many(rows, arts)
        out = []
        for r in rows:
            art = arts[r.rowid]
            data = got[r.rowid]
            # What the memory costs to keep: its weight streams and its config (as stored, compact JSON).
            config = {} if isinstance(art, IntegrityError) else art.config
            cell = 0 if isinstance(art, IntegrityError) else art.nbytes + len(json.dumps(config, separators=(",", ":")))
            text, damage = (None, str(data)) if isinstance(data, IntegrityError) else (data.decode("utf-8"), None)
            out.append(EpisodeView(r.id, r.namespace, r.keywords, r.time, r.created_at, r.n_bytes, cell, text, damage))
        return out

    def _malformed(self, r: Row, exc: Exception) -> IntegrityError:
        # Any engine, any damage: stored data that fails to decode is damaged.
        what = str(exc) if isinstance(exc, RememoryError) else f"{type(exc).__name__}: {exc}"
        return IntegrityError(
            f"The memory {r.id!r} (namespace {r.namespace!r}) is malformed ({what}); re-add the episode.", ids=[r.id]
        )

    def _checked(self, r: Row, data: bytes) -> bytes | IntegrityError:
        """``data`` if it is the exact text ``r``'s digest names, else the IntegrityError that says so."""
        keys = self._keys(r.namespace)
        try:
            want = keys.digest(r.namespace, r.id, data, r.digest_format)
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

    def browse(
        self, namespace: str = "default", *, limit: int = 20, offset: int = 0, contains: str | None = None
    ) -> EpisodePage:
        """A page of a namespace's episodes for a viewer: newest first, each with its sizes, and checked.

        Each episode is decoded and checked against its digest (``verified``); a damaged one is listed
        with ``damage`` instead of failing the page. ``contains`` keeps the episodes whose id, keywords,
        time or text contain it (any case); it decodes every episode of the namespace, so for a large
        one prefer :meth:`recall`.

        >>> [v.id for v in mem.browse(contains="BRIDGE").items]
        ['e1']
        """
        if not 1 <= limit <= MAX_PAGE or offset < 0:
            raise ConfigError(f"limit must be 1..{MAX_PAGE} and offset >= 0, got limit={limit}, offset={offset}.")
        namespace = validate_namespace(namespace)
        if not contains:
            total = self._store.count(namespace)
            n = max(0, min(limit, total - offset))
            rows = self._store.list_rows(namespace, limit=n, offset=total - offset - n)[::-1] if n else []
            items = self._views(rows)
        else:
            needle = contains.casefold()
            newest_first = [r for batch in self._store.iter_rows(namespace, batch=500) for r in batch][::-1]
            found: builtins.list[EpisodeView] = []
            for i in range(0, len(newest_first), 200):
                for v in self._views(newest_first[i : i + 200]):
                    if any(needle in f.casefold() for f in (v.id, v.keywords, v.time or "", v.text or "")):
                        found.append(v)
            total = len(found)
            items = found[offset : offset + limit]
        nxt = offset + len(items) if items and offset + len(items) < total else None
        return EpisodePage(items=items, total=total, offset=offset, next_offset=nxt)

    def inspect(self, id: str, *, namespace: str = "default", neighbours: int = 2) -> EpisodeDetail:
        """One episode for a viewer, with up to ``neighbours`` episodes stored just before and after it.

        >>> mem.inspect("e1").episode.verified
        True
        """
        if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 0 <= neighbours <= 10:
            raise ConfigError(f"neighbours must be a whole number from 0 to 10, got {neighbours!r}.")
        r = self._row(id, namespace)
        if r is not None:
            pos = int((self._store.namespace_rowids(r.namespace) < r.rowid).sum())
            lo = max(0, pos - neighbours)
            rows = self._store.list_rows(r.namespace, limit=pos - lo + 1 + neighbours, offset=lo)
            for k, got in enumerate(rows):
                if got.rowid == r.rowid:  # else forgotten meanwhile
                    views = self._views(rows)
                    return EpisodeDetail(views[k], views[:k], views[k + 1 :])
        raise NotFoundError(f"No memory with id {id!r} in namespace {namespace!r}. Check the id and the namespace.")

    def timeline(self, namespace: str = "default") -> builtins.list[DayCount]:
        """How many episodes of ``namespace`` were stored on each UTC day, oldest first (days with none left out)."""
        counts: Counter[str] = Counter()
        for rows in self._store.iter_rows(validate_namespace(namespace), batch=1000):
            counts.update(datetime.fromtimestamp(r.created_at, timezone.utc).date().isoformat() for r in rows)
        return [DayCount(day, n) for day, n in sorted(counts.items())]

    def count(self, namespace: str | None = None) -> int:
        """Number of episodes in ``namespace`` (all namespaces if ``None``)."""
        return self._store.count(namespace)

    def _index(self, namespace: str) -> NamespaceIndex:
        gen = self._store.generation()
        with self._index_lock:
            idx = self._indexes.get(namespace)
            if idx is None:
                idx = None
                if self._sealed_files:
                    idx = self._sealed_file_snapshot(namespace)
                elif self._snapshot_dir is not None:
                    emb = self._embedder
                    idx = snapshot.load(self._snapshot_dir, namespace, emb.dim, self.ranking, emb.id)
                elif self._store_snapshots:
                    idx = self._stored_snapshot(namespace)
                idx = idx or NamespaceIndex(self._embedder.dim, self.ranking, self._nearest(namespace),
                                            self._key_source(namespace))  # fmt: skip
                idx.snapshot_size = idx.lex.n
                self._indexes[namespace] = idx
            if idx.generation != gen:
                bound = self._store.embedder_info()
                if bound is not None and bound[0] != self._embedder.id:  # another process ran a reembed
                    raise EmbedderMismatchError(
                        f"The store at {self.location} now uses the embedder {bound[0]!r} (it was reembedded); this "
                        f"process still holds {self._embedder.id!r}. Reopen the store (restart the server) to use it."
                    )
                for bad in idx.apply(self._store.changes(namespace, idx.seq), self._store.index_rows):
                    logger.warning(
                        "Memory %r of namespace %r cannot be recalled: %s. Run `rememory verify`, then re-add it.",
                        bad.id, namespace, bad.damage,
                    )  # fmt: skip
                idx.generation = gen
                # Large namespaces keep a snapshot so that a new process starts fast.
                grown = idx.lex.n - idx.snapshot_size
                # Files are cheap to map: from SNAPSHOT_MIN_EPISODES. The database copy costs a blob write
                # under the namespace's lock: only for namespaces past the ANN threshold.
                large = self.ranking.ann_threshold
                if self._snapshot_dir is not None:
                    large = min(large, SNAPSHOT_MIN_EPISODES)
                keeps = self._snapshot_dir is not None or self._store_snapshots
                if (keeps and not self.read_only and idx.size >= large
                        and grown >= max(1, idx.snapshot_size // 10)):  # fmt: skip
                    self._save_snapshot(idx, namespace)
            return idx

    def _stored_snapshot(self, namespace: str) -> NamespaceIndex | None:
        """The index snapshot the store keeps for ``namespace``, as of its change number; None if none is usable."""
        got = self._store.load_index_snapshot(namespace)
        if got is None:
            return None
        try:
            data = got.data
            if self.encrypted:
                cipher = self._keys(namespace)
                assert isinstance(cipher, SealedKeys)
                data = cipher.cipher.open(data, "snapshot")
            idx = snapshot.from_bytes(data, self._embedder.dim, self.ranking, self._nearest(namespace),
                                      self._key_source(namespace))  # fmt: skip
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile, IntegrityError) as exc:
            logger.warning("The recall snapshot of namespace %r in %s is unreadable (%s: %s); rebuilding the index "
                           "from the store.", namespace, self.location, type(exc).__name__, exc)  # fmt: skip
            return None
        idx.seq = got.seq
        return idx

    def _sealed_file_snapshot(self, namespace: str) -> NamespaceIndex | None:
        """An encrypted store's snapshot file of ``namespace``, opened; None if there is none usable."""
        assert self._snapshot_dir is not None
        data = snapshot.read_sealed(self._snapshot_dir, namespace)
        if data is None:
            return None
        try:
            keys = self._keys(namespace)
            assert isinstance(keys, SealedKeys)
            plain = keys.cipher.open(data, "snapshot", self._embedder.id)
            return snapshot.from_bytes(plain, self._embedder.dim, self.ranking, None)
        except (ValueError, KeyError, EOFError, zipfile.BadZipFile, IntegrityError) as exc:
            logger.warning("The sealed recall snapshot of namespace %r in %s is unusable (%s: %s); rebuilding the "
                           "index from the store.", namespace, self.location, type(exc).__name__, exc)  # fmt: skip
            return None

    def _nearest(self, namespace: str) -> Callable[[np.ndarray, int, bool], builtins.list[int]] | None:
        """The store's key search for ``namespace``'s index, where the store has one."""
        if not self._store.server_ann:
            return None
        store = self._store
        return lambda q, k, context: store.nearest(namespace, q, k, context=context)

    def _key_source(self, namespace: str) -> StoreKeys | None:
        """The store's keys of ``namespace``, where it serves them (then large namespaces' indexes hold no key)."""
        if not (self._store.server_ann and self._store.server_keys):
            return None
        return StoreKeys(self._store, namespace)

    def _start_search(self, call: Callable[[], Pool]) -> Future[Pool]:
        """Run one of the store's key searches on a thread of this Memory's own."""
        with self._searches_lock:
            if self._searches is None:
                # Two per recall in flight (own and context keys); a few recalls at once share them.
                self._searches = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rememory-search")
            return self._searches.submit(call)

    def _save_snapshot(self, idx: NamespaceIndex, namespace: str) -> None:
        # Under the snapshot lock, and only if every episode in it is still stored: a forget that
        # committed meanwhile must not be written back to disk (forget drops snapshots under this lock).
        if self._snapshot_dir is None:  # the store keeps it, and refuses one that a deletion made stale
            assert idx.seq is not None
            data = snapshot.to_bytes(idx)
            keys = self._keys(namespace)
            if isinstance(keys, SealedKeys):  # sealed like every row: the snapshot holds keys and hashes
                data = keys.cipher.seal(data, "snapshot")
            if self._store.save_index_snapshot(namespace, idx.seq, data):
                idx.snapshot_size = idx.lex.n
            return
        with snapshot.locked(self._snapshot_dir):
            if set(idx.slot_of) <= set(self._store.namespace_rowids(namespace).tolist()):
                if self._sealed_files:
                    keys = self._keys(namespace)
                    assert isinstance(keys, SealedKeys)
                    # Bound to the embedder: a snapshot of another model's keys fails to open, and is rebuilt.
                    data = keys.cipher.seal(snapshot.to_bytes(idx), "snapshot", self._embedder.id)
                    snapshot.write_sealed(self._snapshot_dir, namespace, data)
                else:
                    snapshot.save(idx, self._snapshot_dir, namespace, self._embedder.id)
                idx.snapshot_size = idx.lex.n

    def preload(self, namespace: str = "default") -> None:
        """Load the embedder and ``namespace``'s recall index now, so that the first recall answers at once.

        A server calls it as it starts (``rememory mcp`` does, while it imports the MCP SDK).

        >>> mem.preload("default")
        """
        namespace = validate_namespace(namespace)
        self._embedder.embed_query("warm up")
        if self._store.count(namespace):
            self._index(namespace)

    # `builtins.list`: inside this class `list` names the method above.
    def recall(
        self,
        query: str,
        top_k: int = 3,
        namespace: str = "default",
        *,
        since: str | datetime | date | None = None,
        until: str | datetime | date | None = None,
        explain: bool = False,
    ) -> builtins.list[RecallHit]:
        """The ``top_k`` episodes of ``namespace`` that best match ``query``, best first.

        Ranking fuses BM25 (over the episode and windows of its neighbours) with dense key
        similarity (see :class:`~rememory.index.config.RankingConfig`). ``RecallHit.score`` is
        that hybrid relevance in [0, 1]. Only the hits' cells are decoded, each checked
        against its digest.

        An episode's time is its ``time``, or else a date written in its keywords
        (:func:`rememory.timeparse.episode_time`), read once when it is added. ``since`` and ``until``
        (ISO 8601 strings or datetimes, both inclusive; a date alone as ``until`` includes that day) keep
        only the episodes whose time falls between them, inside the ranking, so ``top_k`` hits come back
        when that many match; episodes with no time are left out whenever either is given. A query that
        names a time ("in May 2023", "last week") adds the ``time_match`` signal: 1 for the episodes of
        that time, less the farther outside it (``RankingConfig.time_decay``).

        With ``explain=True`` each hit's ``RecallHit.explain`` maps every signal in use (``bm25_own``,
        ``bm25_ctx1``, ``bm25_ctx2``, ``bm25_ctx8``, ``dense_own``, ``dense_ctx``, ``dense_near``,
        ``dense_far``, ``dense_contrast`` up to ``contrast_max`` episodes, ``prf``, and ``time_match`` when
        the query names a time) to its share of the score:
        its weight times its value normalised over this query's candidates, divided by the sum of the
        weights in use. The shares sum to ``score``. Without it, ``explain`` is ``None``.

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
        ahead = idx.search_ahead(q, self._start_search) if self._store.server_ann else None
        when = self._time_signal(query, window)
        scored = idx.search(q, idx.lexical(self._keys(namespace).tokens(query)), top_k, explain=explain, time=when,
                            ahead=ahead)  # fmt: skip
        # The index is a cache: every hit is checked against its store row in this namespace
        # before anything is decoded (a concurrent forget, or a tampered snapshot, yields nothing).
        rows = self._store.rows(namespace, [s.id for s in scored])
        picked = [(rows[s.id], s) for s in scored if s.id in rows]
        got = self._reconstruct([r for r, _ in picked])
        return [RecallHit(r.id, s.score, r.keywords, self._text(r, got), r.time, r.namespace, s.signals)
                for r, s in picked]  # fmt: skip

    def ranking_features(self, query: str, namespace: str = "default", top_k: int = 10) -> RankingFeatures | None:
        """Every ranking signal of ``query`` over its candidates in ``namespace`` (``None`` if it is empty).

        What :meth:`recall` ranks with this memory's :class:`RankingConfig`, with the signals of weight 0
        too: tuning (:func:`rememory.evaluate.cross_validate`) re-fuses them under other weights.
        """
        query = validate_query(query)
        namespace = validate_namespace(namespace)
        if namespace not in self._indexes and self._store.count(namespace) == 0:
            return None
        idx = self._index(namespace)
        q = self._embedder.embed_query(query)
        if q.shape[0] != idx.dim:
            raise mismatch(self.location, "?", idx.dim, self._embedder.id, q.shape[0])
        when = self._time_signal(query, None, every=True)
        f = idx.features(q, idx.lexical(self._keys(namespace).tokens(query), every=True), top_k, every=True, time=when)
        return None if f is None else RankingFeatures(f, tuple(idx.ids[s] for s in f.cand.tolist()))

    def _time_signal(self, query: str, window: TimeRange | None, *, every: bool = False) -> TimeSignal | None:
        """The since/until window and the range the query names, in epoch seconds (None when neither applies).

        The query is read for a time only if ``time_match`` weighs it, or ``every`` (the tuner) wants it.
        """
        named = query_range(query, datetime.now(timezone.utc)) if every or self.ranking.time_match else None
        if window is None and named is None:
            return None
        return TimeSignal(window=_span(window), named=_span(named))

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
        """Sizes of the store (or of one namespace): episodes, text, memory and on-disk bytes.

        ``memory_bytes`` counts every episode's artifact, whichever engine made it, and the engines'
        shared models (of the namespace, or of the whole store).
        """
        rep = self._store.size_report(namespace)
        bound = self._store.embedder_info()
        emb, dim = bound if bound is not None else (self._embedder.id, 0)
        return StoreStats(
            episodes=rep.episodes, text_bytes=rep.text_bytes, memory_bytes=rep.memory_bytes,
            store_bytes=rep.store_bytes, embedder=emb, dim=dim, namespaces=rep.namespaces, engine=self._engine_name,
        )  # fmt: skip

    # --- export and import (rememory.archive) ---

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str | None = None,
        format: str = "archive",
        progress: Callable[[ArchiveProgress], None] | None = None,
        secret: str | bytes | None = None,
    ) -> ExportReport:
        """Write the store (or one namespace) to ``path``, replacing it atomically.

        ``format="archive"`` writes a portable archive (docs/archive.md): the memories' weights as
        stored, their metadata, keys and digests, and no decoded text; every memory is checked
        against its digest first. ``format="jsonl"`` writes the decoded episodes (namespace, id,
        keywords, text, time), one JSON object a line, for other tools and for ``rememory train``.

        An archive of an encrypted store is sealed under ``secret`` (default: the store's own secret) and
        carries its namespaces' data keys; ``secret`` also seals an archive of a plaintext store. A JSONL
        export is decoded text by definition: it is never sealed.
        """
        from .archive import write_archive, write_jsonl

        if namespace is not None:
            namespace = validate_namespace(namespace)
        if format == "archive":
            ring = self._store.keyring
            seal = secret if secret is not None else (ring.secret if ring is not None else None)
            return write_archive(self._store, path, namespace=namespace, progress=progress, keys=self._keys,
                                 secret=seal, data_keys=ring.data_key if ring is not None else None)  # fmt: skip
        if format == "jsonl":
            return write_jsonl(self._store.iter_rows(namespace, batch=500), self._reconstruct, path,
                               total=self._store.count(namespace), progress=progress)  # fmt: skip
        raise ConfigError(f"Unknown export format {format!r}; use 'archive' or 'jsonl'.")

    def import_archive(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[ArchiveProgress], None] | None = None,
        secret: str | bytes | None = None,
    ) -> ImportReport:
        """Load an archive written by :meth:`export` into this store.

        The whole archive is checked first (its hashes, its structure, and every memory decoded
        against its digest); a damaged or truncated archive, another embedder, or an episode that
        differs from one stored under the same id raises, and nothing from it is stored. Episodes
        already stored with identical content are skipped, so importing twice changes nothing.

        A sealed archive opens with ``secret`` (default: this store's secret). Importing into an encrypted
        store, or from an encrypted store's archive, converts: every memory is re-encoded (its cell trained
        again) under this store's keys, keeping its recall keys; so a plaintext store's archive imported
        into an encrypted store makes an encrypted copy of it.
        """
        from .archive import import_archive

        ring = self._store.keyring
        return import_archive(self._store, path, embedder_id=self._embedder.id,
                              max_text_bytes=self._max_text_bytes, progress=progress,
                              secret=secret if secret is not None else (ring.secret if ring is not None else None),
                              keys=self._keys, convert=self._convert_archived)  # fmt: skip

    def _convert_archived(
        self, todo: Sequence[ArchivedEpisode]
    ) -> tuple[builtins.list[NewEpisode], builtins.list[Artifact]]:
        """What this store keeps of checked archived episodes: as they are between plaintext stores, else
        re-encoded under this store's keys (cells trained with its seeds, keyed tokens and digests)."""
        if not self.encrypted and not any(a.keyed for a in todo):
            return [a.new for a in todo], [a.artifact for a in todo]
        news: builtins.list[NewEpisode] = []
        arts: builtins.list[Artifact] = []
        for i in range(0, len(todo), self._batch_size):
            chunk = todo[i : i + self._batch_size]
            keys = [self._keys(a.episode.namespace, create=True) for a in chunk]
            texts = [a.episode.text.encode("utf-8") for a in chunk]
            got: builtins.list[Artifact | None] = [None] * len(chunk)
            for ns in sorted({a.episode.namespace for a in chunk}):  # each namespace with its own engine instance
                pos = [j for j, a in enumerate(chunk) if a.episode.namespace == ns]
                made = self._engine_for(self._engine_name, ns).encode(
                    [keys[j].seed(chunk[j].episode.keywords) for j in pos], [texts[j] for j in pos])
                for j, art in zip(pos, made, strict=True):
                    got[j] = art
            arts += [a for a in got if a is not None]
            for k, a, data in zip(keys, chunk, texts):
                ep = a.episode
                news.append(dc_replace(
                    a.new, digest=k.digest(ep.namespace, ep.id, data, k.digest_format), digest_format=k.digest_format,
                    tokens=k.tokens(f"{ep.keywords} {ep.text}"),
                ))  # fmt: skip
        return news, arts


def _decoded(
    rows: Sequence[Row], got: dict[int, bytes | IntegrityError], fail: Callable[[Row, object], None]
) -> list[tuple[Row, bytes]]:
    """The rows whose text decoded, with it; each one that did not goes to ``fail`` with its error."""
    ok = []
    for r in rows:
        data = got[r.rowid]
        if isinstance(data, bytes):
            ok.append((r, data))
        else:
            fail(r, data)
    return ok


def _span(rng: TimeRange | None) -> Span | None:
    """``rng`` (naive UTC datetimes) in epoch seconds, as the index keeps episode times."""
    if rng is None:
        return None
    return Span(*(None if t is None else t.replace(tzinfo=timezone.utc).timestamp() for t in (rng.start, rng.end)))
