"""The memory cell: exactness across lengths and scripts, determinism, and failure handling."""

import numpy as np
import pytest

from rememory.cells.engine import MlpCellEngine
from rememory.cells.features import position_features, seed_from_key
from rememory.cells.model import CellConfig, CellShape, QuantizedCell
from rememory.cells.train import TrainProgress, train_cells
from rememory.errors import CellTrainingError, ConfigError

TEXTS = [
    b"x",
    b"ok",
    b"hey",
    b"Call mom.",
    "Мы гуляли с Ильёй по мосту, когда зажглись огни города.".encode(),
    "Surprise party for Dima 🎉: 14 guests and one confused dog 🐕.".encode(),
    ("Caroline: I went to a LGBTQ support group yesterday and it was so powerful. " * 6).encode(),
    bytes(range(256)),  # every byte value: a 256-symbol alphabet
]


def test_cells_are_exact_across_lengths_and_scripts() -> None:
    keys = [f"key {i}" for i in range(len(TEXTS))]
    engine = MlpCellEngine()
    arts = engine.encode(keys, TEXTS)
    for key, text, art in zip(keys, TEXTS, arts):
        assert engine.decode(art, key) == text
        assert art.engine == "mlp-cell/1"
        assert set(art.streams) == {"int8", "float16", "uint8"}


def test_cell_is_compact() -> None:
    text = ("We walked with Ilya across the bridge when the city lights turned on. " * 3).encode()
    [art] = MlpCellEngine().encode(["k"], [text])
    # int8 weights at ~3 parameters per byte, plus alphabet and scales
    assert art.nbytes < 4 * len(text)


def test_cell_needs_its_own_key() -> None:
    text = b"The billing database ran out of disk at 02:14."
    engine = MlpCellEngine()
    [art] = engine.encode(["outage"], [text])
    assert engine.decode(art, "outage") == text
    assert engine.decode(art, "another key") != text


def test_features_are_a_fixed_function_of_the_seed() -> None:
    # Guards the stored format: if this changes, every existing cell stops decoding.
    x = position_features(seed_from_key("format check"), 37, 12, 1.6)
    assert x.shape == (37, 12) and x.dtype == np.float32
    assert np.array_equal(x, position_features(seed_from_key("format check"), 37, 12, 1.6))
    np.testing.assert_allclose(x[0, :4], [-0.4856183, -0.6281219, -0.3301646, -0.5976002], atol=1e-6)
    np.testing.assert_allclose(x[36, -3:], [-0.9078499, -0.7789623, -0.3159946], atol=1e-6)


def test_streams_round_trip() -> None:
    [cell] = train_cells([(seed_from_key("k"), b"hello world")])
    back = QuantizedCell.from_streams(cell.shape, cell.to_streams())
    assert back.decode(seed_from_key("k"), CellConfig().freq_std) == b"hello world"
    with pytest.raises(ValueError, match="do not match"):
        QuantizedCell.from_streams(CellShape(11, cell.shape.a, cell.shape.r, cell.shape.h + 1), cell.to_streams())


def test_progress_events() -> None:
    events: list[TrainProgress] = []
    train_cells([(seed_from_key(str(i)), f"text number {i}".encode()) for i in range(5)], progress=events.append)
    assert events[0].cells_done == 0 and events[-1].cells_done == 5
    assert events[-1].bytes_done == events[-1].bytes_total == sum(len(f"text number {i}") for i in range(5))


def test_unreachable_budget_is_a_clear_error() -> None:
    cfg = CellConfig(max_steps=1, attempts=1)
    with pytest.raises(CellTrainingError, match="did not reach exactness"):
        train_cells([(seed_from_key("k"), b"a text that cannot be learnt in one step")], cfg)


def test_retry_with_more_capacity_recovers() -> None:
    # Too small on the first attempt; the growth step must rescue it.
    cfg = CellConfig(params_per_byte=0.3, growth=4.0, attempts=3)
    text = b"A short memory that needs more capacity than the first attempt had."
    [cell] = train_cells([(seed_from_key("k"), text)], cfg)
    assert cell.decode(seed_from_key("k"), cfg.freq_std) == text
    assert cell.shape.n_params > 0.3 * len(text)


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="params_per_bytes"):
        CellConfig.from_dict({"params_per_bytes": 3})
    assert CellConfig.from_dict({"lr": 0.01}).lr == 0.01


def _threads_seen_by_a_new_thread() -> int:
    """torch's thread count as a thread started now sees it (new threads inherit the process-wide setting)."""
    import threading

    import torch

    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


@pytest.mark.model
def test_training_beside_recalls_leaves_torch_thread_count_alone(make_memory) -> None:
    # A server trains on one thread while every request runs on a fresh worker thread. Saving and
    # restoring the count per call let a recall that began during training restore "1" last.
    import threading

    import torch

    before_main, before_new = torch.get_num_threads(), _threads_seen_by_a_new_thread()
    mem = make_memory()
    mem.add("seed", "Something to recall while the trainer runs.", id="seed")
    texts = [f"Episode {i}: a walk across bridge number {i} at dusk, with notes." for i in range(48)]
    training_done = threading.Event()
    failures: list[BaseException] = []

    def train() -> None:
        try:
            mem.add_many([{"keywords": f"walk {i}", "text": t} for i, t in enumerate(texts)])
        except BaseException as exc:  # re-raised in the test thread below
            failures.append(exc)
        finally:
            training_done.set()

    def one_recall() -> None:
        try:
            mem.recall("a walk at dusk", top_k=1)
        except BaseException as exc:
            failures.append(exc)

    trainer = threading.Thread(target=train)
    trainer.start()
    after_training = 0
    while after_training < 5:  # keep recalling a little past the end of training
        recalls = [threading.Thread(target=one_recall) for _ in range(2)]
        for r in recalls:
            r.start()
        for r in recalls:
            r.join()
        after_training += training_done.is_set()
    trainer.join()
    assert not failures, failures
    assert torch.get_num_threads() == before_main
    assert _threads_seen_by_a_new_thread() == before_new
