import numpy as np
import pytest

from rememory.embed import SentenceTransformerEmbedder
from rememory.errors import EmbedderError

pytestmark = pytest.mark.model


def test_shipped_model_loads_offline(embedder) -> None:
    assert embedder.id == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.dim == 384
    vecs = embedder.embed_batch(["walking on a bridge", "прогулка по мосту", "a cat at the vet"])
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[2] < vecs[0] @ embedder.embed("walking across a bridge")


def test_unloadable_model_is_an_error_not_a_fallback(tmp_path) -> None:
    emb = SentenceTransformerEmbedder(str(tmp_path / "no-such-model"))
    with pytest.raises(EmbedderError, match="Could not load the embedding model"):
        emb.embed("x")


def test_bf16_queries_stay_within_int8_key_error_of_float32(embedder) -> None:
    fast = SentenceTransformerEmbedder(query_precision="bfloat16")
    exact = SentenceTransformerEmbedder(query_precision="float32")
    for text in ("When did Caroline go to the LGBTQ support group?", "собирали яблоки в саду"):
        a, b = fast.embed(text), exact.embed(text)
        assert a.dtype == np.float32 and abs(float(np.linalg.norm(a)) - 1.0) < 1e-5  # pooled in float32
        assert float(a @ b) > 0.9995
        assert not np.array_equal(a, b)  # the bf16 path really ran
    # batches (stored keys) always use the float32 model
    texts = [f"episode {i}" for i in range(6)]
    np.testing.assert_array_equal(fast.embed_batch(texts), exact.embed_batch(texts))


def test_unknown_query_precision_is_named(monkeypatch) -> None:
    with pytest.raises(EmbedderError, match=r"float16.*auto, float32, bfloat16"):
        SentenceTransformerEmbedder(query_precision="float16")
    monkeypatch.setenv("REMEMORY_QUERY_PRECISION", "fp8")
    with pytest.raises(EmbedderError, match="REMEMORY_QUERY_PRECISION"):
        SentenceTransformerEmbedder()
