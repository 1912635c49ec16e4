"""Column helpers shared by the prepare step and the encoder: ids in one type per kind, numbers
with non-finite values as missing, label checks. Columnar (pyarrow/numpy), no per-row Python.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_train.errors import DataError


def id_values(col):
    """Id values in one type per kind, so that files written with different Parquet types count
    alike (int32 in one file, int64 in another; a pandas ``category`` column, stored as a
    dictionary): dictionaries decoded, integers other than uint64 as int64, large strings as
    strings."""
    t = col.type
    if pa.types.is_dictionary(t):
        col, t = col.cast(t.value_type), t.value_type
    if pa.types.is_integer(t) and t not in (pa.int64(), pa.uint64()):
        col = col.cast(pa.int64())
    elif pa.types.is_large_string(t):
        col = col.cast(pa.string())
    return col


def mixed_types(name: str, here, other) -> DataError:
    return DataError(f"dataset: id column '{name}' holds {here} values in one training file and {other} in "
                     f"another; write it with one type")


def id_kind(t: pa.DataType) -> str:
    """``"integer"`` or ``"string"``: the kind of an id column's Arrow type."""
    t = t.value_type if pa.types.is_dictionary(t) else t
    return "integer" if pa.types.is_integer(t) or pa.types.is_boolean(t) else "string"


def as_kind(col, kind: str | None):
    """A hashed id column in the kind of the training files' ids (``"7"`` in this file, 7 in the
    training files: hashed alike).

    Raises:
        DataError: a value that does not convert (a word where the training ids are integers)."""
    if not kind or pa.types.is_null(col.type) or id_kind(col.type) == kind:
        return col
    try:
        return id_values(col).cast(pa.int64() if kind == "integer" else pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"holds {col.type} values where the training files hold {kind} ids: "
                        f"{str(e).splitlines()[0]}") from None


def flat(col):
    """The ids of a list column, one after the other (null lists skipped, null ids kept)."""
    return pc.list_flatten(col)


def check_scalar(col, name: str) -> None:
    if pa.types.is_nested(col.type):
        raise DataError(f"dataset: categorical column '{name}' holds {col.type} values; a list of ids belongs "
                        f"under sequences")


def check_list(col, name: str) -> None:
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise DataError(f"dataset: sequence column '{name}' is not a list column ({col.type})")


def numeric(col, name: str) -> np.ndarray:
    """A numeric column as a writable float64 array; nulls and non-finite values (inf, -inf,
    NaN) are NaN, i.e. missing: counted and filled like nulls, never into the statistics."""
    try:
        x = np.array(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64, copy=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"dataset: numeric column '{name}' is not numeric ({col.type})") from None
    x[np.isinf(x)] = np.nan
    return x


def label_array(col: pa.ChunkedArray | pa.Array, task, where: str) -> np.ndarray:
    """float32 [N] labels of ``task`` (a TaskColumn); nulls are NaN (masked, never 0).

    Raises:
        DataError: the column is not numeric, a binary label is not 0/1, a regression label
            is infinite, or negative under ``transform: log1p`` (naming ``where``, the column
            and the task)."""
    try:
        y = np.asarray(pc.cast(col, pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: label column '{task.label}' of task '{task.name}' "
                        f"is not numeric ({col.type})") from None
    if task.type == "binary":
        bad = ~np.isnan(y) & (y != 0) & (y != 1)
        if bad.any():
            raise DataError(f"{where}: label column '{task.label}' of binary task '{task.name}' holds "
                            f"{int(bad.sum())} values other than 0/1 (first: {y[bad][0]:g})")
    elif np.isinf(y).any():
        raise DataError(f"{where}: label column '{task.label}' of regression task '{task.name}' holds "
                        f"{int(np.isinf(y).sum())} infinite values")
    elif getattr(task, "transform", "none") == "log1p":
        neg = y < 0  # NaN compares False
        if neg.any():
            raise DataError(f"{where}: label column '{task.label}' of task '{task.name}' holds {int(neg.sum())} "
                            f"negative values (first: {y[neg][0]:g}); transform log1p needs labels >= 0")
    return y


def weight_array(col: pa.ChunkedArray | pa.Array, task, where: str) -> np.ndarray:
    """float32 [N] row weights of ``task`` (a TaskColumn with ``weight``) from ``col``; nulls
    and NaN are NaN (the row is then left out of the task, like a null label).

    Raises:
        DataError: the column is not numeric, or holds negative or infinite weights (naming
            ``where``, the column and the task)."""
    try:
        w = np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: weight column '{task.weight}' of task '{task.name}' "
                        f"is not numeric ({col.type})") from None
    w32 = w.astype(np.float32)  # a float64 weight beyond float32's range is infinite here
    bad = (w32 < 0) | np.isinf(w32)
    if bad.any():
        raise DataError(f"{where}: weight column '{task.weight}' of task '{task.name}' holds {int(bad.sum())} "
                        f"negative or infinite values (first: {w[bad][0]:g}); weights must be >= 0")
    return w32
