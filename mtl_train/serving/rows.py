"""Raw rows -> the inputs of an exported model, from ``features.json`` (see
:mod:`mtl_train.serving.features`), with numpy and pyarrow only (no torch).

This is the training encoder (:class:`mtl_train.data.encode.Encoder`) again, written so that
it needs no training code: vocabulary lookups give the same ids, hashing (SplitMix64 of the
value's bits or of the polynomial hash of its UTF-8 bytes) the same ids bit for bit, numbers
the same float32 values. Columnar throughout; no Python loop over rows.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtl_train.data.columns import as_kind, id_values
from mtl_train.data.hashing import NULL_ID, NUM_RESERVED_IDS, OOV_ID, bytes_hash, hashed_ids
from mtl_train.errors import DataError


def as_table(rows) -> pa.Table:
    """A pyarrow Table of raw rows given as a Table, a RecordBatch or a dict of column name to
    list / numpy array / pyarrow array.

    Raises:
        DataError: anything else, or columns of different lengths (one line)."""
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if isinstance(rows, dict):
        try:
            return pa.table(rows)
        except (pa.ArrowException, TypeError, ValueError) as e:
            raise DataError(f"raw rows: cannot make a table of the columns given: {str(e).splitlines()[0]}") from None
    raise DataError(f"raw rows: a pyarrow Table or a dict of column lists is needed, not {type(rows).__name__}")


def _one_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def hash_ids(column: pa.Array, buckets: int, salt: int, kind: str | None, name: str) -> np.ndarray:
    """Ids of a hashed column: 2 + splitmix64(h(value) XOR salt) mod buckets, nulls 0, int64 [N].
    A value of the other kind than the training files' (``kind``) is converted first.

    Raises:
        DataError: a value that does not convert, or a column neither integer, string nor binary."""
    try:
        column = as_kind(column, kind)  # converted as the training files' other-kind values are
    except DataError as e:
        raise DataError(f"raw rows: column '{name}' {e}") from None
    if pa.types.is_null(column.type):  # all nulls: hashed as integers, every id NULL_ID
        column = column.cast(pa.int64())
    ids = hashed_ids(column, buckets, salt)
    if ids is None:
        t = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        raise DataError(f"raw rows: column '{name}': cannot hash values of type {t} (integer, string or binary needed)")
    return ids


class VocabLookup:
    """Value -> id of one vocabulary (ids 2.. by position, 1 unseen, 0 null), as
    :meth:`mtl_train.data.encode.Vocabulary.encode`: an input of another type is cast to the
    vocabulary's type first. Integers: a binary search over the sorted values; strings: a
    binary search over the sorted 64-bit hashes of the values, each hit checked against the
    value itself; any other type: ``pyarrow.compute.index_in``."""

    def __init__(self, values: pa.Array):
        self.values = values
        t = values.type
        self.kind = "other"
        if pa.types.is_integer(t):
            v = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
            order = np.argsort(v, kind="stable")
            self.kind, self.sorted, self.order = "integer", v[order], order.astype(np.int64)
            self.sorted_ids = self.order + NUM_RESERVED_IDS
        elif pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
            h = bytes_hash(values)
            order = np.argsort(h, kind="stable")
            if len(h) < 2 or not (np.diff(h[order]) == 0).any():  # a collision: fall back to index_in
                self.kind, self.sorted, self.order = "string", h[order], order.astype(np.int64)

    def positions(self, column: pa.Array) -> np.ndarray:
        """Vocabulary positions of the values of ``column`` (already of the vocabulary's type),
        -1 where unknown or null, int64 [N]."""
        n = len(column)
        if self.kind == "other" or len(self.values) == 0:
            if len(self.values) == 0:
                return np.full(n, -1, dtype=np.int64)
            found = pc.fill_null(pc.index_in(column, value_set=self.values), -1)
            return found.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if self.kind == "integer":
            x = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        else:
            x = bytes_hash(column)
        i = np.searchsorted(self.sorted, x)
        i[i == len(self.sorted)] = 0
        pos = np.where(self.sorted[i] == x, self.order[i], -1)
        if self.kind == "string":  # a hash hit must be the same string
            hit = pos >= 0
            if hit.any():
                same = pc.equal(self.values.take(pa.array(pos[hit])), column.filter(pa.array(hit)))
                ok = np.asarray(pc.fill_null(same, False).to_numpy(zero_copy_only=False), dtype=bool)
                pos[np.flatnonzero(hit)[~ok]] = -1
        return pos

    def encode(self, column: pa.Array, name: str) -> np.ndarray:
        """int64 [N] ids of ``column``.

        Raises:
            DataError: values that cannot be cast to the vocabulary's type (one line, naming
                the column)."""
        if self.kind == "integer" and column.null_count == 0 and column.type == self.values.type and len(self.sorted):
            x = column.to_numpy()  # the common case, fast at batch 1: no nulls, the vocabulary's type
            i = np.searchsorted(self.sorted, x)
            i[i == len(self.sorted)] = 0
            return np.where(self.sorted[i] == x, self.sorted_ids[i], OOV_ID)
        if column.type != self.values.type:
            try:
                column = column.cast(self.values.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise DataError(f"raw rows: column '{name}': cannot map values of type {column.type} to a vocabulary "
                                f"of {self.values.type}: {_one_line(e)}") from None
        null = column.is_null().to_numpy(zero_copy_only=False)
        pos = self.positions(column)
        out = pos + NUM_RESERVED_IDS
        out[pos < 0] = OOV_ID
        out[null] = NULL_ID
        return out


def offset_ids(column: pa.Array, size: int, name: str) -> np.ndarray:
    """Ids of a generated id column (the synthetic set): value + 2 for integers in
    [0, size - 2), 1 for other values, 0 for nulls, int64 [N].

    Raises:
        DataError: values that are not integers (one line, naming the column)."""
    try:
        col = id_values(column).cast(pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"raw rows: column '{name}' holds {column.type} values where the training ids are integers: "
                        f"{_one_line(e)}") from None
    null = col.is_null().to_numpy(zero_copy_only=False)
    x = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    ids = np.where((x >= 0) & (x < size - NUM_RESERVED_IDS), x + NUM_RESERVED_IDS, OOV_ID)
    ids[null] = NULL_ID
    return ids


def numeric_values(col: pa.Array, spec: dict) -> np.ndarray:
    """One numeric column normalised as training did (see :mod:`mtl_train.serving.features`),
    float64 [N].

    Raises:
        DataError: values that are not numbers (one line, naming the column)."""
    name = spec["name"]
    try:
        x = np.array(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64, copy=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"raw rows: numeric column '{name}' is not numeric ({col.type})") from None
    x[np.isinf(x)] = np.nan
    st, fill, norm, nan = spec["stats"], spec["fill"], spec["norm"], np.isnan(x)
    if norm == "log":
        x = np.sign(x) * np.log1p(np.abs(x))
    if fill == "zero":
        x[nan] = 0.0
    elif fill != "mean":
        fill = float(fill)
        x[nan] = np.sign(fill) * np.log1p(abs(fill)) if norm == "log" else fill
    span = (st["max"] - st["min"]) or 1.0
    if norm in ("standard", "log"):
        x = (x - st["mean"]) / st["std"]
    elif norm == "minmax":
        x = (x - st["min"]) / span
    if fill == "mean":
        x[nan] = 0.0 if norm in ("standard", "log") else (
            (st["mean"] - st["min"]) / span if norm == "minmax" else st["mean"])
    return x


def _array(col: pa.ChunkedArray) -> pa.Array:
    """A table column as one array (no copy when it has one chunk)."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


class FeatureEncoder:
    """Raw rows -> the inputs of the exported model (``features.json`` of ``folder``).

    ``encode(rows)`` returns ``{"sparse": int64 [B, F], "dense": float32 [B, D]}`` plus, for
    each sequence, ``"seq_<name>"`` int64 [B, max_len] and ``"seq_<name>_len"`` int64 [B].

    Args:
        doc: the content of features.json. folder: where its vocabulary files are.
    """

    def __init__(self, doc: dict, folder: str):
        self.doc = doc
        self.categorical = doc["categorical"]
        self.sequences = doc["sequences"]
        self.numeric = doc["numeric"]
        self.features = [c["name"] for c in [*self.categorical, *self.sequences, *self.numeric]]
        self.vocabs = {c["name"]: VocabLookup(pq.read_table(os.path.join(folder, c["file"])).column("value")
                                              .combine_chunks())
                       for c in [*self.categorical, *self.sequences] if c["encoding"] == "vocabulary"}

    def ids(self, col: pa.Array, c: dict) -> np.ndarray:
        """int64 [N] ids of the values of id column ``c`` (a features.json entry)."""
        enc = c["encoding"]
        if enc == "vocabulary":
            return self.vocabs[c["name"]].encode(col, c["name"])
        if enc == "hash":
            return hash_ids(col, int(c["buckets"]), int(c["salt"]), c.get("id_kind"), c["name"])
        if enc == "offset":
            return offset_ids(col, int(c["size"]), c["name"])
        raise DataError(f"features.json: column '{c['name']}': unknown encoding '{enc}'")

    def encode(self, rows, where: str = "raw rows") -> dict[str, np.ndarray]:
        """The model inputs of ``rows`` (a pyarrow Table, RecordBatch or dict of lists);
        ``where`` names them in messages (a file's path).

        Raises:
            DataError: a feature column is missing, a list where an id belongs or the reverse,
                a value of another type that does not convert as training converted it (one
                line, naming the column)."""
        try:
            return self._encode(as_table(rows))
        except DataError as e:
            msg = str(e)
            if where != "raw rows" and msg.startswith("raw rows: "):
                raise DataError(f"{where}: {msg[len('raw rows: '):]}") from None
            raise

    def _encode(self, t: pa.Table) -> dict[str, np.ndarray]:
        have = dict(zip(t.column_names, t.columns))
        missing = [c for c in self.features if c not in have]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"raw rows: missing feature column '{missing[0]}'{more}; have {t.column_names[:8]}")
        n = t.num_rows
        sparse = np.empty((n, len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            col = _array(have[c["name"]])
            if pa.types.is_nested(col.type):
                raise DataError(f"raw rows: categorical column '{c['name']}' holds {col.type} values; training had "
                                f"one id per row")
            sparse[:, j] = self.ids(col, c) if n else 0
        dense = np.empty((n, len(self.numeric)), dtype=np.float32)
        for j, c in enumerate(self.numeric):
            dense[:, j] = numeric_values(_array(have[c["name"]]), c)
        out = {"sparse": sparse, "dense": dense}
        for c in self.sequences:
            out[f"seq_{c['name']}"] = ids = np.zeros((n, int(c["max_len"])), dtype=np.int64)
            out[f"seq_{c['name']}_len"] = self._sequence(_array(have[c["name"]]), c, ids)
        return out

    def _sequence(self, col: pa.Array, c: dict, out: np.ndarray) -> np.ndarray:
        """The first ``max_len`` ids of each list into ``out`` (int64 [N, max_len], zeros);
        returns the ids kept per row, int64 [N]."""
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise DataError(f"raw rows: sequence column '{c['name']}' is not a list column ({col.type})")
        n, m = len(col), out.shape[1]
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(col)  # null lists skipped, null ids kept
        if len(flat):
            ids = self.ids(flat, c)
            row = np.repeat(np.arange(n), lengths)
            starts = np.cumsum(lengths) - lengths
            pos = np.arange(len(ids)) - np.repeat(starts, lengths)
            keep = pos < m
            out[row[keep], pos[keep]] = ids[keep]
        return np.minimum(lengths, m)
