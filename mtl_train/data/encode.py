"""Encoding raw columns into the blocks of a batch: vocabularies and hashing for ids, and the
:class:`Encoder` of a prepared dataset (its vocabularies and numeric statistics), which every
file-based dataset uses, in memory or streamed, and which checkpoints keep for eval/predict.

All work is columnar (pyarrow compute / numpy); no Python loop runs over rows.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtl_train.data.columns import as_kind, check_list, check_scalar, flat, label_array, numeric, weight_array
from mtl_train.data.hashing import hashed_ids
from mtl_train.data.schema import NULL_ID, NUM_RESERVED_IDS, OOV_ID
from mtl_train.data.spec import fill_value
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
    ids = hashed_ids(column, buckets, salt)
    if ids is None:
        t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        raise DataError(f"cannot hash a column of type {t} (integer, string or binary needed)")
    return ids, int((ids == NULL_ID).sum())  # a hashed value's id is >= NUM_RESERVED_IDS


class Encoder:
    """Turns record batches of the raw columns into the blocks of a batch, with the prepared
    vocabularies and statistics (see :mod:`mtl_train.data.prepare`). Columnar throughout
    (pyarrow/numpy), no per-row Python.

    ``encode(table)`` returns numpy arrays: ``sparse`` int64 [n, F_cat], ``seq`` int64
    [n, sum(max_len)], ``dense`` float32 [n, F_num], ``labels`` float32 [n, T] (NaN = null),
    and, when a task has a weight column (:attr:`weighted`), ``weights`` float32 [n, T]: the
    row weights (1 for a task without a weight column); a null weight makes that task's label
    NaN (the row is left out of the task, as with a null label) and its weight 0.

    Numeric columns: nulls and non-finite values are missing; ``norm`` ``log`` takes the
    signed log1p first; ``fill`` (applied before normalising, a number is logged too) or the
    training mean; then ``standard`` (x - mean) / std, ``minmax`` (x - min) / (max - min) or
    ``none``.

    Args:
        spec: the :class:`~mtl_train.data.spec.ParquetSchema`.
        prep: the prepare step's meta (vocabulary files, stats, id kinds).
        root: the prepare cache folder holding the vocabulary files (read here, not kept).
    """

    def __init__(self, spec, prep: dict, root):
        self.spec = spec
        self.columns = spec.columns()
        self.vocabs = {name: Vocabulary(pq.read_table(os.path.join(root, f)).column("value").combine_chunks())
                       for name, f in prep["vocab"].items() if f is not None}
        self.stats = prep["stats"]
        self.id_kinds = prep["id_kinds"]
        self.salts = {c.name: zlib.crc32(c.name.encode()) for c in spec.id_columns}

    @property
    def weighted(self) -> bool:
        """Whether a task has a weight column (then batches carry ``weights``)."""
        return bool(self.spec.weights)

    def transform(self, tbl: pa.Table, name: str = "data", labels_required: bool = True):
        """Encode a whole raw table (``mode=eval``/``predict`` on a file, see
        :mod:`mtl_train.train.infer`) into a :class:`~mtl_train.data.schema.Table`.

        Returns:
            (Table, report) with the report counting rows, and null and out-of-vocabulary ids
            per id column (``{"rows", "null_ids", "oov_ids"}``). Label columns absent from
            ``tbl`` give NaN labels unless ``labels_required``.

        Raises:
            DataError: a feature column (or, when required, a label column) is missing, or a
                bad value (see :meth:`encode`).
        """
        import torch

        from mtl_train.data.files import require_columns
        from mtl_train.data.schema import Table

        require_columns(tbl.column_names, self.spec.features, name, "feature column")
        if labels_required:
            require_columns(tbl.column_names, self.spec.labels, name, "label column")
            if self.weighted:
                require_columns(tbl.column_names, self.spec.weights, name, "weight column")
        for c in [*self.spec.labels, *(self.spec.weights if self.weighted else [])]:
            if c not in tbl.column_names:
                tbl = tbl.append_column(c, pa.array(np.full(tbl.num_rows, np.nan)))
        report = {"rows": tbl.num_rows, "null_ids": {}, "oov_ids": {}}
        enc = self.encode(tbl, name, report)
        weights = torch.from_numpy(enc["weights"]) if "weights" in enc else None
        return Table(torch.from_numpy(enc["sparse"]), torch.from_numpy(enc["dense"]), torch.from_numpy(enc["labels"]),
                     {}, torch.from_numpy(enc["seq"]), weights), report

    def _ids(self, col, c, report: dict | None = None) -> np.ndarray:
        try:
            if c.hash_buckets is not None:
                ids, nulls = hash_ids(as_kind(col, self.id_kinds.get(c.name)), int(c.hash_buckets), self.salts[c.name])
                oov = 0
            else:
                ids, nulls, oov = self.vocabs[c.name].encode(col)
        except DataError as e:
            raise DataError(f"dataset: column '{c.name}': {e}") from None
        if report is not None:
            report["null_ids"][c.name] = report["null_ids"].get(c.name, 0) + nulls
            report["oov_ids"][c.name] = report["oov_ids"].get(c.name, 0) + oov
        return ids

    def _sequence(self, col, c, out: np.ndarray, report: dict | None) -> None:
        """The first ``c.max_len`` ids of each list of ``col`` into ``out`` (int64 [n, max_len], zeros)."""
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        check_list(col, c.name)
        n = len(col)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = self._ids(flat(col), c, report)  # list_flatten skips null lists, keeps null elements
        row = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        pos = np.arange(len(ids)) - np.repeat(starts, lengths)
        keep = pos < c.max_len
        out[row[keep], pos[keep]] = ids[keep]

    def _numeric(self, col, c) -> np.ndarray:
        x = numeric(col, c.name)
        st, fill, nan = self.stats[c.name], fill_value(c), np.isnan(x)
        if c.norm == "log":
            x = np.sign(x) * np.log1p(np.abs(x))
        if fill == "zero":
            x[nan] = 0.0
        elif fill != "mean":
            x[nan] = np.sign(fill) * np.log1p(abs(fill)) if c.norm == "log" else fill
        span = (st["max"] - st["min"]) or 1.0
        if c.norm in ("standard", "log"):
            x = (x - st["mean"]) / st["std"]
        elif c.norm == "minmax":
            x = (x - st["min"]) / span
        if fill == "mean":  # the training mean: 0 after standardising
            x[nan] = 0.0 if c.norm in ("standard", "log") else (
                (st["mean"] - st["min"]) / span if c.norm == "minmax" else st["mean"])
        return x

    def encode(self, t: pa.Table, where: str = "dataset", report: dict | None = None) -> dict[str, np.ndarray]:
        """The blocks of the rows of ``t`` (see the class docstring); null and out-of-vocabulary
        ids are counted into ``report["null_ids"]``/``report["oov_ids"]`` when given.

        Raises:
            DataError: a list where an id belongs or the reverse, ids of the wrong kind, a
                non-numeric number or label, a binary label not 0/1, a negative or infinite
                weight (naming ``where``)."""
        n, spec = t.num_rows, self.spec
        sparse = np.empty((n, len(spec.categorical)), dtype=np.int64)
        for j, c in enumerate(spec.categorical):
            check_scalar(t.column(c.name), c.name)
            sparse[:, j] = self._ids(t.column(c.name), c, report)
        seq = np.zeros((n, spec.seq_width), dtype=np.int64)
        at = 0
        for c in spec.sequences:
            self._sequence(t.column(c.name), c, seq[:, at:at + c.max_len], report)
            at += c.max_len
        dense = np.empty((n, len(spec.numeric)), dtype=np.float32)
        for j, c in enumerate(spec.numeric):
            dense[:, j] = self._numeric(t.column(c.name), c)
        labels = np.empty((n, len(spec.tasks)), dtype=np.float32)
        for j, task in enumerate(spec.tasks):
            labels[:, j] = label_array(t.column(task.label), task, where)
        out = {"sparse": sparse, "seq": seq, "dense": dense, "labels": labels}
        if self.weighted:
            weights = np.ones((n, len(spec.tasks)), dtype=np.float32)
            for j, task in enumerate(spec.tasks):
                if task.weight:
                    w = weight_array(t.column(task.weight), task, where)
                    null = np.isnan(w)
                    labels[null, j] = np.nan
                    weights[:, j] = np.where(null, np.float32(0), w)
            out["weights"] = weights
        return out
