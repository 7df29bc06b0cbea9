"""Weight shards: one safetensors file per committed batch, written atomically.

A shard holds one flat tensor per stream dtype; each episode owns a span of each stream.
Forgetting an episode zeroes its spans in a rewritten copy of the shard, so its weights
really leave the disk, not just the index.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from ..errors import IntegrityError

FORMAT = "rememory-shard/1"
Spans = dict[str, tuple[int, int]]  # stream -> (offset, length)


_SPAN = struct.Struct("<cII")  # dtype char, offset, length: 9 bytes a stream


def encode_spans(spans: Spans) -> bytes:
    """Compact binary form of a cell's spans (per-cell bookkeeping is a real cost for short texts)."""
    return b"".join(_SPAN.pack(np.dtype(name).char.encode(), o, n) for name, (o, n) in sorted(spans.items()))


_STREAM_DTYPES = {np.dtype(t).char.encode(): np.dtype(t).name for t in ("int8", "uint8", "float16", "float32", "int16",
                                                                   "uint16", "int32", "uint32")}


def decode_spans(blob: bytes) -> Spans:
    """Inverse of :func:`encode_spans`; damaged bytes raise ``ValueError`` naming the problem."""
    if len(blob) % _SPAN.size:
        raise ValueError(f"the spans blob has {len(blob)} bytes, not a multiple of {_SPAN.size}")
    out: Spans = {}
    for i in range(0, len(blob), _SPAN.size):
        code, off, length = _SPAN.unpack_from(blob, i)
        name = _STREAM_DTYPES.get(code)
        if name is None or name in out:
            raise ValueError(f"the spans blob names an unknown or repeated stream type {code!r}")
        out[name] = (off, length)
    return out


def pack(per_cell: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[Spans]]:
    """Concatenate the streams of many cells; return the shard tensors and each cell's spans."""
    parts: dict[str, list[np.ndarray]] = {}
    sizes: dict[str, int] = {}
    spans: list[Spans] = []
    for streams in per_cell:
        s: Spans = {}
        for name in sorted(streams):
            arr = np.ascontiguousarray(streams[name]).reshape(-1)
            if arr.dtype.name != name:
                raise ValueError(f"stream {name!r} holds dtype {arr.dtype.name}")
            off = sizes.get(name, 0)
            s[name] = (off, int(arr.size))
            parts.setdefault(name, []).append(arr)
            sizes[name] = off + int(arr.size)
        spans.append(s)
    tensors = {name: np.concatenate(arrs) for name, arrs in parts.items()}
    return tensors, spans


def write_atomic(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write a shard to a temporary file in the same directory, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not tensors:  # safetensors needs at least one tensor to carry the format tag usefully
        tensors = {"uint8": np.zeros(0, dtype=np.uint8)}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_spans(path: Path, cells: list[tuple[str, Spans]]) -> dict[str, dict[str, np.ndarray] | Exception]:
    """Read each cell's streams from one shard; a cell whose data cannot be read gets an exception."""
    out: dict[str, dict[str, np.ndarray] | Exception] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            names = set(f.keys())
            for cell_id, spans in cells:
                try:
                    streams = {}
                    for name, (off, length) in spans.items():
                        if name not in names:
                            raise IntegrityError(f"stream {name!r} is missing", ids=[cell_id])
                        arr = f.get_slice(name)[off : off + length]
                        if arr.size != length:
                            raise IntegrityError(f"stream {name!r} is truncated", ids=[cell_id])
                        streams[name] = arr
                    out[cell_id] = streams
                except (IntegrityError, SafetensorError, ValueError) as exc:
                    out[cell_id] = exc
    except (SafetensorError, OSError, ValueError) as exc:
        for cell_id, _ in cells:
            out[cell_id] = exc
    return out


def rewrite_keeping(path: Path, live: list[Spans]) -> None:
    """Rewrite a shard with every byte outside the ``live`` spans set to zero."""
    with safe_open(str(path), framework="numpy") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    for name, arr in tensors.items():
        keep = np.zeros(arr.size, dtype=bool)
        for spans in live:
            if name in spans:
                off, length = spans[name]
                keep[off : off + length] = True
        arr = arr.copy()
        arr[~keep] = 0
        tensors[name] = arr
    write_atomic(path, tensors)


def pack_streams(streams: dict[str, np.ndarray]) -> tuple[bytes, bytes]:
    """One artifact's streams as one blob, and spans of (byte offset, element count) per stream."""
    parts: list[bytes] = []
    spans: Spans = {}
    offset = 0
    for name in sorted(streams):
        arr = np.ascontiguousarray(streams[name]).reshape(-1)
        if arr.dtype.name != name:
            raise ValueError(f"stream {name!r} holds dtype {arr.dtype.name}")
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        spans[name] = (offset, int(arr.size))
        parts.append(data)
        offset += len(data)
    return b"".join(parts), encode_spans(spans)


def unpack_streams(weights: bytes, spans_blob: bytes) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, (offset, count) in decode_spans(spans_blob).items():
        dtype = np.dtype(name).newbyteorder("<")
        if offset + count * dtype.itemsize > len(weights):
            raise ValueError(f"stream {name!r} runs past the end of its weights")
        out[name] = np.frombuffer(weights, dtype=dtype, count=count, offset=offset).astype(name)
    return out
