"""Shared fixtures. Every test gets its own user data directory; nothing touches the real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("REMEMORY_HOME", str(home))
    for var in ("REMEMORY_STORE", "REMEMORY_EMBEDDER", "REMEMORY_MAX_TEXT_BYTES"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture(scope="session")
def embedder():
    """The real shipped all-MiniLM-L6-v2, loaded once per session."""
    from rememory.embed import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder()
    emb.embed("warm up")
    return emb


@pytest.fixture
def make_memory(tmp_path: Path, embedder):
    from rememory import Memory

    opened = []

    def make(name: str = "store", **kw):
        kw.setdefault("embedder", embedder)
        mem = Memory(tmp_path / name, **kw)
        opened.append(mem)
        return mem

    yield make
    for mem in opened:
        mem.close()  # closing twice is harmless
