"""Shared steps of the named file-backed datasets: a cached conversion to Parquet, the column
schema they state, and the one Parquet path (:func:`mtl_train.data.parquet.open_dataset`) that
prepares, encodes and reads them."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtl_train.data.cache import cache_root, cached_file, fingerprint
from mtl_train.data.parquet import open_dataset
from mtl_train.data.schema import DatasetBundle, Task
from mtl_train.data.spec import CategoricalColumn, NumericColumn, ParquetSchema, TaskColumn
from mtl_train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREPARE_VERSION = 1


def require_file(path: str | None, key: str) -> str:
    """``path`` if it names a file; ConfigError when unset, DataError when missing."""
    if not path:
        raise ConfigError(f"{key}: not set (give the path of the data file)")
    if not Path(path).is_file():
        raise DataError(f"{key}: data file not found: {path}")
    return str(path)


def prepared_parquet(name: str, inputs: list[str], spec: dict, cache_dir: str | None,
                     convert: Callable[[], pa.Table] | None = None,
                     write: Callable[[str], None] | None = None) -> str:
    """The path of the Parquet conversion of ``inputs``, built once with ``convert()`` (returns
    the table) or ``write(tmp_path)`` (writes the Parquet file itself, e.g. batch by batch).

    The file is ``<cache>/<name>-<fingerprint>.parquet``; the fingerprint covers each input's
    path, size and mtime and ``spec`` (:mod:`mtl_train.data.cache`), so a changed file or
    conversion rebuilds it and an unchanged one is read back.
    """
    fp = fingerprint(inputs, {"dataset": name, "prepare": PREPARE_VERSION, **spec})
    path = cache_root(inputs, cache_dir) / f"{name}-{fp}.parquet"
    built = not path.exists()
    cached_file(path, write if write is not None else (lambda tmp: pq.write_table(convert(), tmp)))
    log.info("%s: %s Parquet %s", name, "wrote" if built else "reusing", path)
    return str(path)


def read_csv(path: str, column_types: dict | None = None, **read) -> pa.Table:
    """Read a CSV with a header row (pyarrow); DataError naming the file on failure."""
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=1 << 24, **read),
            convert_options=pacsv.ConvertOptions(column_types=column_types or {}),
        )
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: cannot read as CSV: {str(e).splitlines()[0]}") from None


def read_columns(path: str, column_types: dict, columns: list[str]) -> pa.Table:
    """The ``columns`` of a CSV with a header row, in that order, read with ``column_types``;
    DataError naming the file and the first missing column."""
    from mtl_train.data.files import require_columns

    tbl = read_csv(path, column_types)
    require_columns(tbl.column_names, columns, path)
    return tbl.select(columns)


def column_schema(categorical: list[str], numeric: list[str], tasks: list[Task]) -> ParquetSchema:
    """The column schema of a named dataset: a vocabulary per categorical column (training
    values by decreasing count, ties by value; ``dataset.min_count``), numeric columns
    standardised with exact training statistics (nulls: the training mean, i.e. 0), and the
    tasks' label columns (with their weight columns and label transforms)."""
    return ParquetSchema(categorical=[CategoricalColumn(c) for c in categorical],
                         numeric=[NumericColumn(c, norm="standard", fill="mean", stats="exact") for c in numeric],
                         tasks=[TaskColumn(t.name, t.label, t.type, t.parent, weight=t.weight,
                                                    weighted_metrics=t.weighted_metrics, transform=t.transform)
                                         for t in tasks])


def open_converted(name: str, spec: ParquetSchema, sources: dict, folder, min_count: int, protocol: str) -> DatasetBundle:
    """Prepare, encode and read into memory the converted splits ``sources`` (see
    :func:`mtl_train.data.parquet.open_dataset`; the prepare cache goes in ``folder``)."""
    bundle = open_dataset(name, spec, sources, Path(folder), {}, min_count=min_count)
    bundle.info["protocol"] = protocol
    log.info("%s: %s; rows train/val/test = %d/%d/%d", name, protocol, *(len(t) for _, t in bundle.splits()))
    return bundle
