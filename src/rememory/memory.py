"""The :class:`Memory` facade: wires the embedder, the store and the memory engine together."""

from __future__ import annotations

import builtins
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace as dc_replace
from typing import Any

from .cells.codec import digest
from .cells.engine import MlpCellEngine
from .cells.model import CellConfig
from .config import resolve_max_text_bytes, resolve_store_path
from .embed import Embedder, load_embedder
from .engine import Artifact, MemoryEngine, get_engine
from .episodes import validate_episode, validate_many, validate_namespace
from .errors import ConfigError, DuplicateIdError, IntegrityError, NotFoundError
from .index import snapshot
from .index.config import RankingConfig
from .index.live import NamespaceIndex
from .index.tokenize import token_hashes
from .limits import MAX_PAGE, MAX_TOP_K
from .records import Episode, RecallHit, StoreStats, TrainProgress, VerifyReport
from .store.sqlite import NewEpisode, Row, Store, mismatch, quantize_key

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
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        self.path = resolve_store_path(path)
        self._store = Store(self.path, busy_timeout=busy_timeout)
        bound = self._store.embedder_info()
        if embedder is None and bound is not None:
            embedder = bound[0]  # reopen with the model the store was built with
        self._embedder = load_embedder(embedder)
        if bound is not None and bound[0] != self._embedder.id:
            raise mismatch(self.path, bound[0], bound[1], self._embedder.id, None)
        self._engine: MemoryEngine = MlpCellEngine(cell_config)
        self.ranking = ranking or RankingConfig()
        self._max_text_bytes = resolve_max_text_bytes(max_text_bytes)
        self._batch_size = batch_size
        self._indexes: dict[str, NamespaceIndex] = {}
        self._snapshot_dir = self.path / "index"
        self._index_lock = threading.Lock()

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
        existing = self._store.rows([e.id for e in eps])
        todo: list[tuple[Episode, bytes, bytes]] = []
        for ep in eps:
            data = ep.text.encode("utf-8")
            dg = digest(data)
            row = existing.get(ep.id)
            if row is not None:
                if (row.namespace, row.keywords, row.time, row.digest) == (ep.namespace, ep.keywords, ep.time, dg):
                    continue
                if not replace:
                    raise DuplicateIdError(
                        f"An episode with id {ep.id!r} already exists with different content. Give the new "
                        "episode another id, or replace the old one (replace=True, CLI --replace)."
                    )
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
                q, scale = quantize_key(vec)
                cq, cscale = quantize_key(ctx_vec)
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
                prev = self._reconstruct(last)[last[0].id]
                # A damaged cell is reported by recall and verify; it must not block new memories.
                if isinstance(prev, bytes):
                    before = f"{last[0].keywords} {prev.decode('utf-8')}"
            for j, i in enumerate(idx):
                window = [before if j == 0 else texts[j - 1], texts[j], texts[j + 1] if j + 1 < len(texts) else ""]
                out[i] = " ".join(t for t in window if t)
        return out

    def forget(self, id: str, *, namespace: str | None = None) -> None:
        """Delete an episode and erase its cell's weights from disk.

        With ``namespace``, an episode of another namespace counts as missing (tenant isolation).

        >>> mem.forget("t1")
        """
        if namespace is not None and self._row(id, namespace) is None:
            raise NotFoundError(f"No memory with id {id!r} in namespace {namespace!r}; nothing was forgotten.")
        if not self._store.delete([id]):
            raise NotFoundError(f"No memory with id {id!r}; nothing was forgotten. Check the id (rememory show ID).")

    def _row(self, id: str, namespace: str | None) -> Row | None:
        r = self._store.rows([id]).get(id)
        if r is None or (namespace is not None and r.namespace != namespace):
            return None
        return r

    # --- reads ---

    def _reconstruct(self, rows: Sequence[Row]) -> dict[str, bytes | Exception]:
        arts = self._store.load_artifacts(rows)
        out: dict[str, bytes | Exception] = {}
        for r in rows:
            art = arts[r.id]
            if isinstance(art, Exception):
                out[r.id] = IntegrityError(
                    f"The memory cell {r.id!r} is unreadable ({art}). Its weights file is damaged; "
                    "run `rememory verify` to list every affected cell, then re-add them.",
                    ids=[r.id],
                )
                continue
            out[r.id] = self._decode_checked(r, art)
        return out

    def _decode_checked(self, r: Row, art: Artifact) -> bytes | Exception:
        try:
            data = get_engine(art.engine).decode(art, r.keywords)
        except (ValueError, KeyError) as exc:
            return IntegrityError(f"The memory cell {r.id!r} is malformed ({exc}); re-add the episode.", ids=[r.id])
        if len(data) != r.n_bytes or digest(data) != r.digest:
            return IntegrityError(
                f"The memory cell {r.id!r} did not reconstruct its exact text (digest mismatch): its weights "
                "are damaged. Run `rememory verify` to list every affected cell, then re-add them.",
                ids=[r.id],
            )
        return data

    def _text(self, r: Row, got: dict[str, bytes | Exception]) -> str:
        data = got[r.id]
        if isinstance(data, Exception):
            raise data
        return data.decode("utf-8")

    def get(self, id: str, *, namespace: str | None = None) -> Episode:
        """The episode with this id, its text reconstructed from its cell.

        With ``namespace``, an episode of another namespace counts as missing (tenant isolation).

        >>> mem.get("e1").text
        'We walked with Ilya across the bridge.'
        """
        r = self._row(id, namespace)
        if r is None:
            where = f" in namespace {namespace!r}" if namespace is not None else ""
            raise NotFoundError(f"No memory with id {id!r}{where}. Check the id and the namespace.")
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
                idx = snapshot.load(self._snapshot_dir, namespace, self._embedder.dim, self.ranking)
                idx = idx or NamespaceIndex(self._embedder.dim, self.ranking)
                idx.snapshot_size = idx.lex.n
                self._indexes[namespace] = idx
            if idx.generation != gen:
                idx.sync(self._store.namespace_rowids(namespace), self._store.index_rows)
                idx.generation = gen
                # Large namespaces keep a snapshot so that a new process starts fast.
                grown = idx.lex.n - idx.snapshot_size
                if idx.size >= self.ranking.ann_threshold and grown >= max(1, idx.snapshot_size // 10):
                    snapshot.save(idx, self._snapshot_dir, namespace)
                    idx.snapshot_size = idx.lex.n
            return idx

    # `builtins.list`: inside this class `list` names the method above.
    def recall(self, query: str, top_k: int = 3, namespace: str = "default") -> builtins.list[RecallHit]:
        """The ``top_k`` episodes of ``namespace`` that best match ``query``, best first.

        Ranking fuses BM25 (over the episode and windows of its neighbours) with dense key
        similarity (see :class:`~rememory.index.config.RankingConfig`). ``RecallHit.score`` is
        that hybrid relevance in [0, 1]. Only the hits' cells are decoded, each checked
        against its digest.

        >>> [hit.id for hit in mem.recall("bridge at night", top_k=1)]
        ['e1']
        """
        if not isinstance(query, str) or not query.strip():
            raise ConfigError("The recall query is empty; give a phrase to search for.")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise ConfigError(f"top_k must be a whole number from 1 to {MAX_TOP_K}, got {top_k!r}.")
        namespace = validate_namespace(namespace)
        if namespace not in self._indexes and self._store.count(namespace) == 0:
            return []  # answers without loading the model
        idx = self._index(namespace)
        if idx.size == 0:
            return []
        q = self._embedder.embed(query)
        if q.shape[0] != idx.dim:
            raise mismatch(self.path, "?", idx.dim, self._embedder.id, q.shape[0])
        scored = idx.search(q, idx.lexical(token_hashes(query)), top_k)
        rows = self._store.rows([s.id for s in scored])
        picked = [(rows[s.id], s.score) for s in scored if s.id in rows]  # a concurrent forget
        got = self._reconstruct([r for r, _ in picked])
        return [RecallHit(r.id, s, r.keywords, self._text(r, got), r.time, r.namespace) for r, s in picked]

    def verify(self, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
        """Decode every cell and compare it with its digest; returns which cells failed and why.

        >>> mem.verify().ok
        True
        """
        total = self._store.count()
        checked = 0
        failed: dict[str, str] = {}
        for rows in self._store.iter_rows(batch=500):
            for id_, res in self._reconstruct(rows).items():
                if isinstance(res, Exception):
                    failed[id_] = str(res)
            checked += len(rows)
            if progress is not None:
                progress(checked, total)
        return VerifyReport(checked=checked, failed=failed)

    def stats(self, namespace: str | None = None) -> StoreStats:
        """Sizes of the store (or of one namespace): episodes, text, cell and on-disk bytes."""
        rep = self._store.size_report(namespace)
        bound = self._store.embedder_info()
        emb, dim = bound if bound is not None else (self._embedder.id, 0)
        return StoreStats(
            episodes=rep["episodes"], text_bytes=rep["text_bytes"], cell_bytes=rep["cell_bytes"],
            store_bytes=rep["store_bytes"], embedder=emb, dim=dim, namespaces=rep["namespaces"],
        )  # fmt: skip
