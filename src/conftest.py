"""What the docstring examples under src/ run with (``make test`` collects them with --doctest-modules).

Each example runs in its own temporary directory and user data directory, with ``tmp_path`` and
``memory``, an empty real store; the examples of :class:`rememory.Memory` also get ``mem``, a
real store holding the episodes they refer to ("e1" and "t1").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

collect_ignore = ["rememory/__main__.py"]  # importing it runs the CLI


@pytest.fixture(scope="session")
def _doc_embedder() -> Any:
    from rememory.embed import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@pytest.fixture(autouse=True)
def _doctest_globals(
    request: pytest.FixtureRequest,
    doctest_namespace: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[None]:
    monkeypatch.setenv("REMEMORY_HOME", str(tmp_path / "home"))
    for var in ("REMEMORY_STORE", "REMEMORY_EMBEDDER", "REMEMORY_MAX_TEXT_BYTES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # examples that name a relative store write here
    doctest_namespace["tmp_path"] = tmp_path
    dtest = getattr(request.node, "dtest", None)
    if dtest is None:
        yield
        return
    from rememory import Memory

    embedder = request.getfixturevalue("_doc_embedder")
    with Memory(tmp_path / "empty-store", embedder=embedder) as memory:
        doctest_namespace["memory"] = memory
        if not dtest.name.startswith("rememory.memory."):
            yield
        else:
            with Memory(tmp_path / "doc-store", embedder=embedder) as mem:
                mem.add_many([
                    {"keywords": "Ilya, bridge, night", "text": "We walked with Ilya across the bridge.", "id": "e1"},
                    {"keywords": "tea", "text": "Green tea at noon.", "id": "t1"},
                ])  # fmt: skip
                doctest_namespace["mem"] = mem
                yield
                del doctest_namespace["mem"]
        del doctest_namespace["memory"]
