"""Column encoders fitted on the training split: vocabularies for ids, statistics for numbers.

All work is columnar (pyarrow compute / numpy); no Python loop runs over rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_train.errors import DataError
from mtl_train.data.schema import NULL_ID, NUM_RESERVED_IDS, OOV_ID


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
            values id 1. Integer values never pass through floats.
        """
        column = column.cast(self.values.type) if column.type != self.values.type else column
        pos = pc.index_in(column, value_set=self.values)
        if isinstance(pos, pa.ChunkedArray):
            pos = pos.combine_chunks()
        is_null = column.is_null()
        if isinstance(is_null, pa.ChunkedArray):
            is_null = is_null.combine_chunks()
        ids = pos.to_numpy(zero_copy_only=False)  # float with NaN where not found
        found = ~np.isnan(ids) if ids.dtype.kind == "f" else np.ones(len(ids), bool)
        out = np.full(len(ids), OOV_ID, dtype=np.int64)
        out[found] = ids[found].astype(np.int64) + NUM_RESERVED_IDS
        null = is_null.to_numpy(zero_copy_only=False)
        out[null] = NULL_ID
        return out, int(null.sum()), int((~found & ~null).sum())


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
