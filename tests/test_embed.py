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
