"""Range coding of episodes under a frozen :class:`~rememory.trace.model.IntGru`, many episodes at once.

The coder is constriction's range coder (24-bit precision) with its lazy ``Categorical`` model
(``perfect=False``). That model maps a table ``p`` to the fixed-point CDF
``floor(cumsum(p)[s] * (2**24 - n) / sum(p)) + s``. The model's frequencies sum to exactly
``2**24 - 257``, so the scale is exactly 1.0, every value is an integer below 2**24 (exact in
float32 and float64) and the coder's quantisation is the identity plus one: no float rounding
is left anywhere between the integer model and the bits.

Decoding advances every episode of a batch by one byte per step: a vectorised model step shared
by all episodes, then one coder call per episode. Encoding knows the bytes in advance, so it runs
only the recurrence step by step and codes each episode in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IntegrityError
from .model import BOS, EOS, IntGru

# A byte costs at most 24 bits under the coder (its smallest probability is 2**-24): a stream
# longer than this for its recorded length is damaged, and is refused before decoding.
MAX_BITS_PER_SYMBOL = 24
MAX_TRACE_BYTES = 1 << 20  # the longest text decoded when the store did not record a length (1 MiB)


def _family() -> Any:
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


def words_to_stream(words: np.ndarray) -> np.ndarray:
    """The coder's 32-bit words as big-endian bytes, less the trailing zero bytes of the last word.

    The range coder seals its stream at a point with many trailing zero bits; dropping up to three
    zero bytes saves about 1.5 bytes per episode and :func:`stream_to_words` puts them back.
    """
    raw = words.astype(">u4").tobytes()
    cut = len(raw)
    while cut > len(raw) - 3 and cut > 0 and raw[cut - 1] == 0:
        cut -= 1
    return np.frombuffer(raw[:cut], dtype=np.uint8).copy()


def stream_to_words(stream: np.ndarray) -> np.ndarray:
    raw = stream.tobytes()
    raw += b"\0" * (-len(raw) % 4)
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def max_stream_bytes(n_bytes: int) -> int:
    """The longest valid stream for a text of ``n_bytes`` (its bytes and EOS at 24 bits each, one word of slack)."""
    return ((n_bytes + 1) * MAX_BITS_PER_SYMBOL + 7) // 8 + 8


def encode_texts(model: IntGru, texts: Sequence[bytes], *, reference: bool = False) -> list[np.ndarray]:
    """One stream (uint8) per text; ``reference`` steps the model in int64 only (slow, for tests).

    Encoding knows every byte in advance, so only the recurrence runs step by step: the output
    layer and the frequencies of all an episode's positions are computed at once, and the coder
    takes the episode in one call. Each trace is then decoded back under the same frequencies,
    which checks the coder round trip for the price of one more call.
    """
    n = len(texts)
    order = sorted(range(n), key=lambda i: len(texts[i]), reverse=True)
    lens = np.array([len(texts[i]) for i in order], dtype=np.int64)
    # Row r holds episode order[r]: its bytes, then EOS, then padding.
    width = int(lens.max(initial=0)) + 1
    sym = np.full((n, width), EOS, dtype=np.int64)
    for r, i in enumerate(order):
        sym[r, : len(texts[i])] = np.frombuffer(texts[i], dtype=np.uint8)
    if reference:
        freqs = _reference_freqs(model, sym, lens)
    else:
        # Step s keeps the states of its active episodes (a prefix: longest first) at rows
        # start[s] .. start[s] + active[s] of one buffer; episode r's states are start[:len+1] + r.
        active = np.array([np.searchsorted(-lens, -s, side="right") for s in range(width)], dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(active)[:-1]]).astype(np.int64)
        states = np.empty((int(active.sum()), model.h), dtype=np.float64)
        h = model.initial(n).astype(np.float64)
        x = np.full(n, BOS, dtype=np.int64)
        for s in range(width):
            a = int(active[s])  # episodes with len >= s code symbol s
            h = model.advance(h[:a], x[:a])
            states[start[s] : start[s] + a] = h
            x = sym[:a, s]
        freqs = [model.freqs(states[start[: lens[r] + 1] + r]) for r in range(n)]
    out: list[np.ndarray] = [np.empty(0, dtype=np.uint8)] * n
    for r, i in enumerate(order):
        out[i] = _code_one(sym[r, : lens[r] + 1], freqs[r], i)
    return out


def _reference_freqs(model: IntGru, sym: np.ndarray, lens: np.ndarray) -> list[np.ndarray]:
    n, width = sym.shape
    rows: list[list[np.ndarray]] = [[] for _ in range(n)]
    h = model.initial(n)
    x = np.full(n, BOS, dtype=np.int64)
    for s in range(width):
        active = int(np.searchsorted(-lens, -s, side="right"))
        h, f = model.step_reference(h[:active], x[:active])
        for r in range(active):
            rows[r].append(f[r])
        x = sym[:active, s]
    return [np.array(r, dtype=np.float64) for r in rows]


def _code_one(symbols: np.ndarray, freqs: np.ndarray, index: int) -> np.ndarray:
    import constriction

    fam = _family()
    target = symbols.astype(np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(target, fam, freqs)
    stream = words_to_stream(enc.get_compressed())
    back = constriction.stream.queue.RangeDecoder(stream_to_words(stream)).decode(fam, freqs)
    if not np.array_equal(back, target):
        raise IntegrityError(f"episode #{index} did not decode back from its trace; report this bug")
    return stream


@dataclass
class _Job:
    index: int  # position in the caller's list
    stream: np.ndarray
    limit: int  # the recorded length, or MAX_TRACE_BYTES
    exact: bool  # whether the length was recorded (then EOS must come exactly there)


def decode_streams(
    model: IntGru, streams: Sequence[np.ndarray], n_bytes: Sequence[int | None], *, reference: bool = False
) -> list[bytes | Exception]:
    """Decode many streams together; a damaged one yields an :class:`IntegrityError` in its place."""
    import constriction

    fam = _family()
    results: list[bytes | Exception] = [IntegrityError("not decoded")] * len(streams)
    jobs: list[_Job] = []
    for i, (st, nb) in enumerate(zip(streams, n_bytes)):
        if st.dtype != np.uint8 or st.ndim != 1 or st.size == 0:
            results[i] = IntegrityError(f"the trace stream is {st.dtype}{list(st.shape)}, not a non-empty uint8 vector")
        elif nb is not None and st.size > max_stream_bytes(nb):
            results[i] = IntegrityError(f"the trace has {st.size} bytes, too many for a {nb}-byte text")
        else:
            jobs.append(_Job(i, st, MAX_TRACE_BYTES if nb is None else nb, nb is not None))
    if not jobs:
        return results
    decoders = [constriction.stream.queue.RangeDecoder(stream_to_words(j.stream)) for j in jobs]
    outs = [bytearray() for _ in jobs]
    live = list(range(len(jobs)))  # indexes into jobs of the episodes still decoding
    step = model.step_reference if reference else model.step
    h = model.initial(len(jobs))
    x = np.full(len(jobs), BOS, dtype=np.int64)
    while live:
        h, f = step(h, x)
        ff = np.asarray(f, dtype=np.float64)
        x = np.empty(len(live), dtype=np.int64)
        keep = np.ones(len(live), dtype=bool)
        for r, j in enumerate(live):
            try:
                s = int(decoders[j].decode(fam, ff[r : r + 1])[0])
            except Exception as exc:  # constriction's own error for a malformed stream, reported per episode
                results[jobs[j].index] = IntegrityError(f"the trace stream is unreadable ({exc})")
                keep[r] = False
                continue
            x[r] = s
            job = jobs[j]
            if s == EOS:
                keep[r] = False
                results[job.index] = _finish(job, outs[j], decoders[j])
            elif len(outs[j]) >= job.limit:
                keep[r] = False
                results[job.index] = IntegrityError(
                    f"the trace decodes past the {job.limit} bytes the store recorded"
                    if job.exact
                    else f"the trace decodes past {MAX_TRACE_BYTES} bytes without its end"
                )
            else:
                outs[j].append(s)
        if not keep.all():
            live = [j for j, k in zip(live, keep) if k]
            h, x = h[keep], x[keep]
    return results


def _finish(job: _Job, out: bytearray, decoder: Any) -> bytes | Exception:
    if job.exact and len(out) != job.limit:
        return IntegrityError(f"the trace ends after {len(out)} bytes, the store recorded {job.limit}")
    if not decoder.maybe_exhausted():
        return IntegrityError("the trace has data after its end")
    return bytes(out)
