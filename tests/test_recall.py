"""Recall ranking behaviour and index consistency, with the real model and a real store."""

import json
from datetime import datetime

import numpy as np
import pytest

from rememory import Memory
from rememory.errors import ConfigError
from rememory.index.config import WEIGHTS, RankingConfig

from .conftest import REPO

pytestmark = pytest.mark.model

EXAMPLES = json.loads((REPO / "examples" / "episodes.json").read_text("utf-8"))


@pytest.fixture
def trained(make_memory):
    mem = make_memory()
    mem.add_many(EXAMPLES)
    return mem


def test_exact_keyword_match_wins(trained) -> None:
    assert trained.recall("Rachmaninoff", top_k=1)[0].id == "concert"
    assert trained.recall("kefir", top_k=1)[0].id == "grandma-recipe"


def test_paraphrase_is_found(trained) -> None:
    hits = trained.recall("an evening stroll over the river with Ilya", top_k=3)
    assert hits[0].id == "bridge-night"
    assert 0 <= hits[-1].score <= hits[0].score <= 1


def test_cyrillic_query_finds_russian_episode(trained) -> None:
    assert trained.recall("сбор яблок на даче с бабушкой", top_k=1)[0].id == "ru-dacha"
    assert trained.recall("собака впервые увидела снег", top_k=1)[0].id == "ru-dog"


def test_index_follows_add_and_forget_across_instances(trained, make_memory, store_at) -> None:
    other = Memory(store_at("store"), embedder=trained.embedder)  # a second handle, as another process
    assert other.recall("Rachmaninoff", top_k=1)[0].id == "concert"
    trained.forget("concert")
    trained.add("Zanzibar, holiday", "Snorkelling off Zanzibar with a sea turtle.", id="zanzibar")
    assert "concert" not in [h.id for h in other.recall("Rachmaninoff piano concerto", top_k=21)]
    assert other.recall("Zanzibar", top_k=1)[0].id == "zanzibar"
    other.close()


def test_indexes_persist_across_reopen(make_memory, store_at, embedder) -> None:
    mem = make_memory()
    mem.add_many(EXAMPLES)
    before = [h.id for h in mem.recall("a long walk along the embankment", top_k=5)]
    mem.close()
    again = Memory(store_at("store"), embedder=embedder)
    assert [h.id for h in again.recall("a long walk along the embankment", top_k=5)] == before
    again.close()


def test_ann_path_agrees_with_exact_and_forgets(make_memory, store_at, embedder) -> None:
    mem = make_memory(ranking=RankingConfig(ann_threshold=5, candidates=10))
    mem.add_many(EXAMPLES)
    exact = Memory(store_at("store"), embedder=embedder)
    for query in ("walking on a bridge with Ilya", "marathon personal best", "переезд в Петербург"):
        assert mem.recall(query, top_k=1)[0].id == exact.recall(query, top_k=1)[0].id
    mem.forget("marathon")
    assert "marathon" not in [h.id for h in mem.recall("marathon personal best", top_k=10)]
    exact.close()


def test_context_key_uses_neighbours(make_memory) -> None:
    mem = make_memory()
    mem.add_many([
        {"id": "q", "keywords": "Anna", "text": "Anna: Guess where I went for my holiday?"},
        {"id": "a", "keywords": "Boris", "text": "Boris: No idea, tell me!"},
        {"id": "b", "keywords": "Anna", "text": "Anna: Iceland! We saw the northern lights."},
        {"id": "c", "keywords": "Boris", "text": "Boris: My cat is sick again."},
    ])  # fmt: skip
    # "No idea, tell me!" says nothing on its own; its neighbours make it a holiday turn.
    ids = [h.id for h in mem.recall("holiday in Iceland", top_k=4)]
    assert ids.index("a") < ids.index("c")


def test_large_namespace_snapshot_round_trip(make_sqlite_memory, tmp_path, embedder) -> None:
    eps = [{"id": f"n{i}", "keywords": f"note {i}", "text": f"Note number {i}: item {i * 7 % 13} on the list."}
           for i in range(240)]  # fmt: skip
    cfg = RankingConfig(ann_threshold=150, candidates=50)
    mem = make_sqlite_memory(ranking=cfg)
    mem.add_many(eps[:200])
    mem.recall("note number 5", top_k=1)  # syncs and writes the snapshot
    index_dir = tmp_path / "store" / "index"
    assert list(index_dir.glob("*.npz"))
    mem.close()
    mapped = Memory(tmp_path / "store", embedder=embedder, ranking=cfg)
    assert mapped.recall("Note number 7: item 10", top_k=1)[0].id == "n7"
    idx = mapped._indexes["default"]
    assert isinstance(idx.own._q8, np.memmap) and idx.own._hnsw_is_view  # read from disk lazily
    mapped.forget("n5")
    mapped.add_many(eps[200:])  # changes a mapped, read-only snapshot: copied into memory first
    assert mapped.recall("Note number 215", top_k=1)[0].id == "n215"
    assert not idx.own._hnsw_is_view
    mapped.close()
    again = Memory(tmp_path / "store", embedder=embedder, ranking=cfg)
    ids = [h.id for h in again.recall("Note number 215", top_k=3)]
    assert ids[0] == "n215"
    assert "n5" not in [h.id for h in again.recall("Note number 5", top_k=20)]
    again.close()
    versions = {p.name.split("-")[1].split(".")[0] for p in index_dir.glob("*-*.npy")}
    assert len(versions) == 1  # a newer snapshot removes the files of the older one
    exact = Memory(tmp_path / "store", embedder=embedder, ranking=RankingConfig(ann_threshold=10**9))
    assert exact.recall("Note number 215", top_k=1)[0].id == "n215"
    assert not exact._indexes["default"].own.ann  # an ANN snapshot does not override the ranking's choice
    exact.close()


GARDEN = [
    {"id": "may-a", "keywords": "Ira, dacha", "text": "Planted tomatoes at the dacha with Ira.", "time": "2023-05-03"},
    {"id": "may-b", "keywords": "Ira, dacha, 1:56 pm on 8 May, 2023", "text": "Planted cucumbers at the dacha."},
    {"id": "may-c", "keywords": "Ira, dacha, 20 мая 2023", "text": "Посадили картошку на даче с Ирой."},
    {"id": "may-d", "keywords": "market", "text": "Bought seedlings at the market.", "time": "2023-05-31T23:30:00"},
    {"id": "june", "keywords": "Ira, dacha", "text": "Planted tomatoes at the dacha with Ira.", "time": "2023-06-01"},
    {"id": "old", "keywords": "Ira, dacha, 8 May, 2022", "text": "Planted tomatoes at the dacha, the first time."},
    {"id": "none-1", "keywords": "Ira, dacha", "text": "Planting tomatoes at the dacha with Ira again."},
    {"id": "none-2", "keywords": "dacha", "text": "Tomatoes and cucumbers planted at the dacha."},
]  # fmt: skip
IN_MAY = {"may-a", "may-b", "may-c", "may-d"}


@pytest.mark.parametrize("ann", [False, True])
def test_since_until_filter_within_the_ranking(make_memory, ann: bool) -> None:
    mem = make_memory(ranking=RankingConfig(ann_threshold=3, candidates=2) if ann else RankingConfig())
    mem.add_many(GARDEN)
    # The best matches overall are out of range or undated; the filter still fills top_k from May's episodes
    # (dated by their `time` or by a date in their keywords, in any language), including the weakest match.
    hits = mem.recall("planting tomatoes at the dacha with Ira", top_k=4, since="2023-05-01", until="2023-05-31")
    assert {h.id for h in hits} == IN_MAY
    assert hits[0].id == "may-a"
    assert [h.id for h in mem.recall("tomatoes", top_k=10, since="2023-06-01")] == ["june"]
    before = {h.id for h in mem.recall("tomatoes", top_k=10, until=datetime(2023, 5, 8, 13, 56))}
    assert before == {"old", "may-a", "may-b"}  # an exact until is inclusive; undated episodes are left out
    assert mem.recall("tomatoes", top_k=3, since="2030-01-01") == []


def test_a_query_naming_a_time_ranks_that_time_first(make_memory) -> None:
    mem = make_memory()
    mem.add_many(GARDEN)
    assert mem.recall("planting tomatoes with Ira in June 2023", top_k=1)[0].id == "june"
    assert mem.recall("Что мы сажали на даче с Ирой в мае 2022 года?", top_k=1)[0].id == "old"
    off = make_memory(ranking=RankingConfig(time_match=0.0))  # the same store, without the time signal
    assert off.recall("planting tomatoes with Ira in June 2023", top_k=1)[0].id != "june"


def test_a_named_time_prefers_episodes_written_soon_after_it(make_memory) -> None:
    """An episode is often written after what it tells: the shelter visit of February told on March 2nd. Graded
    nearness ranks it above the same words told months away; inside-or-not (time_decay=0) could not tell them apart."""
    shelter = [
        {"id": "december", "keywords": "Maria, shelter", "text": "I sat with a little girl at the shelter event.",
         "time": "2022-12-01"},
        {"id": "bread", "keywords": "Maria, bakery", "text": "Baked bread for the neighbours.", "time": "2023-02-10"},
        {"id": "march", "keywords": "Maria, shelter", "text": "I sat with a little girl at the shelter event.",
         "time": "2023-03-02"},
    ]  # fmt: skip
    query = "Why did Maria sit with the little girl at the shelter event in February 2023?"
    mem = make_memory()
    mem.add_many(shelter)
    hits = mem.recall(query, top_k=3, explain=True)
    near = {h.id: h.explain["time_match"] for h in hits if h.explain is not None}
    assert hits[0].id == "march" and [h.id for h in hits].index("march") < [h.id for h in hits].index("december")
    assert near["bread"] > near["march"] > 0 and near["december"] < 1e-3
    binary = make_memory(ranking=RankingConfig(time_decay=0.0)).recall(query, top_k=3, explain=True)
    assert {h.id: h.explain["time_match"] for h in binary if h.explain is not None}["march"] == 0.0


def test_bad_since_or_until_is_a_config_error(make_memory) -> None:
    mem = make_memory()
    mem.add_many(GARDEN[:2])
    with pytest.raises(ConfigError, match=r"since='May 2023'.*ISO 8601.*2023-05-01"):
        mem.recall("tomatoes", since="May 2023")
    with pytest.raises(ConfigError, match="swap"):
        mem.recall("tomatoes", since="2023-06-01", until="2023-05-01")
    assert len(mem) == 2


@pytest.mark.parametrize("ann", [False, True])
def test_explain_gives_each_signals_share_summing_to_the_score(make_sqlite_memory, ann) -> None:
    # Neighbour signals at full weight (the examples are unrelated events, which would switch them off), and
    # dense_near on (the defaults leave it out): every signal takes part.
    cfg = RankingConfig(ann_threshold=5 if ann else 10**9, candidates=10, rerank=8, scale_neighbours=False,
                        dense_near=1.0)
    mem = make_sqlite_memory(ranking=cfg)
    mem.add_many(EXAMPLES)
    assert mem._index("default").own.ann is ann
    plain = mem.recall("a concert with piano music", top_k=5)
    hits = mem.recall("a concert with piano music", top_k=5, explain=True)
    assert [(h.id, h.score) for h in hits] == [(h.id, h.score) for h in plain]  # explaining changes no ranking
    assert all(h.explain is None and "explain" not in h.to_dict() for h in plain)
    for h in hits:
        # every signal has a weight; time_match is fused only for a query that names a time,
        # dense_contrast only where the namespace searches its keys exactly
        assert set(h.explain) == set(WEIGHTS) - {"time_match"} - ({"dense_contrast"} if ann else set())
        assert all(v >= 0 for v in h.explain.values())
        assert sum(h.explain.values()) == pytest.approx(h.score, abs=1e-9)
        assert h.to_dict()["explain"] == h.explain
    # A signal switched off is not fused, so it has no share.
    off = make_sqlite_memory(ranking=RankingConfig(prf=0.0, dense_near=0.0))
    shares = off.recall("a concert with piano music", top_k=1, explain=True)[0].explain
    assert "prf" not in shares and "dense_near" not in shares and "bm25_own" in shares


# A conversation that drifts over four topics, six turns each: neighbours share a topic, far turns do not.
CHAT = [{"id": f"c{i}", "keywords": t.split(":")[0], "text": t} for i, t in enumerate([
    "Anna: Shall we go camping by Lake Seliger in July?",
    "Boris: Yes! I can borrow my brother's tent for the lake trip.",
    "Anna: Great, I'll bring sleeping bags and the camping stove.",
    "Boris: We should book the campsite by the lake before June.",
    "Anna: Pack mosquito spray, the lake is full of them in July.",
    "Boris: The campsite rents kayaks, no need to carry ours.",
    "Anna: By the way, how is your new job at the bank going?",
    "Boris: The bank job is hard, my manager wants reports every morning.",
    "Anna: Do you at least like your colleagues at the bank?",
    "Boris: Two of them are nice, we eat lunch together near the office.",
    "Anna: Maybe ask your manager for fewer morning reports.",
    "Boris: I will, after my probation period at the bank ends.",
    "Anna: My cat Murka has been sneezing all week, I'm worried.",
    "Boris: Take Murka to the vet, sneezing cats can have a cold.",
    "Anna: The vet said it is a mild infection and gave her drops.",
    "Boris: Poor Murka. Does she let you put the drops in her eyes?",
    "Anna: She hides under the sofa every time I take the drops out.",
    "Boris: Our cat did that too, wrap her in a towel first.",
    "Anna: Have you started reading the novel I lent you?",
    "Boris: The detective novel? I'm halfway, the inspector is brilliant.",
    "Anna: Don't guess the murderer yet, the ending of the book is a surprise.",
    "Boris: I suspect the gardener, he lied about the night of the murder.",
    "Anna: Keep reading, the last chapter of the novel changes everything.",
    "Boris: I'll finish the book on the train tomorrow.",
])]  # fmt: skip
NEIGHBOUR = ("bm25_ctx1", "bm25_ctx2", "bm25_ctx8", "dense_ctx", "dense_near", "dense_far", "prf")


def _factor(mem: Memory, namespace: str = "default") -> float:
    return mem._index(namespace).coherence.factor(mem.ranking)  # _index syncs the index with the store


def test_coherence_is_low_for_unrelated_episodes_and_high_for_a_conversation(trained) -> None:
    trained.add_many(CHAT, namespace="chat")
    assert _factor(trained) < 0.2  # the examples: separate events
    assert _factor(trained, "chat") > 0.5


def test_unrelated_neighbours_do_not_outrank_the_match(trained) -> None:
    # Cross-language paraphrases: with the neighbour signals at full weight, an episode stored next to
    # others of the query's language won each of these (the examples are grouped by language).
    for query, want in [("прогулка по мосту ночью с Ильёй", "bridge-night"),
                        ("база данных упала ночью", "server-outage"),
                        ("physics exam about Maxwell equations", "ru-exam"),
                        ("playing chess with grandfather", "ru-grandpa"),
                        ("train ride to Vladivostok", "ru-train")]:  # fmt: skip
        hits = trained.recall(query, top_k=3, explain=True)
        assert hits[0].id == want, (query, [h.id for h in hits])
        assert all(h.explain.get(name, 0.0) == 0.0 for h in hits for name in NEIGHBOUR)
        assert all(sum(h.explain.values()) == pytest.approx(h.score, abs=1e-9) for h in hits)


def test_coherence_is_deterministic_and_follows_add_and_forget(make_memory) -> None:
    whole = make_memory("whole")
    whole.add_many(EXAMPLES)
    parts = make_memory("parts")
    parts.add_many(EXAMPLES[:8])
    first = parts._index("default").coherence  # synced: the rest is appended incrementally
    parts.add_many(EXAMPLES[8:])
    assert _factor(parts) == pytest.approx(_factor(whole), abs=1e-9)
    assert parts._index("default").coherence != first
    a, b = whole._index("default").coherence, parts._index("default").coherence
    assert (a.adjacent, a.baseline, a.pairs) == pytest.approx((b.adjacent, b.baseline, b.pairs), abs=1e-9)
    # Appending a conversation raises it; forgetting it again brings it back exactly.
    parts.add_many(CHAT)
    assert parts._index("default").coherence.gain > a.gain + 0.02
    for ep in CHAT:
        parts.forget(ep["id"])
    c = parts._index("default").coherence
    assert (c.adjacent, c.baseline, c.pairs) == pytest.approx((a.adjacent, a.baseline, a.pairs), abs=1e-9)


def test_recall_reads_stored_times_and_never_parses_keywords(make_memory, monkeypatch) -> None:
    mem = make_memory()
    mem.add_many(GARDEN)  # each episode's time is read here, once

    def boom(*args: object) -> None:
        raise AssertionError("recall parsed an episode's keywords")

    monkeypatch.setattr("rememory.timeparse.episode_time", boom)
    monkeypatch.setattr("rememory.timeparse.keywords_time", boom)
    fresh = make_memory()  # a new index, built from the store's rows
    hits = fresh.recall("planting tomatoes at the dacha with Ira", top_k=4, since="2023-05-01", until="2023-05-31")
    assert {h.id for h in hits} == IN_MAY
    assert fresh.recall("planting tomatoes with Ira in June 2023", top_k=1)[0].id == "june"


def test_time_match_is_a_fused_signal_only_for_a_query_naming_a_time(make_memory) -> None:
    mem = make_memory()
    mem.add_many(GARDEN)
    hits = mem.recall("planting tomatoes with Ira in June 2023", top_k=8, explain=True)
    assert hits[0].id == "june" and hits[0].explain["time_match"] > 0
    # The others less, by how far outside June their time is: half an hour (may-d) little, a year (old) all, none 0.
    share = {h.id: h.explain.get("time_match", 0.0) for h in hits}
    assert share["june"] > share["may-d"] > share["may-a"] > share["old"] == pytest.approx(0.0, abs=1e-9)
    assert share["none-1"] == 0.0 and share["may-d"] > 0.9 * share["june"]
    assert all(sum(h.explain.values()) == pytest.approx(h.score, abs=1e-9) for h in hits)
    # A query that names no time ranks and scores exactly as if the signal did not exist, whatever its weight.
    plain = [(h.id, h.score) for h in mem.recall("planting tomatoes with Ira", top_k=8, explain=True)]
    for w in (0.0, 5.0):
        other = make_memory(ranking=RankingConfig(time_match=w))
        assert [(h.id, h.score) for h in other.recall("planting tomatoes with Ira", top_k=8)] == plain
    # So does a query whose named time holds no episode: the signal would be 0 for every candidate.
    none_then = [mem.recall("planting tomatoes with Ira in June 2031", top_k=8, explain=True),
                 make_memory(ranking=RankingConfig(time_match=0.0)).recall("planting tomatoes with Ira in June 2031",
                                                                           top_k=8, explain=True)]  # fmt: skip
    assert [(h.id, h.score) for h in none_then[0]] == [(h.id, h.score) for h in none_then[1]]
    assert "time_match" not in none_then[0][0].explain


def test_snapshots_keep_episode_times_and_one_without_them_is_rebuilt(make_sqlite_memory, tmp_path, embedder) -> None:
    cfg = RankingConfig(ann_threshold=3, candidates=2)
    mem = make_sqlite_memory(ranking=cfg)
    mem.add_many(GARDEN)
    mem.recall("tomatoes", top_k=1)  # syncs and writes the snapshot
    mem.close()
    [manifest] = (tmp_path / "store" / "index").glob("*.npz")
    with np.load(manifest) as z:  # as written before snapshots held episode times
        old = {k: z[k] for k in z.files if k != "times"}
    old["format"] = np.array([2])
    with open(manifest, "wb") as fh:
        np.savez(fh, **old)
    query = "planting tomatoes at the dacha with Ira"
    for _ in range(2):  # the old snapshot is rebuilt from the store; then the new one is read back, times and all
        again = Memory(tmp_path / "store", embedder=embedder, ranking=cfg)
        assert {h.id for h in again.recall(query, top_k=4, since="2023-05-01", until="2023-05-31")} == IN_MAY
        assert again.recall("planting tomatoes with Ira in June 2023", top_k=1)[0].id == "june"
        again.close()
        with np.load(manifest) as z:
            assert int(z["format"][0]) == 3 and np.isnan(z["times"]).sum() == 2  # the two undated episodes


def test_a_snapshot_keeps_the_coherence_so_a_new_process_reads_no_key_for_it(make_memory, monkeypatch) -> None:
    from rememory.index import live

    cfg = RankingConfig(ann_threshold=3)  # namespaces from 3 episodes keep a snapshot, on both backends
    writer = make_memory(ranking=cfg)
    writer.add_many(EXAMPLES)
    writer.recall("a walk over the bridge")  # syncs and writes the snapshot
    want = writer._index("default").coherence
    extended: list[int] = []
    extend = live._CoherenceTracker._extend
    monkeypatch.setattr(live._CoherenceTracker, "_extend",
                        lambda self, keys: (extended.append(len(keys)), extend(self, keys))[1])  # fmt: skip
    reader = make_memory(ranking=cfg)
    hits = reader.recall("a walk over the bridge", top_k=3)
    assert [h.id for h in hits] == [h.id for h in writer.recall("a walk over the bridge", top_k=3)]
    got = reader._indexes["default"]
    assert got.snapshot_size == len(EXAMPLES)  # it started from the snapshot
    assert extended == []  # the coherence came with it: no key was read to recompute it
    assert (got.coherence.adjacent, got.coherence.baseline, got.coherence.pairs) == pytest.approx(
        (want.adjacent, want.baseline, want.pairs), abs=1e-12)  # fmt: skip


# A short diary in two languages: unrelated events.
DIARY = [
    {"id": "en-salary", "keywords": "first salary, gifts", "text": "My first salary bought my parents a kettle."},
    {"id": "en-kayak", "keywords": "kayak, lake", "text": "We capsized the kayak in a cold lake."},
    {"id": "en-bread", "keywords": "sourdough, baking", "text": "After five flat loaves the sourdough finally rose."},
    {"id": "en-laptop", "keywords": "laptop, cafe, theft", "text": "Someone took my laptop from the table in a cafe."},
    {"id": "ru-watch", "keywords": "дедушка, часы, ремонт",
     "text": "Мама отдала мне дедушкины карманные часы, часовщик их почистил, и они снова тикают."},
    {"id": "ru-flood", "keywords": "соседи, потоп, кухня", "text": "Соседи сверху затопили нам кухню."},
    {"id": "ru-licence", "keywords": "права, экзамен", "text": "Со второй попытки сдал экзамен на права в ГИБДД."},
    {"id": "ru-berries", "keywords": "лес, черника", "text": "Собирали чернику в лесу под Тверью, набрали два ведра."},
]  # fmt: skip


def test_lexical_evidence_is_the_share_of_the_query_idf_found_in_the_namespace(make_memory) -> None:
    mem = make_memory()
    mem.add_many(DIARY)
    idx = mem._index("default")
    tokens = mem._keys("default").tokens
    assert idx.lexical(tokens("sourdough kayak laptop")).evidence == pytest.approx(1.0)
    assert idx.lexical(tokens("zzyzx qwxv")).evidence == 0.0
    some = idx.lexical(tokens("my grandfather's pocket watch")).evidence
    assert 0.0 < some < 0.5  # only "my" occurs in the namespace


MULTILINGUAL = REPO / "bench" / "data" / "multilingual"


def test_a_cross_language_query_is_ranked_by_meaning_not_an_incidental_word(make_memory) -> None:
    # Questions of the multilingual set whose memory is in the other language: under the fusion before
    # (no lexical evidence, no dense contrast, dense_own at 2) an episode sharing one incidental word with
    # the question won each; min-max made that word's BM25 score the best.
    queries = {q["id"]: q for q in json.loads((MULTILINGUAL / "queries.json").read_text("utf-8"))}
    before = make_memory(ranking=RankingConfig(dense_own=2.0, dense_contrast=0.0, bm25_evidence=0.0))
    before.add_many(json.loads((MULTILINGUAL / "episodes.json").read_text("utf-8")))
    mem = make_memory()  # the same store, the default ranking
    for qid in ("x-7", "x-9", "x-19"):
        query, want = queries[qid]["query"], queries[qid]["relevant"][0]
        hit = before.recall(query, top_k=1, explain=True)[0]
        assert hit.id != want and hit.explain["bm25_own"] > 0, (qid, hit.id)
        hits = mem.recall(query, top_k=3, explain=True)
        assert hits[0].id == want, (qid, [h.id for h in hits])
        assert all(sum(h.explain.values()) == pytest.approx(h.score, abs=1e-9) for h in hits)


def test_dense_contrast_neighbours_follow_add_and_forget(make_memory) -> None:
    whole = make_memory("whole")
    whole.add_many(DIARY + EXAMPLES)
    parts = make_memory("parts")
    parts.add_many(DIARY)
    parts.recall("kettle", top_k=1)  # builds the neighbour lists; the rest is appended incrementally
    parts.add_many(EXAMPLES)
    query = "a concert with piano music"

    def contrast(mem: Memory) -> dict[str, float]:
        f = mem.ranking_features(query)
        assert f is not None
        return dict(zip(f.ids, f.features.raw["dense_contrast"].tolist()))

    assert contrast(parts) == pytest.approx(contrast(whole), abs=1e-6)
    # A forgotten episode is nobody's neighbour any more: the lists are rebuilt without it.
    parts.forget("concert")
    fresh = make_memory("fresh")
    fresh.add_many([e for e in DIARY + EXAMPLES if e["id"] != "concert"])
    assert contrast(parts) == pytest.approx(contrast(fresh), abs=1e-6)


def test_dense_contrast_is_left_out_past_its_size_limit(make_memory) -> None:
    mem = make_memory(ranking=RankingConfig(contrast_max=4))
    mem.add_many(DIARY)
    hit = mem.recall("kayak on a lake", top_k=1, explain=True)[0]
    assert hit.id == "en-kayak" and "dense_contrast" not in hit.explain
    assert sum(hit.explain.values()) == pytest.approx(hit.score, abs=1e-9)


def test_centred_keys_find_a_memory_in_the_other_language(make_memory) -> None:
    # e5 puts every key of one language a little closer to a question in that language: under the plain cosine
    # an unrelated Russian memory outranks the English one a Russian question is about, and the reverse (x-*);
    # en-7 loses to the direction every key shares. Compared after subtracting the namespace's mean key,
    # the matches come first.
    queries = {q["id"]: q for q in json.loads((MULTILINGUAL / "queries.json").read_text("utf-8"))}
    plain = make_memory(ranking=RankingConfig(key_centre=0.0, ctx_centre=0.0))
    plain.add_many(json.loads((MULTILINGUAL / "episodes.json").read_text("utf-8")))
    mem = make_memory()  # the same store, the default ranking
    for qid in ("x-2", "x-8", "x-17", "en-7"):
        query, want = queries[qid]["query"], queries[qid]["relevant"][0]
        assert plain.recall(query, top_k=1)[0].id != want, qid
        hits = mem.recall(query, top_k=3, explain=True)
        assert hits[0].id == want, (qid, [h.id for h in hits])
        assert all(sum(h.explain.values()) == pytest.approx(h.score, abs=1e-9) for h in hits)
