"""Hashes of id values, shared by training (:mod:`mtl_train.data.encode`, the shard order of
:mod:`mtl_train.data.sources`) and serving (:mod:`mtl_train.serving.rows`): numpy and pyarrow
only, so that scoring an export never imports torch."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

NULL_ID = 0
"""Reserved id of a missing value in every categorical column."""
OOV_ID = 1
"""Reserved id of a value never seen in the training split."""
NUM_RESERVED_IDS = 2


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al., OOPSLA 2014) of uint64 values, wrapping arithmetic:
    uint64 [N] -> uint64 [N]."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_POWERS = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> np.ndarray:
    """1099511628211^k mod 2^64 for k < n (grown and kept between calls)."""
    global _POWERS
    if len(_POWERS) < n:
        p = np.ones(max(n, 2 * len(_POWERS)), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k in range(1, len(p)):  # over string lengths, not rows
                p[k] = p[k - 1] * np.uint64(1099511628211)
        _POWERS = p
    return _POWERS[:n]


def bytes_hash(column: pa.Array) -> np.ndarray:
    """Polynomial hash of each string's UTF-8 bytes, sum_i (b_i + 1) * 1099511628211^(len-1-i)
    mod 2^64, uint64 [N]; nulls and empty strings hash to 0."""
    if pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
        column, off_t = column.cast(pa.large_binary()), np.int64
    else:
        column, off_t = column.cast(pa.binary()), np.int32
    column = column.fill_null(b"")
    bufs = column.buffers()
    n = len(column)
    offsets = np.frombuffer(bufs[1], dtype=off_t, count=n + 1,
                            offset=column.offset * np.dtype(off_t).itemsize).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(n, dtype=np.uint64)
    start = offsets[0]
    b = data[start:start + total].astype(np.uint64) + np.uint64(1)
    row = np.repeat(np.arange(n), lengths)
    pos_from_end = (offsets[1:][row] - start) - np.arange(total) - 1
    with np.errstate(over="ignore"):
        terms = b * _powers(int(lengths.max()))[pos_from_end]
    h = np.zeros(n, dtype=np.uint64)
    nonempty = lengths > 0
    h[nonempty] = np.add.reduceat(terms, (offsets[:-1] - start)[nonempty])
    return h


def hashed_ids(column: pa.Array, buckets: int, salt: int) -> np.ndarray | None:
    """Ids of a hashed id column: ``NUM_RESERVED_IDS`` + splitmix64(h(value) XOR salt) mod
    ``buckets``, ``NULL_ID`` for nulls, int64 [N]; a dictionary column hashes its values. h is
    the value's 64 bits for integers and booleans (uint64 as they are, the others as int64) and
    :func:`bytes_hash` for strings and binary. None when the (decoded) type is none of these:
    the caller names the column in its own error."""
    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    null = column.is_null().to_numpy(zero_copy_only=False)
    if t == pa.uint64():  # its values >= 2^63 do not fit int64; below, the same bits as int64
        x = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        x = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        x = bytes_hash(column)
    else:
        return None
    h = splitmix64(x ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    ids = (h % np.uint64(buckets)).astype(np.int64) + NUM_RESERVED_IDS
    ids[null] = NULL_ID
    return ids
