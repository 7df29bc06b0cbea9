"""The frozen byte model of a trace engine: a GRU in integer arithmetic only.

Arithmetic coding decodes only if the decoder computes exactly the probabilities the encoder
used. A float GRU gives no such guarantee across CPUs, BLAS builds, thread counts or numpy
versions, so the frozen model is integer end to end:

- int8 weights, per-row integer multipliers (``(acc * m + 2**(S-1)) >> S``) instead of float scales,
  int32 biases;
- pre-activations in Q10, the hidden state and gates in Q12, logits in Q8;
- sigmoid, tanh and exp from lookup tables built once from a formula and checked against a digest;
- next-byte frequencies as integers summing to exactly :data:`FREQ_TOTAL`.

The fast path (:meth:`IntGru.step`) holds these whole numbers in float64 and runs the matrix
products through BLAS, because numpy's integer arithmetic is not vectorised. That is still exact:
every operand is an integer and every partial sum of ``|w| * |h|`` stays below 2**53 (below 2**24
for the float32 products used when the weights allow it; checked at load by
:func:`_check_exact_bound`), so any summation order, blocking, FMA or thread split gives the same
integer. :meth:`IntGru.step_reference` does the same step in int64 only; the tests check that
both paths give identical states and frequencies.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import IntegrityError

VOCAB_IN = 257  # bytes 0..255 and BOS (256), the input before an episode's first byte
VOCAB_OUT = 257  # bytes 0..255 and EOS (256): a trace is self-delimiting
BOS = 256
EOS = 256

Q_PRE = 10  # pre-activations: value * 2**10
Q_ACT = 12  # hidden state and gate outputs: value * 2**12
Q_LOGIT = 8  # logits: value * 2**8 (natural-log units)
SHIFT = 24  # requantisation multipliers: scale * 2**24
PRE_CLIP = 8 << Q_PRE  # |pre-activation| beyond 8 saturates sigmoid/tanh at Q12 anyway
EXP_SPAN = 24 << Q_LOGIT  # logits more than 24 nats below the best get frequency 0 (the coder adds 1)
EXP_ONE = 1 << 20  # exp table value at 0
# The coder's fixed-point precision is 24 bits and it adds 1 to every symbol's frequency (its
# "leakiness"); frequencies that sum to 2**24 - 257 make its quantisation exactly the identity.
CODER_PRECISION = 24
FREQ_TOTAL = (1 << CODER_PRECISION) - VOCAB_OUT

# Format version of the model file: a change to any constant above or to the step is a new version.
MODEL_FORMAT = 1

_TENSORS = ("emb", "w_ih", "m_ih", "b_ih", "w_hh", "m_hh", "b_hn", "w_out", "m_out", "b_out")


@lru_cache(maxsize=1)
def tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmoid, tanh, exp) lookup tables, built from their formula and checked against a digest.

    ``math.exp`` is correctly rounded on every platform we know of, and rounding to a Q12 integer
    hides any last-ulp difference unless a value lands within 1e-16 of a half; the digest turns
    such a platform into a clear error instead of silently different probabilities.
    """
    x = np.arange(-PRE_CLIP, PRE_CLIP + 1, dtype=np.int64)
    sig = np.array([_round_half_up((1 << Q_ACT) / (1.0 + math.exp(-v / (1 << Q_PRE)))) for v in x.tolist()])
    tanh = np.array([_round_half_up((1 << Q_ACT) * math.tanh(v / (1 << Q_PRE))) for v in x.tolist()])
    d = range(EXP_SPAN)
    exp = np.array([_round_half_up(EXP_ONE * math.exp(-v / (1 << Q_LOGIT))) for v in d])
    exp = np.append(exp, 0)  # index EXP_SPAN: everything further below the best
    out = (sig.astype(np.int64), tanh.astype(np.int64), exp.astype(np.int64))
    h = hashlib.blake2b(digest_size=16)
    for t in out:
        h.update(t.astype("<i8").tobytes())
    if h.hexdigest() != _TABLES_DIGEST:
        raise IntegrityError(
            "this platform's math library builds different trace-model lookup tables, so traces "
            "would not decode exactly here; report this platform to the rememory developers"
        )
    for t in out:
        t.setflags(write=False)
    return out


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


_TABLES_DIGEST = "940b72f37f5993804300b90450632f71"


@dataclass(frozen=True)
class ModelShape:
    """The shape of a trace model, stored in the shared model's config JSON."""

    hidden: int  # GRU state size
    embed: int  # input byte embedding size

    def to_config(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "hidden": self.hidden, "embed": self.embed}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        if cfg.get("format") != MODEL_FORMAT:
            raise IntegrityError(
                f"trace model format {cfg.get('format')!r} is not {MODEL_FORMAT}; upgrade rememory to read it"
            )
        vals = []
        for name in ("hidden", "embed"):
            v = cfg.get(name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
                raise IntegrityError(f"trace model config {name!r} is {v!r}, not a size in 1..4096")
            vals.append(v)
        return cls(*vals)

    def tensor_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        h, e = self.hidden, self.embed
        return {
            "emb": ((VOCAB_IN, e), "int8"),  # one scale for the table (folded into m_ih)
            "w_ih": ((3 * h, e), "int8"),
            "m_ih": ((3 * h,), "int32"),  # emb*w_ih accumulator -> Q10
            "b_ih": ((3 * h,), "int32"),  # Q10: b_ih, plus b_hh for the r and z gates
            "w_hh": ((3 * h, h), "int8"),
            "m_hh": ((3 * h,), "int32"),  # w_hh*h(Q12) accumulator -> Q10
            "b_hn": ((h,), "int32"),  # Q10: b_hh of the n gate (inside r * (...))
            "w_out": ((VOCAB_OUT, h), "int8"),
            "m_out": ((VOCAB_OUT,), "int32"),  # w_out*h(Q12) accumulator -> Q8
            "b_out": ((VOCAB_OUT,), "int32"),  # Q8
        }


class IntGru:
    """A frozen integer GRU byte model; :meth:`step` advances a batch of episodes by one byte."""

    def __init__(self, shape: ModelShape, tensors: dict[str, np.ndarray]):
        expected = shape.tensor_shapes()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise IntegrityError(f"trace model tensors: missing {missing}, unexpected {unexpected}")
        for name, (shp, dt) in expected.items():
            t = tensors[name]
            if t.shape != shp or t.dtype != np.dtype(dt):
                raise IntegrityError(
                    f"trace model tensor {name!r} is {t.dtype}{list(t.shape)}, expected {dt}{list(shp)}"
                )
        m = np.concatenate([tensors["m_ih"], tensors["m_hh"], tensors["m_out"]])
        if (m < 0).any() or (m >= 1 << 28).any():
            raise IntegrityError("trace model multipliers are out of range 0..2**28")
        self.shape = shape
        self.t = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        h = shape.hidden
        self.sig, self.tanh, self.exp = tables()
        self.exp_f = self.exp.astype(np.float64)
        # The input path depends on the previous byte only: one row per byte, built once, exactly.
        acc = self.t["emb"].astype(np.int64) @ self.t["w_ih"].astype(np.int64).T  # (VOCAB_IN, 3H)
        self.gx = _requant(acc, self.t["m_ih"].astype(np.int64)) + self.t["b_ih"].astype(np.int64)
        self.m_hh = self.t["m_hh"].astype(np.int64)
        self.b_hn = self.t["b_hn"].astype(np.int64)
        self.m_out = self.t["m_out"].astype(np.int64)
        self.b_out = self.t["b_out"].astype(np.int64)
        self.w_hh_i = self.t["w_hh"].astype(np.int64)
        self.w_out_i = self.t["w_out"].astype(np.int64)
        self.w_hh_f = self.t["w_hh"].astype(np.float64).T.copy()  # (H, 3H)
        self.w_out_f = self.t["w_out"].astype(np.float64).T.copy()  # (H, 257)
        self.h = h
        acc_hh = _check_exact_bound(self.t["w_hh"], 1 << Q_ACT)
        acc_out = _check_exact_bound(self.t["w_out"], 1 << Q_ACT)
        # The fast path keeps every value as a whole float64. It is exact while the largest
        # requantisation product stays below 2**53; a model beyond that takes the int64 path.
        half = 1 << (SHIFT - 1)
        self._float_ok = bool(
            (acc_hh * self.m_hh + half < 1 << 53).all() and (acc_out * self.m_out + half < 1 << 53).all()
        )
        self.gx_f = self.gx.astype(np.float64)
        # float32 products are exact too (and twice as fast) while every partial sum stays below
        # 2**24, the float32 integer range: true of 6-bit weights with up to 64 hidden units.
        self.w_hh_mm = self.w_hh_f.astype(np.float32) if (acc_hh < 1 << 24).all() else self.w_hh_f
        self.w_out_mm = self.w_out_f.astype(np.float32) if (acc_out < 1 << 24).all() else self.w_out_f
        self.m_hh_f, self.m_out_f = self.m_hh.astype(np.float64), self.m_out.astype(np.float64)
        self.b_hn_f, self.b_out_f = self.b_hn.astype(np.float64), self.b_out.astype(np.float64)
        self.sig_f, self.tanh_f = self.sig.astype(np.float64), self.tanh.astype(np.float64)

    # -- serialisation ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The weights as safetensors bytes, compact: every weight is a cost all episodes share.

        Each int8 tensor is range-coded under its own histogram (stored over the levels it uses),
        and each int32 tensor is written as zigzag varints (most multipliers and biases need 1-3 bytes).
        """
        from safetensors.numpy import save

        out: dict[str, np.ndarray] = {}
        for name in _TENSORS:
            t = self.t[name]
            if t.dtype == np.int8:
                out[name + ".hist"], out[name + ".code"] = _code_int8(t.reshape(-1))
            else:
                out[name + ".varint"] = _varint_encode(t.reshape(-1))
        return bytes(save(out))

    @classmethod
    def from_bytes(cls, shape: ModelShape, data: bytes) -> IntGru:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            raw = load(data)
        except (SafetensorError, ValueError) as exc:
            raise IntegrityError(
                f"the trace model's weights are unreadable ({exc}); restore the store from a backup"
            ) from None
        tensors: dict[str, np.ndarray] = {}
        for name, (shp, dt) in shape.tensor_shapes().items():
            n = int(np.prod(shp))
            if dt == "int8":
                hist, code = raw.pop(name + ".hist", None), raw.pop(name + ".code", None)
                if hist is None or code is None:
                    raise IntegrityError(f"the trace model has no coded tensor {name!r}; the store is damaged")
                tensors[name] = _decode_int8(hist, code, n).reshape(shp)
            else:
                packed = raw.pop(name + ".varint", None)
                if packed is None:
                    raise IntegrityError(f"the trace model has no tensor {name!r}; the store is damaged")
                tensors[name] = _varint_decode(packed, n).reshape(shp)
        tensors.update(raw)  # anything left over is reported as unexpected
        return cls(shape, tensors)

    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self.t.values())

    # -- inference -------------------------------------------------------------------------------

    def initial(self, batch: int) -> np.ndarray:
        """The hidden state before any byte: zeros, (batch, H) int64 in Q12."""
        return np.zeros((batch, self.h), dtype=np.int64)

    def step(self, h: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed byte ``x`` (batch,) to states ``h`` (batch, H): the new states and the next-symbol frequencies.

        States and frequencies (batch, 257) are whole numbers held in float64 (what BLAS and the
        coder take); every row of frequencies sums to :data:`FREQ_TOTAL`. They equal
        :meth:`step_reference`'s int64 values exactly: every intermediate is a whole number below
        2**53, so float64 products, sums and power-of-two scalings of them are exact, and a floor
        after an exact power-of-two scaling is the arithmetic right shift.
        """
        h2 = self.advance(h, x)
        return h2, self.freqs(h2)

    def advance(self, h: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The recurrence alone: the states after byte ``x`` (the fast half of :meth:`step`)."""
        if not self._float_ok:
            hi = np.asarray(h).astype(np.int64)
            return self._cell(hi, x, np.einsum("bk,jk->bj", hi, self.w_hh_i)).astype(np.float64)
        H = self.h
        hf = np.asarray(h, dtype=np.float64)
        acc = (hf.astype(self.w_hh_mm.dtype) @ self.w_hh_mm).astype(np.float64)
        gh = np.floor((acc * self.m_hh_f + _HALF) * _INV)  # (B, 3H) Q10
        gx = self.gx_f[x]  # (B, 3H) Q10
        pre = gx[:, : 2 * H] + gh[:, : 2 * H]
        rz = self.sig_f[_index(pre)]  # Q12
        r, z = rz[:, :H], rz[:, H:]
        pre_n = gx[:, 2 * H :] + np.floor((r * (gh[:, 2 * H :] + self.b_hn_f) + _HALF_ACT) * _INV_ACT)
        n = self.tanh_f[_index(pre_n)]  # Q12
        return np.floor((z * hf + (_ONE_ACT - z) * n + _HALF_ACT) * _INV_ACT)

    def freqs(self, h: np.ndarray) -> np.ndarray:
        """Next-symbol frequencies (rows, 257) of states ``h`` (rows, H): any rows, e.g. every step of an episode."""
        if not self._float_ok:
            hi = np.asarray(h).astype(np.int64)
            return self._freqs(np.einsum("bk,jk->bj", hi, self.w_out_i)).astype(np.float64)
        hf = np.asarray(h, dtype=np.float64)
        acc = (hf.astype(self.w_out_mm.dtype) @ self.w_out_mm).astype(np.float64)
        logits = np.floor((acc * self.m_out_f + _HALF) * _INV) + self.b_out_f  # (B, 257) Q8
        return self._freqs_float(logits)

    def step_reference(self, h: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` in int64 arithmetic only: slow, and the definition the fast path must match."""
        h = np.asarray(h).astype(np.int64)
        acc = np.einsum("bk,jk->bj", h, self.w_hh_i)
        h2 = self._cell(h, x, acc)
        return h2, self._freqs(np.einsum("bk,jk->bj", h2, self.w_out_i))

    def _cell(self, h: np.ndarray, x: np.ndarray, acc: np.ndarray) -> np.ndarray:
        H = self.h
        gx = self.gx[x]  # (B, 3H) Q10
        gh = _requant(acc, self.m_hh)  # (B, 3H) Q10
        pre_rz = gx[:, : 2 * H] + gh[:, : 2 * H]
        rz = self.sig[np.clip(pre_rz, -PRE_CLIP, PRE_CLIP) + PRE_CLIP]  # Q12
        r, z = rz[:, :H], rz[:, H:]
        ghn = gh[:, 2 * H :] + self.b_hn
        pre_n = gx[:, 2 * H :] + ((r * ghn + (1 << (Q_ACT - 1))) >> Q_ACT)
        n = self.tanh[np.clip(pre_n, -PRE_CLIP, PRE_CLIP) + PRE_CLIP]  # Q12
        return (z * h + ((1 << Q_ACT) - z) * n + (1 << (Q_ACT - 1))) >> Q_ACT

    def _freqs(self, logits_acc: np.ndarray) -> np.ndarray:
        logits = _requant(logits_acc, self.m_out) + self.b_out  # (B, 257) Q8
        best = logits.argmax(axis=1)
        top = logits[np.arange(len(logits)), best]
        e = self.exp[np.minimum(top[:, None] - logits, EXP_SPAN)]
        total = e.sum(axis=1, keepdims=True)
        f = (e * FREQ_TOTAL) // total
        # What the floors lost goes to the most likely symbol, so every row sums to FREQ_TOTAL exactly.
        f[np.arange(len(f)), best] += FREQ_TOTAL - f.sum(axis=1)
        return f

    def _freqs_float(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`_freqs` on whole-number float64 logits (Q8), the normalisation in float64.

        Exact: ``e <= 2**20``, ``e * FREQ_TOTAL < 2**44`` and row sums below 2**29 are whole
        numbers below 2**53, so products and sums are exact in any order. The quotient ``a / b``
        is correctly rounded, off by at most 2**-30 (half an ulp below 2**24), while a non-whole
        ``a / b`` is at least ``1 / b > 2**-29`` from any whole number: its floor is ``a // b``.
        """
        rows = np.arange(len(logits))
        best = logits.argmax(axis=1)
        d = logits[rows, best][:, None] - logits
        np.minimum(d, EXP_SPAN, out=d)
        e = self.exp_f[d.astype(np.intp)]
        total = e.sum(axis=1, keepdims=True)
        e *= float(FREQ_TOTAL)
        e /= total
        f = np.floor(e, out=e)
        f[rows, best] += FREQ_TOTAL - f.sum(axis=1)
        return f


def normalize_counts(counts: np.ndarray) -> np.ndarray:
    """Integer frequencies proportional to ``counts`` that sum to ``2**24 - len(counts)``.

    With that total the coder's own quantisation is exactly the identity (see :mod:`.coder`).
    """
    c = counts.astype(np.int64)
    total = int(c.sum())
    target = (1 << CODER_PRECISION) - len(c)
    if total <= 0:
        f = np.zeros(len(c), dtype=np.int64)
        f[0] = target
        return f
    f = (c * target) // total
    f[int(np.argmax(c))] += target - int(f.sum())
    return f


def _code_int8(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import constriction

    levels = int(np.abs(values.astype(np.int32)).max(initial=1)) or 1
    sym = values.astype(np.int32) + levels  # 2 * levels + 1 symbols
    counts = np.bincount(sym, minlength=2 * levels + 1)
    if counts.max(initial=0) > 0xFFFF:  # the histogram is stored as uint16
        counts = -((-counts * 0xFFFF) // counts.max())
    hist = counts.astype(np.uint16)
    freqs = normalize_counts(hist).astype(np.float64)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(sym, constriction.stream.model.Categorical(freqs, perfect=False))
    return hist, enc.get_compressed().astype("<u4").view(np.uint8).copy()


def _decode_int8(hist: np.ndarray, code: np.ndarray, n: int) -> np.ndarray:
    import constriction

    if (
        hist.dtype != np.uint16
        or hist.ndim != 1
        or not 3 <= hist.size <= 255
        or hist.size % 2 == 0
        or code.dtype != np.uint8
        or code.size % 4
    ):
        raise IntegrityError("a coded tensor of the trace model is malformed; the store is damaged")
    freqs = normalize_counts(hist).astype(np.float64)
    dec = constriction.stream.queue.RangeDecoder(code.view("<u4").astype(np.uint32))
    try:
        sym = dec.decode(constriction.stream.model.Categorical(freqs, perfect=False), n)
    except Exception as exc:  # constriction's own error for a malformed stream
        raise IntegrityError(f"a coded tensor of the trace model is unreadable ({exc})") from None
    return (np.asarray(sym, dtype=np.int32) - hist.size // 2).astype(np.int8)


def _varint_encode(values: np.ndarray) -> np.ndarray:
    out = bytearray()
    for v in values.astype(np.int64).tolist():
        z = (v << 1) ^ (v >> 63)  # zigzag: small magnitudes, small codes
        while z >= 0x80:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        out.append(z)
    return np.frombuffer(bytes(out), dtype=np.uint8).copy()


def _varint_decode(packed: np.ndarray, n: int) -> np.ndarray:
    if packed.dtype != np.uint8 or packed.ndim != 1:
        raise IntegrityError("a packed tensor of the trace model is malformed; the store is damaged")
    vals: list[int] = []
    z = shift = 0
    for b in packed.tolist():
        z |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            vals.append((z >> 1) ^ -(z & 1))
            z = shift = 0
        elif shift > 35:
            break
    if len(vals) != n or shift:
        raise IntegrityError("a packed tensor of the trace model has the wrong length; the store is damaged")
    if any(not -(1 << 31) <= v < 1 << 31 for v in vals):
        raise IntegrityError("a packed tensor of the trace model is out of range; the store is damaged")
    return np.array(vals, dtype=np.int32)


def _requant(acc: np.ndarray, m: np.ndarray) -> np.ndarray:
    return (acc * m + (1 << (SHIFT - 1))) >> SHIFT


def _check_exact_bound(w: np.ndarray, amax: int) -> np.ndarray:
    """The largest accumulator per output row, checked: sum_k |w_jk| * amax below 2**53.

    Below 2**53 every partial sum of a product is an exactly representable integer, so the BLAS
    result is exact in any order, blocking or thread split.
    """
    worst = np.abs(w.astype(np.int64)).sum(axis=1) * amax
    if (worst >= 1 << 53).any():
        raise IntegrityError("trace model weights are too large for exact products; the model is damaged")
    return worst


def _index(pre: np.ndarray) -> np.ndarray:
    """Lookup-table rows of whole-number Q10 pre-activations (saturated at +-8)."""
    np.maximum(pre, -PRE_CLIP, out=pre)  # the ufuncs directly: np.clip's wrapper costs more on small batches
    np.minimum(pre, PRE_CLIP, out=pre)
    pre += PRE_CLIP
    return pre.astype(np.intp)


_HALF = float(1 << (SHIFT - 1))
_INV = 1.0 / (1 << SHIFT)  # exact: a power of two
_ONE_ACT = float(1 << Q_ACT)
_HALF_ACT = float(1 << (Q_ACT - 1))
_INV_ACT = 1.0 / (1 << Q_ACT)


def model_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()
