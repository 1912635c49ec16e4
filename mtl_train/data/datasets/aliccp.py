"""Ali-CCP, Alibaba Click and Conversion Prediction (Ma et al., SIGIR 2018, the ESMM paper's data;
Tianchi dataset 408): click -> purchase.

Two input formats, one schema (the 23 categorical fields and 8 numeric weights of the public
preprocessed CSVs):

1. The preprocessed CSVs (``train_path``, ``test_path``, optional ``val_path``): header
   ``click,purchase,101,121,...,150_14,D109_14,...,D853``; every field column is an id
   (re-encoded with a vocabulary built on train), each ``D<field>`` a numeric weight.
2. The raw Tianchi release (``raw_dir`` holding ``sample_skeleton_{train,test}.csv`` and
   ``common_features_{train,test}.csv``). A skeleton row is
   ``sample_id,click,conversion,common_feature_index,feature_num,feature_list`` and a common
   row ``common_feature_index,feature_num,feature_list``; a feature list is features separated
   by ``\\x01``, each ``field_id\\x02feature_id\\x03value``. A sample's features are its own
   (ad and cross fields) plus those of its common row (user fields), joined on the index.
   Choice made (the release leaves it open): a field with several features in a row (the
   14-day behaviour fields) keeps its first; its id is the field column and its value the
   ``D<field>`` column, as in the preprocessed files.

Rows with purchase = 1 but click = 0 are kept (the preprocessed files dropped them); they
are counted and reported, and ESMM uses click AND purchase as its CTCVR label.

Prepare: each input is converted once to Parquet in the cache; the raw skeleton files are
streamed block by block (the common-features file, about 1/50 of the rows, is held in memory). Split: with ``val_path`` the
three files; otherwise (and for the raw release, which has train and test only) the test file
is split half and half into val and test by a seeded permutation (``split_seed``, null = the
run's seed), the protocol of the public preprocessed set.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtl_train.data.datasets.common import column_schema, open_converted, prepared_parquet, read_columns, require_file
from mtl_train.data.schema import DatasetBundle, Task
from mtl_train.data.sources import permuted_sources
from mtl_train.errors import ConfigError, DataError
from mtl_train.registry import param, register


@dataclass
class AliCCPData:
    name: str = "aliccp"
    train_path: Optional[str] = param(None, "preprocessed train CSV", path=True)
    val_path: Optional[str] = param(None, "null: a seeded half of the test file is val, the other half test", path=True)
    test_path: Optional[str] = param(None, "preprocessed test CSV", path=True)
    raw_dir: Optional[str] = param(None, "or the raw Tianchi release: sample_skeleton_* and common_features_* CSVs",
                                   path=True)
    split_seed: Optional[int] = param(None, "null: use the run's seed")
    min_count: int = param(1, "values seen fewer times in train map to the out-of-vocabulary id", positive=True)
    max_rows: Optional[int] = param(None, "read only the first N rows of each file (quick checks)", positive=True)
    cache_dir: Optional[str] = param(None, "null: next to the data if writable, else ~/.cache/mtl-train", path=True)


log = logging.getLogger(__name__)

FIELDS = ["101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210", "216",
          "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14"]
DENSE_FIELDS = ["109_14", "110_14", "127_14", "150_14", "508", "509", "702", "853"]
NUMERIC = [f"D{f}" for f in DENSE_FIELDS]
LABELS = ["click", "purchase"]
TASKS = [Task("click", "click", "binary"), Task("purchase", "purchase", "binary", parent="click")]
SKELETON = ["sample_id", "click", "purchase", "common_index", "feature_num", "feature_list"]
COMMON = ["common_index", "feature_num", "feature_list"]


def _convert_csv(path: str) -> pa.Table:
    types = {f: pa.string() for f in FIELDS}
    types.update({c: pa.float64() for c in NUMERIC})
    types.update({c: pa.int8() for c in LABELS})
    return read_columns(path, types, LABELS + FIELDS + NUMERIC)


def parse_feature_lists(lists: pa.Array, path: str) -> dict[str, pa.Array]:
    """Columnar parse of ``field\\x02feature\\x03value`` lists joined by ``\\x01``.

    Returns {field: ids (string [N], null where absent), "D<field>": values (float64 [N])} for
    every field of :data:`FIELDS` (values for :data:`DENSE_FIELDS` only); a field repeated in a
    row keeps its first feature.

    Raises:
        DataError: a feature that is not ``field\\x02feature\\x03value`` (naming the file).
    """
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    n = len(lists)
    split = pc.split_pattern(pc.fill_null(lists, ""), "\x01")
    flat = pc.list_flatten(split)
    owner = np.asarray(pc.list_parent_indices(split))
    keep = pc.not_equal(flat, "")
    flat, owner = flat.filter(keep), owner[np.asarray(keep)]
    parts = pc.split_pattern(flat, "\x02", max_splits=1)
    fv = pc.split_pattern(pc.list_element(_checked(parts, path, "\\x02"), 1), "\x03", max_splits=1)
    fv = _checked(fv, path, "\\x03")
    field = pc.list_element(parts, 0)
    feature = pc.list_element(fv, 0)
    out: dict[str, pa.Array] = {}
    for f in FIELDS:
        hit = np.asarray(pc.equal(field, f))
        pos = np.flatnonzero(hit)
        rows, first = np.unique(owner[pos], return_index=True)
        take = np.full(n, -1, dtype=np.int64)
        take[rows] = pos[first]
        index = pa.array(take, mask=take < 0)
        out[f] = feature.take(index)
        if f in DENSE_FIELDS:
            try:
                value = pc.cast(pc.list_element(fv, 1).take(index), pa.float64())
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: field {f} has a non-numeric value: {str(e).splitlines()[0]}") from None
            out[f"D{f}"] = value
    return out


def _checked(parts: pa.Array, path: str, sep: str) -> pa.Array:
    bad = pc.not_equal(pc.list_value_length(parts), 2)
    if pc.any(bad).as_py():
        raise DataError(f"{path}: {pc.sum(bad).as_py()} features are not 'field\\x02feature\\x03value' (missing {sep})")
    return parts


def _raw_options(names: list[str], block_size: int):
    return dict(
        read_options=pacsv.ReadOptions(column_names=names, block_size=block_size),
        parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={"common_index": pa.string(), "feature_list": pa.string(), "click": pa.int8(),
                          "purchase": pa.int8(), "sample_id": pa.string(), "feature_num": pa.int64()}),
    )


def _bad_raw(path: str, names: list[str], e: Exception) -> DataError:
    return DataError(f"{path}: not a raw Ali-CCP file ({len(names)} comma-separated columns): {str(e).splitlines()[0]}")


def _read_common(path: str) -> tuple[pa.Array, dict[str, pa.Array]]:
    """The common-features file, parsed: (index strings [M], {column: [M]})."""
    if not os.path.isfile(path):
        raise DataError(f"dataset.raw_dir: raw Ali-CCP file not found: {path}")
    try:
        tbl = pacsv.read_csv(path, **_raw_options(COMMON, 1 << 24))
    except (pa.ArrowInvalid, OSError) as e:
        raise _bad_raw(path, COMMON, e) from None
    return tbl.column("common_index").combine_chunks(), parse_feature_lists(tbl.column("feature_list"), path)


def _skeleton_batches(path: str, block_size: int):
    """The skeleton file as record batches (streamed: the full release does not fit in memory)."""
    if not os.path.isfile(path):
        raise DataError(f"dataset.raw_dir: raw Ali-CCP file not found: {path}")
    try:
        reader = pacsv.open_csv(path, **_raw_options(SKELETON, block_size))
        for batch in reader:
            yield batch
    except (pa.ArrowInvalid, OSError) as e:
        raise _bad_raw(path, SKELETON, e) from None


def _join(batch: pa.RecordBatch, index: pa.Array, shared: dict[str, pa.Array], skeleton_path: str,
          common_path: str) -> pa.Table:
    own = parse_feature_lists(batch.column("feature_list"), skeleton_path)
    row = pc.index_in(batch.column("common_index"), value_set=index)
    if row.null_count:
        log.warning("%s: %d samples have no row in %s (their user fields are null)", skeleton_path, row.null_count,
                    common_path)
    cols = {"click": batch.column("click"), "purchase": batch.column("purchase")}
    for c in FIELDS + NUMERIC:
        cols[c] = pc.coalesce(own[c], shared[c].take(row))
    return pa.table(cols)


def write_raw(skeleton_path: str, common_path: str, out_path: str, block_size: int = 1 << 26) -> int:
    """Convert one raw split (skeleton + common features) to a Parquet file in the preprocessed
    column layout, streaming the skeleton in blocks of ``block_size`` bytes; returns the rows.

    Raises:
        DataError: a file is missing or malformed.
    """
    index, shared = _read_common(common_path)
    writer = None
    rows = 0
    try:
        for batch in _skeleton_batches(skeleton_path, block_size):
            tbl = _join(batch, index, shared, skeleton_path, common_path)
            if writer is None:
                writer = pq.ParquetWriter(out_path, tbl.schema)
            writer.write_table(tbl.cast(writer.schema))
            rows += tbl.num_rows
        if writer is None:  # an empty skeleton file
            empty = {"click": pa.array([], pa.int8()), "purchase": pa.array([], pa.int8())}
            empty.update({f: pa.array([], pa.string()) for f in FIELDS})
            empty.update({c: pa.array([], pa.float64()) for c in NUMERIC})
            pq.write_table(pa.table(empty), out_path)
    finally:
        if writer is not None:
            writer.close()
    return rows


def convert_raw(skeleton_path: str, common_path: str) -> pa.Table:
    """One raw split as an in-memory table (see :func:`write_raw`)."""
    index, shared = _read_common(common_path)
    tables = [_join(b, index, shared, skeleton_path, common_path) for b in _skeleton_batches(skeleton_path, 1 << 24)]
    return pa.concat_tables(tables) if tables else None


def read_file(cfg, path: str) -> pa.Table:
    """One file for eval/predict: a preprocessed-layout CSV, or a Parquet file in that layout
    (e.g. a prepared raw split from the cache).

    Raises:
        DataError: the file is missing, unreadable, or lacks a column."""
    from mtl_train.data.files import check_readable, read_parquet

    path = check_readable(path)
    return read_parquet(path) if path.endswith(".parquet") else _convert_csv(path)


@register("dataset", "aliccp", AliCCPData)
def load(cfg, seed: int) -> DatasetBundle:
    """Load and encode Ali-CCP from the preprocessed CSVs or the raw release (module docstring).

    Raises:
        ConfigError: neither or both formats given.
        DataError: a file is missing or malformed.
    """
    cache = cfg.cache_dir
    if cfg.raw_dir and not (cfg.train_path or cfg.test_path or cfg.val_path):
        paths = {s: (os.path.join(cfg.raw_dir, f"sample_skeleton_{s}.csv"),
                     os.path.join(cfg.raw_dir, f"common_features_{s}.csv"))
                 for s in ("train", "test")}
        for s, (a, b) in paths.items():
            for p in (a, b):
                if not os.path.isfile(p):
                    raise DataError(f"dataset.raw_dir: raw Ali-CCP file not found: {p}")
        train = prepared_parquet("aliccp-raw", list(paths["train"]), {}, cache,
                                 write=lambda tmp: write_raw(*paths["train"], tmp))
        test = prepared_parquet("aliccp-raw", list(paths["test"]), {}, cache,
                                write=lambda tmp: write_raw(*paths["test"], tmp))
        val = None
        source = f"raw release in {cfg.raw_dir}"
        origins = {s: f"{paths[s][0]} (dataset.raw_dir)" for s in ("train", "test")}
    elif cfg.train_path and cfg.test_path and not cfg.raw_dir:
        tr = require_file(cfg.train_path, "dataset.train_path")
        te = require_file(cfg.test_path, "dataset.test_path")
        train = prepared_parquet("aliccp", [tr], {}, cache, lambda: _convert_csv(tr))
        test = prepared_parquet("aliccp", [te], {}, cache, lambda: _convert_csv(te))
        val = None
        origins = {"train": f"{tr} (dataset.train_path)", "test": f"{te} (dataset.test_path)"}
        if cfg.val_path:
            va = require_file(cfg.val_path, "dataset.val_path")
            val = prepared_parquet("aliccp", [va], {}, cache, lambda: _convert_csv(va))
            origins["val"] = f"{va} (dataset.val_path)"
        source = f"preprocessed CSVs {tr}, {cfg.val_path or '-'}, {te}"
    else:
        raise ConfigError("dataset: aliccp needs either dataset.train_path and dataset.test_path (preprocessed CSVs) "
                          "or dataset.raw_dir (the raw Tianchi release), not both")
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    spec = column_schema(FIELDS, NUMERIC, TASKS)
    cols, m = spec.columns(), cfg.max_rows
    sources = permuted_sources(train, cols, {"train": 1.0}, split_seed, m, origin=origins["train"])
    if val is None:
        sources.update(permuted_sources(test, cols, {"val": 0.5, "test": 0.5}, split_seed, m, origin=origins["test"],
                                        by="a seeded half/half val/test split"))
        protocol = f"{source}; test split half/half into val/test (seed {split_seed})"
    else:
        sources.update(permuted_sources(val, cols, {"val": 1.0}, split_seed, m, origin=origins["val"]))
        sources.update(permuted_sources(test, cols, {"test": 1.0}, split_seed, m, origin=origins["test"]))
        protocol = source
    return open_converted("aliccp", spec, sources, os.path.dirname(train), cfg.min_count, protocol)
