import numpy as np
import pytest

from rememory.cells.codec import DIGEST_SIZE, digest, from_alphabet, to_alphabet

CASES = [
    b"",
    b"a",
    b"ab",
    b"abc",
    b"abcd",  # len % 3 == 1
    b"abcde",  # len % 3 == 2: the prototype dropped this text's last byte
    b"abcdef",
    "Привет, мир".encode(),
    "Мы гуляли по мосту 🌉 ночью".encode(),
    "🎉🎂🐕".encode(),
    "mixed: English, русский, 日本語, العربية, emoji 👍".encode(),
    bytes(range(256)),
]


@pytest.mark.parametrize("data", CASES, ids=lambda d: f"{len(d)}B")
def test_alphabet_round_trip(data: bytes) -> None:
    alphabet, idx = to_alphabet(data)
    assert list(alphabet) == sorted(set(data))
    assert len(idx) == len(data)
    assert from_alphabet(alphabet, idx) == data


@pytest.mark.parametrize("n", range(0, 12))
def test_every_length_mod_3(n: int) -> None:
    data = bytes((7 * i + 3) % 256 for i in range(n))
    assert from_alphabet(*to_alphabet(data)) == data


def test_random_bytes_round_trip() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 100, 1001):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert from_alphabet(*to_alphabet(data)) == data


def test_digest_detects_one_byte_change() -> None:
    a = "Мы гуляли".encode()
    b = bytearray(a)
    b[-1] ^= 1
    assert len(digest(a)) == DIGEST_SIZE
    assert digest(a) != digest(bytes(b))
    assert digest(a) == digest(bytes(a))
