"""The trace engine: exact round trips, bit-identical integer inference, the stored fixture, damage, versions.

The stored fixture (tests/data/trace-fixture/) was encoded once and committed; it must decode
byte-exactly on every machine and every later version. Regenerate it only for a new format:
``PYTHONPATH=src python tests/test_trace.py --write-fixture``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal, getcontext
from pathlib import Path

import numpy as np
import pytest

from rememory.engine import Artifact, DecodeItem, EncodeProgress, InMemoryModels, SharedModel
from rememory.errors import ConfigError, IntegrityError
from rememory.trace import TraceConfig, TraceEngine
from rememory.trace.coder import decode_streams, encode_texts
from rememory.trace.engine import BASE_MODEL
from rememory.trace.model import EXP_ONE, EXP_SPAN, PRE_CLIP, Q_ACT, Q_LOGIT, Q_PRE, IntGru, ModelShape, tables

FIXTURE = Path(__file__).parent / "data" / "trace-fixture"
TINY = TraceConfig(hidden=12, embed=6, epochs=2, batch_tokens=2048, max_seconds=0)

TRAIN = [
    b"Ilya: We fixed the van's window with a bicycle brake cable this morning.",
    b"Vera: That sounds great! Did the old regulator come out easily?",
    b"Ilya: Mostly, after an hour with the door panel and two lost screws.",
    b"Vera: I'm painting again, the river at sunrise.",
] * 3

TEXTS = [
    b"",
    b"x",
    b"ok",
    b"hey",
    "é ж € 𝄞: one of each UTF-8 width".encode(),
    "Мы гуляли с Ильёй по мосту, когда зажглись огни города.".encode(),
    "Surprise party for Dima 🎉: 14 guests and one confused dog 🐕 (и кот).".encode(),
    bytes(range(256)),  # bytes the model never saw, every value once
    bytes(range(255, -1, -1)) * 2,
    b"Ilya: We fixed the van's window with a bicycle brake cable this morning.",
]


@pytest.fixture(scope="module")
def trained() -> TraceEngine:
    eng = TraceEngine(InMemoryModels(), TINY)
    eng.fit(TRAIN)
    return eng


def _items(arts: list[Artifact], texts: list[bytes]) -> list[DecodeItem]:
    return [DecodeItem(a, f"key {i}", len(t)) for i, (a, t) in enumerate(zip(arts, texts))]


def test_round_trips_are_exact(trained: TraceEngine) -> None:
    arts = trained.encode([f"key {i}" for i in range(len(TEXTS))], TEXTS)
    assert trained.decode_batch(_items(arts, TEXTS)) == TEXTS
    for i, (art, text) in enumerate(zip(arts, TEXTS)):
        assert art.engine == "byte-trace/1" and art.config == {"v": 1}
        assert set(art.streams) == {"uint8"}
        assert trained.decode(art, f"key {i}", n_bytes=len(text)) == text
        assert trained.decode(art, f"key {i}") == text  # self-delimiting: no recorded length needed


def test_the_longest_episode_round_trips(trained: TraceEngine) -> None:
    from rememory.limits import DEFAULT_MAX_TEXT_BYTES

    rng = np.random.default_rng(7)
    text = b" ".join(TRAIN[i] for i in rng.integers(0, len(TRAIN), 400))[:DEFAULT_MAX_TEXT_BYTES]
    assert len(text) == DEFAULT_MAX_TEXT_BYTES
    [art] = trained.encode(["long"], [text])
    assert trained.decode(art, "long", n_bytes=len(text)) == text


def test_batches_of_different_lengths_decode_like_single_episodes(trained: TraceEngine) -> None:
    eng = TraceEngine(trained.models, TraceConfig(hidden=12, embed=6, batch=3))
    arts = eng.encode(["k"] * len(TEXTS), TEXTS)
    assert [a.streams["uint8"].tobytes() for a in arts] == [
        trained.encode(["k"], [t])[0].streams["uint8"].tobytes() for t in TEXTS
    ]
    assert eng.decode_batch(_items(arts, TEXTS)) == TEXTS


def test_fast_path_and_reference_path_give_identical_bits(trained: TraceEngine) -> None:
    model = trained.load(trained.current())
    assert model._float_ok  # the float64 fast path runs, not its int64 fallback
    fast = encode_texts(model, TEXTS)
    ref = encode_texts(model, TEXTS, reference=True)
    assert [s.tobytes() for s in fast] == [s.tobytes() for s in ref]
    assert decode_streams(model, fast, [None] * len(TEXTS), reference=True) == TEXTS
    # Step by step, with states far from zero: the float64 BLAS product equals the int64 one.
    h = model.initial(len(TEXTS))
    x = np.full(len(TEXTS), 256)
    for s in range(40):
        h1, f1 = model.step(h, x)
        h2, f2 = model.step_reference(h, x)
        assert np.array_equal(h1, h2) and np.array_equal(f1, f2)
        assert (f1.sum(axis=1) == (1 << 24) - 257).all() and (f1 >= 0).all()
        h, x = h1, (x * 31 + s) % 257


@pytest.mark.parametrize("levels", [31, 127])  # float32 products (sums below 2**24), then float64 ones
def test_fast_step_equals_reference_step_on_random_weights(levels: int) -> None:
    rng = np.random.default_rng(levels)
    shape = ModelShape(hidden=40, embed=5)
    tensors = {}
    for name, (shp, dt) in shape.tensor_shapes().items():
        if dt == "int8":  # mostly at the extremes: the largest sums these levels allow
            w = np.where(
                rng.random(shp) < 0.8, levels * rng.choice([-1, 1], size=shp), rng.integers(-levels, levels + 1, shp)
            )
            tensors[name] = w.astype(np.int8)
        elif name.startswith("m_"):
            tensors[name] = rng.integers(1 << 10, 1 << 17, size=shp).astype(np.int32)
        else:
            tensors[name] = rng.integers(-3000, 3000, size=shp).astype(np.int32)
    model = IntGru(shape, tensors)
    assert model._float_ok and (model.w_out_mm.dtype == np.float32) == (levels == 31)
    h = rng.integers(-(1 << 12), (1 << 12) + 1, size=(33, 40))
    x = rng.integers(0, 257, size=33)
    for _ in range(6):
        h1, f1 = model.step(h, x)
        h2, f2 = model.step_reference(h, x)
        assert np.array_equal(h1, h2) and np.array_equal(f1, f2)
        h, x = h1, rng.integers(0, 257, size=33)


def test_fast_normalisation_equals_integer_division(trained: TraceEngine) -> None:
    model = trained.load(trained.current())
    rng = np.random.default_rng(3)
    acc = rng.integers(-(1 << 23), 1 << 23, size=(64, 257))
    acc[0] = 0  # every symbol tied
    acc[1, ::2] = 1 << 23  # many tied maxima
    acc[2] = rng.integers(-(1 << 23), -(1 << 22), size=257)
    acc[2, 100] = 1 << 23  # one symbol takes (almost) everything
    logits = ((acc * model.m_out + (1 << 23)) >> 24) + model.b_out
    assert np.array_equal(model._freqs_float(logits.astype(np.float64)), model._freqs(acc))


def test_lookup_tables_equal_exact_decimal_arithmetic() -> None:
    # The tables come from math.exp/tanh and a digest; this proves the digest's tables are the
    # correctly rounded values, so any platform that builds them passes the digest check.
    getcontext().prec = 40
    sig, tanh, exp = tables()
    one = Decimal(1)
    for v in range(-PRE_CLIP, PRE_CLIP + 1, 7):  # every 7th point: the full range, a fraction of the time
        x = Decimal(v) / (1 << Q_PRE)
        e = (-x).exp()
        assert sig[v + PRE_CLIP] == int(
            (Decimal(1 << Q_ACT) / (one + e) + Decimal("0.5")).to_integral_value("ROUND_FLOOR")
        )
        t = (one - (-2 * x).exp()) / (one + (-2 * x).exp())
        assert tanh[v + PRE_CLIP] == int((Decimal(1 << Q_ACT) * t + Decimal("0.5")).to_integral_value("ROUND_FLOOR"))
    for d in range(0, EXP_SPAN, 5):
        want = Decimal(EXP_ONE) * (-Decimal(d) / (1 << Q_LOGIT)).exp() + Decimal("0.5")
        assert exp[d] == int(want.to_integral_value("ROUND_FLOOR"))


# -- the stored fixture --------------------------------------------------------------------------


def _fixture_engine() -> tuple[TraceEngine, list[dict]]:
    meta = json.loads((FIXTURE / "fixture.json").read_text())
    repo = InMemoryModels()
    repo.put(
        "byte-trace/1",
        meta["model_config"],
        (FIXTURE / "model.safetensors").read_bytes(),
        trained_on=meta["trained_on"],
    )
    return TraceEngine(repo), meta["episodes"]


def test_stored_fixture_decodes_byte_exactly() -> None:
    eng, episodes = _fixture_engine()
    items = [
        DecodeItem(
            Artifact("byte-trace/1", {"v": 1}, {"uint8": np.frombuffer(bytes.fromhex(e["trace"]), np.uint8)}),
            e["key"],
            e["n_bytes"],
        )
        for e in episodes
    ]
    got = eng.decode_batch(items)
    for e, g in zip(episodes, got):
        assert isinstance(g, bytes), g
        assert g == bytes.fromhex(e["text"])
        assert hashlib.blake2b(g, digest_size=16).hexdigest() == e["blake2b"]
    # And the encoder still writes the same bits.
    traces = eng.encode([e["key"] for e in episodes], [bytes.fromhex(e["text"]) for e in episodes])
    assert [a.streams["uint8"].tobytes().hex() for a in traces] == [e["trace"] for e in episodes]


_DECODE_SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from test_trace import _fixture_engine
from rememory.engine import Artifact, DecodeItem
import numpy as np
eng, eps = _fixture_engine()
def art(e):
    return Artifact("byte-trace/1", {"v": 1}, {"uint8": np.frombuffer(bytes.fromhex(e["trace"]), np.uint8)})
out = eng.decode_batch([DecodeItem(art(e), e["key"], e["n_bytes"]) for e in eps])
print(json.dumps({"digest": hashlib.sha256(b"".join(out)).hexdigest(), "torch": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("threads", ["1", "4"])
def test_decoding_is_identical_with_one_or_many_threads(threads: str) -> None:
    _, episodes = _fixture_engine()
    want = hashlib.sha256(b"".join(bytes.fromhex(e["text"]) for e in episodes)).hexdigest()
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = threads
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run(
        [sys.executable, "-c", _DECODE_SCRIPT, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["digest"] == want
    assert res["torch"] is False  # decoding with a frozen model never loads torch


# -- damage ----------------------------------------------------------------------------------------


def test_damaged_traces_raise_integrity_error_and_spare_the_others(trained: TraceEngine) -> None:
    text = TEXTS[5]
    [art, other] = trained.encode(["a", "b"], [text, TEXTS[9]])
    stream = art.streams["uint8"]
    outcomes = set()
    for bit in range(0, stream.size * 8, max(1, stream.size * 8 // 120)):  # ~120 spread positions
        bad = stream.copy()
        bad[bit // 8] ^= 1 << (bit % 8)
        res = trained.decode_batch(
            [
                DecodeItem(Artifact(art.engine, art.config, {"uint8": bad}), "a", len(text)),
                DecodeItem(other, "b", len(TEXTS[9])),
            ]
        )
        assert res[1] == TEXTS[9]
        # A flipped bit is either caught here, or yields other bytes that the store's digest catches.
        assert isinstance(res[0], IntegrityError) or (isinstance(res[0], bytes) and len(res[0]) == len(text))
        outcomes.add(type(res[0]).__name__)
    assert "IntegrityError" in outcomes


@pytest.mark.parametrize(
    "change",
    [
        lambda a, n: (Artifact(a.engine, a.config, {"uint8": a.streams["uint8"][:1]}), n),  # truncated
        lambda a, n: (a, n + 1),  # the store recorded another length
        lambda a, n: (a, n - 1),
        lambda a, n: (a, 0),
        lambda a, n: (Artifact(a.engine, {"v": 9}, a.streams), n),  # a model version the namespace lacks
        lambda a, n: (Artifact(a.engine, {}, a.streams), n),
        lambda a, n: (Artifact(a.engine, {"v": "1"}, a.streams), n),
        lambda a, n: (Artifact(a.engine, a.config, {"int8": a.streams["uint8"].view(np.int8)}), n),
        lambda a, n: (Artifact(a.engine, a.config, {"uint8": np.zeros(0, np.uint8)}), n),
        lambda a, n: (Artifact(a.engine, a.config, {"uint8": np.zeros(10_000, np.uint8)}), n),  # too long for n
        lambda a, n: (Artifact("mlp-cell/1", a.config, a.streams), n),
    ],
)
def test_malformed_artifacts_raise_integrity_error(trained: TraceEngine, change) -> None:  # type: ignore[no-untyped-def]
    text = TEXTS[6]
    [art] = trained.encode(["k"], [text])
    bad, n = change(art, len(text))
    with pytest.raises(IntegrityError):
        trained.decode(bad, "k", n_bytes=n)


def test_a_damaged_model_byte_is_an_integrity_error() -> None:
    repo = InMemoryModels()
    eng = TraceEngine(repo, TINY)
    good = eng.fit(TRAIN)
    [art] = eng.encode(["k"], [TRAIN[0]])
    data = bytearray(good.data)
    data[len(data) // 2] ^= 0x10
    damaged = InMemoryModels()
    damaged.put(good.engine, good.config, bytes(data), good.trained_on)
    with pytest.raises(IntegrityError, match="digest"):
        TraceEngine(damaged).decode(art, "k", n_bytes=len(TRAIN[0]))


# -- versions --------------------------------------------------------------------------------------


def test_fit_makes_a_new_version_and_old_traces_still_decode() -> None:
    repo = InMemoryModels()
    eng = TraceEngine(repo, TINY)
    v1 = eng.fit(TRAIN[:4])
    old = eng.encode(["k"] * len(TEXTS), TEXTS)
    events: list[EncodeProgress] = []
    v2 = eng.fit(TRAIN + [t for t in TEXTS if t], progress=events.append)
    assert (v1.version, v2.version) == (1, 2)
    assert v2.trained_on == len(TRAIN) + len(TEXTS) - 1
    assert events and all(isinstance(e, EncodeProgress) and e.stage == "train-model" for e in events)
    new = eng.encode(["k"] * len(TEXTS), TEXTS)
    assert {a.config["v"] for a in old} == {1} and {a.config["v"] for a in new} == {2}
    # A fresh engine over the same repository decodes both generations side by side.
    assert TraceEngine(repo).decode_batch(_items(old + new, TEXTS + TEXTS)) == TEXTS + TEXTS


def test_a_new_namespace_starts_from_the_shipped_model() -> None:
    repo = InMemoryModels()
    eng = TraceEngine(repo)
    events: list[EncodeProgress] = []
    arts = eng.encode(["k"] * len(TEXTS), TEXTS, progress=events.append)
    model = repo.latest("byte-trace/1")
    assert isinstance(model, SharedModel)
    assert (model.version, model.trained_on, model.data) == (1, 0, b"")  # named, not copied into the store
    assert model.config["shipped"] == BASE_MODEL
    assert eng.decode_batch(_items(arts, TEXTS)) == TEXTS
    assert events[-1].done == len(TEXTS) and events[-1].bytes_done == sum(map(len, TEXTS))


def test_an_engine_without_a_repository_says_what_to_pass() -> None:
    with pytest.raises(ConfigError, match="InMemoryModels"):
        TraceEngine().encode(["k"], [b"text"])


def test_model_file_round_trips_and_refuses_wrong_shapes(trained: TraceEngine) -> None:
    model = trained.load(trained.current())
    data = model.to_bytes()
    back = IntGru.from_bytes(model.shape, data)
    assert all(np.array_equal(back.t[k], model.t[k]) for k in model.t)
    with pytest.raises(IntegrityError):
        IntGru.from_bytes(ModelShape(hidden=13, embed=6), data)
    with pytest.raises(IntegrityError):
        IntGru.from_bytes(model.shape, data[:-10])


def _write_fixture() -> None:  # pragma: no cover - run by hand for a new format
    texts = [
        b"",
        b"A",
        b"Ilya: We fixed the van's window with a bicycle brake cable this morning.",
        "Мы гуляли с Ильёй по мосту 🌉, когда зажглись огни.".encode(),
        bytes(range(0, 256, 3)),
        b"Vera: I'm painting again, the river at sunrise. " * 4,
    ]
    repo = InMemoryModels()
    eng = TraceEngine(repo, TINY)
    model = eng.fit(TRAIN)
    arts = eng.encode([f"fixture {i}" for i in range(len(texts))], texts)
    FIXTURE.mkdir(parents=True, exist_ok=True)
    (FIXTURE / "model.safetensors").write_bytes(model.data)
    meta = {
        "about": "byte-trace/1 traces encoded once with a tiny model; they must decode byte-exactly forever",
        "model_config": model.config,
        "trained_on": model.trained_on,
        "episodes": [
            {
                "key": f"fixture {i}",
                "n_bytes": len(t),
                "text": t.hex(),
                "blake2b": hashlib.blake2b(t, digest_size=16).hexdigest(),
                "trace": a.streams["uint8"].tobytes().hex(),
            }
            for i, (t, a) in enumerate(zip(texts, arts))
        ],
    }
    (FIXTURE / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__" and "--write-fixture" in sys.argv:  # pragma: no cover
    _write_fixture()
