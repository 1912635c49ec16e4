"""Column encoders fitted on the training split: vocabularies for ids, statistics for numbers.

All work is columnar (pyarrow compute / numpy); no Python loop runs over rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_train.data.schema import NULL_ID, NUM_RESERVED_IDS, OOV_ID
from mtl_train.errors import DataError


@dataclass
class Vocabulary:
    """Value -> id map of one categorical column, built on the training split.

    Ids 0 (null) and 1 (out of vocabulary) are reserved; known values get ids 2.. in order
    of decreasing training frequency (ties by value), so the layout is deterministic.

    Attributes:
        values: pyarrow array of the known values, position i has id i + 2.
    """

    values: pa.Array

    @classmethod
    def fit(cls, column: pa.ChunkedArray | pa.Array, min_count: int = 1) -> "Vocabulary":
        """Count the non-null values of ``column``; keep those seen at least ``min_count`` times."""
        counts = pc.value_counts(column.drop_null() if hasattr(column, "drop_null") else column)
        if isinstance(counts, pa.ChunkedArray):
            counts = counts.combine_chunks()
        values = counts.field("values")
        freq = counts.field("counts")
        keep = pc.greater_equal(freq, min_count)
        values, freq = values.filter(keep), freq.filter(keep)
        order = pc.sort_indices(pa.table({"f": freq, "v": values}), sort_keys=[("f", "descending"), ("v", "ascending")])
        return cls(values.take(order))

    @property
    def size(self) -> int:
        """Embedding rows needed: known values plus the reserved ids."""
        return len(self.values) + NUM_RESERVED_IDS

    def encode(self, column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int, int]:
        """Map a column to int64 ids.

        Returns:
            (ids int64 [N], null count, out-of-vocabulary count). Nulls get id 0 and unseen
            values id 1. Integer values never pass through floats: positions come from
            ``pyarrow.compute.index_in`` as int32, misses filled with -1 before leaving Arrow
            (or, for integer columns, from a sorted-value ``numpy.searchsorted``).
        """
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if column.type != self.values.type:
            try:
                column = column.cast(self.values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(f"cannot map values of type {column.type} to a vocabulary of {self.values.type}: "
                                f"{str(e).splitlines()[0]}") from None
        null = column.is_null().to_numpy(zero_copy_only=False)
        if pa.types.is_integer(self.values.type):
            pos = self._int_positions(column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
        else:
            found = pc.fill_null(pc.index_in(column, value_set=self.values), -1)
            pos = found.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        out = pos + NUM_RESERVED_IDS
        miss = pos < 0
        out[miss] = OOV_ID
        out[null] = NULL_ID
        return out, int(null.sum()), int((miss & ~null).sum())

    def _int_positions(self, x: np.ndarray) -> np.ndarray:
        """Vocabulary positions of int64 values (-1 where unknown).

        When the known values span a range of at most max(2**22, 8 * vocabulary size), a
        lookup table over that range maps a value with one gather (x - min, wrapped to uint64,
        so that any value outside the range, overflow included, misses); otherwise a binary
        search over the sorted values. Both are built once per vocabulary and not pickled.
        """
        if not hasattr(self, "_index"):
            self._index = self._build_index()
        kind, a, b = self._index
        if kind == "empty":
            return np.full(len(x), -1, dtype=np.int64)
        if kind == "lut":
            off = (x - a).view(np.uint64)  # a = min value; wraps for x < a
            inside = off < np.uint64(len(b))
            pos = np.full(len(x), -1, dtype=np.int64)
            pos[inside] = b[off[inside]]
            return pos
        i = np.searchsorted(a, x)
        i[i == len(a)] = 0
        hit = a[i] == x
        return np.where(hit, b[i], -1)

    def _build_index(self) -> tuple:
        vals = self.values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if len(vals) == 0:
            return ("empty", None, None)
        lo, hi = int(vals.min()), int(vals.max())
        if hi - lo < max(1 << 22, 8 * len(vals)):
            lut = np.full(hi - lo + 1, -1, dtype=np.int32)
            lut[vals - lo] = np.arange(len(vals), dtype=np.int32)
            return ("lut", np.int64(lo), lut)
        order = np.argsort(vals, kind="stable")
        return ("sorted", vals[order], order.astype(np.int64))

    def __getstate__(self) -> dict:
        return {"values": self.values}  # the lookup index is rebuilt on first use


def hash_ids(column: pa.Array | pa.ChunkedArray, buckets: int, salt: int = 0) -> tuple[np.ndarray, int]:
    """Hash a column into ``buckets`` ids: id = 2 + h(value) mod buckets; nulls get id 0.

    ``h`` is deterministic across runs and machines: for integers the SplitMix64 finaliser
    (Steele et al., OOPSLA 2014) of the value; for strings/binary a polynomial hash of the
    UTF-8 bytes (base 1099511628211, mod 2**64) finalised by SplitMix64, computed for the
    whole column at once with numpy (no per-row Python).

    Returns:
        (ids int64 [N], null count). Hashed columns have no out-of-vocabulary id.

    Raises:
        DataError: the column is neither integer, string nor binary.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    null = column.is_null().to_numpy(zero_copy_only=False)
    if t == pa.uint64():  # its values >= 2^63 do not fit int64; below, the same bits as int64
        x = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        x = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
    elif pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        x = _bytes_hash(column)
    elif pa.types.is_dictionary(t):
        return hash_ids(column.cast(t.value_type), buckets, salt)
    else:
        raise DataError(f"cannot hash a column of type {t} (integer, string or binary needed)")
    h = splitmix64(x ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
    ids = (h % np.uint64(buckets)).astype(np.int64) + NUM_RESERVED_IDS
    ids[null] = NULL_ID
    return ids, int(null.sum())


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of uint64 values (wrapping arithmetic), uint64 [N] -> uint64 [N]."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _bytes_hash(column: pa.Array) -> np.ndarray:
    """Polynomial hash of each string's bytes, uint64 [N] (nulls and empty strings hash to 0)."""
    if pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type):
        column = column.cast(pa.large_binary())
        off_t = np.int64
    else:
        column = column.cast(pa.binary())
        off_t = np.int32
    column = column.fill_null(b"")
    bufs = column.buffers()
    n = len(column)
    offsets = np.frombuffer(bufs[1], dtype=off_t, count=n + 1, offset=column.offset * np.dtype(off_t).itemsize)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(n, dtype=np.uint64)
    start = offsets[0]
    b = data[start:start + total].astype(np.uint64) + np.uint64(1)
    # position from the end of its string: h = sum_i b_i * P^(len-1-i)  (mod 2^64)
    row = np.repeat(np.arange(n), lengths)
    pos_from_end = (offsets[1:][row] - start) - np.arange(start - start, total) - 1
    maxlen = int(lengths.max())
    powers = np.ones(maxlen, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, maxlen):  # loop over string length, not rows
            powers[k] = powers[k - 1] * np.uint64(1099511628211)
        terms = b * powers[pos_from_end]
    h = np.zeros(n, dtype=np.uint64)
    nonempty = lengths > 0
    h[nonempty] = np.add.reduceat(terms, (offsets[:-1] - start)[nonempty])  # strings are contiguous
    return h


@dataclass
class Standardizer:
    """(x - mean) / std with training statistics; nulls become 0 (the training mean)."""

    mean: float
    std: float

    @classmethod
    def fit(cls, column: pa.ChunkedArray | pa.Array) -> "Standardizer":
        x = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        x = x[~np.isnan(x)]
        if len(x) == 0:
            return cls(0.0, 1.0)
        std = float(x.std())
        return cls(float(x.mean()), std if std > 0 else 1.0)

    def transform(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """float32 [N] standardised values."""
        x = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        x = (x - self.mean) / self.std
        x[np.isnan(x)] = 0.0
        return x.astype(np.float32)


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into consecutive chunks of the given fractions.

    The permutation is ``numpy.random.default_rng(seed).permutation(n)``; chunk sizes are
    ``floor(n * f)`` for all but the last chunk, which takes the rest. Each chunk is sorted so
    that rows keep their file order.
    """
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.floor(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(p) for p in np.split(perm, bounds)]


@dataclass
class Encoders:
    """Every encoder fitted on a training split: turns raw columns into a :class:`Table`.

    Attributes:
        sparse: {column: Vocabulary} in feature order. dense: {column: Standardizer}.
        tasks: the Task list (label columns). extra: evaluation-only numeric columns.
    """

    sparse: dict
    dense: dict
    tasks: list
    extra: list

    @classmethod
    def fit(cls, train: pa.Table, sparse: list[str], dense: list[str], tasks: list, min_count: int = 1,
            extra: list[str] = ()) -> "Encoders":
        return cls({c: Vocabulary.fit(train.column(c), min_count) for c in sparse},
                   {c: Standardizer.fit(train.column(c)) for c in dense}, list(tasks), list(extra))

    def transform(self, tbl: pa.Table, name: str = "data", labels_required: bool = True):
        """Encode ``tbl`` (named ``name`` in messages: a split or a file path).

        Returns:
            (Table, report) with the report counting nulls and out-of-vocabulary ids.

        Raises:
            DataError: a feature column is missing, a label column is missing (when
                ``labels_required``; otherwise its labels are NaN: unknown), or a binary
                label holds values other than 0/1.
        """
        import torch

        from mtl_train.data.files import require_columns
        from mtl_train.data.schema import Table

        require_columns(tbl.column_names, list(self.sparse) + list(self.dense), name, "feature column")
        if labels_required:
            require_columns(tbl.column_names, [t.label for t in self.tasks], name, "label column")
        n = tbl.num_rows
        ids = np.empty((n, len(self.sparse)), dtype=np.int64)
        rep = {"rows": n, "null_ids": {}, "oov_ids": {}, "null_labels": {}}
        for j, (c, vocab) in enumerate(self.sparse.items()):
            ids[:, j], nulls, oov = vocab.encode(tbl.column(c))
            rep["null_ids"][c], rep["oov_ids"][c] = nulls, oov
        num = np.empty((n, len(self.dense)), dtype=np.float32)
        for j, (c, scaler) in enumerate(self.dense.items()):
            num[:, j] = scaler.transform(tbl.column(c))
        labels = np.full((n, len(self.tasks)), np.nan, dtype=np.float32)
        for j, t in enumerate(self.tasks):
            if t.label not in tbl.column_names:
                continue
            try:
                labels[:, j] = np.asarray(
                    pc.cast(tbl.column(t.label), pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(f"{name}: label column '{t.label}' of task '{t.name}' is not numeric "
                                f"({str(e).splitlines()[0]})") from None
            col = labels[:, j]
            rep["null_labels"][t.name] = int(np.isnan(col).sum())
            if t.type == "binary":
                bad = ~np.isnan(col) & (col != 0) & (col != 1)
                if bad.any():
                    raise DataError(
                        f"{name}: label column '{t.label}' of binary task '{t.name}' holds "
                        f"{int(bad.sum())} values other than 0/1 (first: {col[bad][0]:g})"
                    )
        extras = {}
        for c in self.extra:
            if c in tbl.column_names:
                extras[c] = torch.from_numpy(
                    np.asarray(pc.cast(tbl.column(c), pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32))
            elif labels_required:
                raise DataError(f"{name}: missing column '{c}'")
            else:
                extras[c] = torch.full((n,), float("nan"))
        return Table(torch.from_numpy(ids), torch.from_numpy(num), torch.from_numpy(labels), extras), rep


def encode_splits(
    splits: dict[str, pa.Table],
    sparse: list[str],
    dense: list[str],
    tasks: list,
    min_count: int = 1,
    extra: list[str] = (),
):
    """Fit encoders on ``splits['train']`` and turn every split into a :class:`Table`.

    Args:
        splits: pyarrow tables by split name (``train``, ``val``, ``test``).
        sparse: categorical columns, one vocabulary each (built on train only).
        dense: numeric columns, standardised with training statistics.
        tasks: :class:`~mtl_train.data.schema.Task` list; each label column must be numeric
            (0/1 for binary tasks), nulls become NaN (masked, never filled with 0).
        min_count: values seen fewer times in train map to the out-of-vocabulary id.
        extra: evaluation-only numeric columns carried along (never features).

    Returns:
        (FeatureSchema, {split: Table}, report) where report counts nulls and
        out-of-vocabulary ids per split and column. ``schema.encoders`` holds the fitted
        :class:`Encoders` (checkpoints keep them, so eval/predict can encode new files).

    Raises:
        DataError: a missing column (naming split and column) or a binary label that is not 0/1.
    """
    from mtl_train.data.files import require_columns
    from mtl_train.data.schema import DenseFeature, FeatureSchema, SparseFeature

    train = splits["train"]
    require_columns(train.column_names, list(sparse) + list(dense), "train split", "feature column")
    enc = Encoders.fit(train, sparse, dense, tasks, min_count, extra)
    schema = FeatureSchema(
        sparse=[SparseFeature(c, enc.sparse[c].size) for c in sparse],
        dense=[DenseFeature(c) for c in dense],
        tasks=list(tasks),
        eval_columns=list(extra),
        encoders=enc,
    )
    tables, report = {}, {}
    for name, tbl in splits.items():
        tables[name], report[name] = enc.transform(tbl, f"{name} split")
    return schema, tables, report
