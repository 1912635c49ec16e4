"""``dataset=parquet``: any Parquet file, directory or glob, described by a YAML schema.

The schema (in the dataset config, or in a separate YAML file named by ``schema_file``)
declares:

- ``categorical``: id columns (integer or string), each with a vocabulary of the training
  values seen at least ``min_count`` times, or hashed into ``hash_buckets`` buckets;
- ``numeric``: number columns with a normalisation (``standard``, ``minmax``, ``log``,
  ``none``) and a null fill (``mean``, ``zero`` or a number, applied before normalising);
  infinite values count as nulls;
- ``sequences``: list columns of ids (e.g. the last 20 item ids), vocabulary or hash like
  categorical columns, kept up to ``max_len`` ids and pooled by ``mean`` or ``sum``;
- ``tasks``: one label column per task with its type (binary/regression) and parent.

Ids: 0 = null (and padding of id lists), 1 = out of vocabulary, known values 2..; hashed
columns use ids 2..hash_buckets+1. Integer ids never pass through floats. Null labels are
NaN (masked per task), never 0.

The **prepare step** (:func:`prepare`) reads the training rows once, by record batch with a
progress bar, to build the vocabularies and numeric statistics (training split only), then
the val/test rows to count their nulls and out-of-vocabulary ids. Its outputs are cached
(:mod:`mtl_train.data.cache`) under a key of the files (path, size, mtime) and of everything
in the config that shapes them, so a second run reuses them and any change rebuilds them.

Splits: ``train_path`` / ``val_path`` / ``test_path``; a split without a path is carved out
of the train files by a seeded hash of (file name, row number) with the fractions
``split`` (so the assignment of a row never depends on the order files are read in).

Reading: each split is held in memory as a :class:`~mtl_train.data.schema.Table` or
streamed (:class:`~mtl_train.data.stream.StreamSplit`), see ``mode``.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from mtl_train.data import cache
from mtl_train.data.encode import Vocabulary, hash_ids, splitmix64
from mtl_train.data.files import in_file
from mtl_train.data.schema import (
    NUM_RESERVED_IDS,
    DatasetBundle,
    DenseFeature,
    FeatureSchema,
    SequenceFeature,
    SparseFeature,
    Table,
    Task,
)
from mtl_train.errors import ConfigError, DataError
from mtl_train.system import memory_budget

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NORMS = ("standard", "minmax", "log", "none")
READ_BATCH = 65536
"""Rows per record batch read from a row group."""


# ---- the schema --------------------------------------------------------------------------------
def normalise_columns(spec: dict) -> dict:
    """Accept the short forms of the schema: a bare column name for a categorical or numeric
    column, and a task without ``label`` (the label column is the task name)."""
    spec = dict(spec)
    for key in ("categorical", "numeric", "sequences"):
        if spec.get(key) is not None:
            spec[key] = [{"name": c} if isinstance(c, str) else c for c in spec[key]]
    if spec.get("tasks") is not None:
        spec["tasks"] = [{"name": t} if isinstance(t, str) else t for t in spec["tasks"]]
    return spec


def load_schema(cfg) -> dict:
    """The column schema of a parquet dataset config: its own ``categorical``/``numeric``/
    ``sequences``/``tasks`` keys, or those of the YAML file ``schema_file``.

    Raises:
        ConfigError: both given, neither given, the file is missing or malformed, or a
            column appears twice.
    """
    from mtl_train.config import ParquetSchema, validate_schema_file

    own = {k: OmegaConf.to_container(cfg[k]) for k in ("categorical", "numeric", "sequences", "tasks") if cfg[k]}
    if cfg.schema_file:
        if own:
            raise ConfigError(f"dataset.schema_file: given together with dataset keys {sorted(own)}; use one or the other")
        spec = validate_schema_file(cfg.schema_file)
    else:
        spec = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(ParquetSchema), own))
    where = cfg.schema_file or "dataset"  # what the messages below name
    if not spec["tasks"]:
        raise ConfigError(f"{where}: tasks: at least one task (label column) is needed")
    if not (spec["categorical"] or spec["numeric"] or spec["sequences"]):
        raise ConfigError(f"{where}: no feature columns (categorical, numeric or sequences)")
    for c in spec["categorical"] + spec["sequences"]:
        if c["hash_buckets"] is not None and c["hash_buckets"] <= 0:
            raise ConfigError(f"{where}: column '{c['name']}': hash_buckets must be positive")
        if c["min_count"] is not None and c["min_count"] <= 0:
            raise ConfigError(f"{where}: column '{c['name']}': min_count must be positive")
    for c in spec["numeric"]:
        if c["norm"] not in NORMS:
            raise ConfigError(f"{where}: numeric column '{c['name']}': norm '{c['norm']}' is not one of {NORMS}")
        fill_value(c, where)
    for c in spec["sequences"]:
        if c["max_len"] <= 0:
            raise ConfigError(f"{where}: sequence column '{c['name']}': max_len must be positive")
        if c["pooling"] not in ("mean", "sum"):
            raise ConfigError(f"{where}: sequence column '{c['name']}': pooling '{c['pooling']}' is not mean or sum")
    for t in spec["tasks"]:
        t["label"] = t["label"] or t["name"]
    tasks = [t["name"] for t in spec["tasks"]]
    dup = sorted({n for n in tasks if tasks.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: task(s) {dup} declared more than once")
    for t in spec["tasks"]:
        if t["parent"] and t["parent"] not in tasks:
            raise ConfigError(f"{where}: task '{t['name']}': parent '{t['parent']}' is not a task "
                              f"(tasks: {', '.join(tasks)})")
        if t["parent"] == t["name"]:
            raise ConfigError(f"{where}: task '{t['name']}': a task cannot be its own parent")
    names = [c["name"] for k in ("categorical", "numeric", "sequences") for c in spec[k]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: column(s) {dup} declared more than once")
    return spec


def fill_value(col: dict, where: str = "dataset") -> str | float:
    f = str(col["fill"])
    if f in ("mean", "zero"):
        return f
    try:
        return float(f)
    except ValueError:
        raise ConfigError(f"{where}: numeric column '{col['name']}': fill '{f}' is not mean, zero or a number") from None


# ---- files and row groups ----------------------------------------------------------------------
def resolve_files(path: str, key: str) -> list[str]:
    """A Parquet file, a directory (every ``*.parquet`` below it, hidden and ``_`` files
    skipped) or a glob -> sorted file list.

    Raises:
        DataError: nothing matches.
    """
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        files = [f for f in glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)
                 if not any(p.startswith((".", "_")) for p in os.path.relpath(f, path).split(os.sep))]
    elif any(ch in path for ch in "*?["):
        files = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
    else:
        files = [path] if os.path.isfile(path) else []
    if not files:
        raise DataError(f"dataset.{key}: no Parquet file found at {path}")
    return sorted(os.path.abspath(f) for f in files)


@dataclass(frozen=True)
class Unit:
    """One row group: the unit of shuffling and sharding when streaming."""

    file: str
    group: int
    rows: int
    start: int  # row number of the group's first row in its file


def row_groups(files: list[str], columns: list[str]) -> list[Unit]:
    """Row groups of ``files`` (from the footers only), checking that every file has ``columns``.

    Raises:
        DataError: a file is not Parquet or lacks a column (the message names both).
    """
    units = []
    for f in files:
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{f}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
        have = set(meta.schema.to_arrow_schema().names)
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{f}: column '{missing[0]}' of the schema (dataset.schema_file) not found "
                            f"(columns: {sorted(have)[:20]})")
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                units.append(Unit(f, g, n, start))
            start += n
    return units


def read_unit(unit: Unit, columns: list[str], handle: pq.ParquetFile | None = None):
    """Record batches (<= READ_BATCH rows) of one row group, as pyarrow Tables."""
    pf = handle or pq.ParquetFile(unit.file)
    for rb in pf.iter_batches(batch_size=READ_BATCH, row_groups=[unit.group], columns=columns, use_threads=False):
        yield pa.Table.from_batches([rb])


class SplitAssigner:
    """Which rows of a file belong to which split when splits are carved by hash.

    Row r of file f goes to split k where u = SplitMix64(SplitMix64(crc32(basename(f)) + seed)
    + r) / 2**64 falls in the k-th interval of the cumulative ``fractions``.
    """

    def __init__(self, fractions: list[float], seed: int, carved: list[str]):
        self.edges = np.cumsum(fractions)[:-1]
        self.seed, self.carved = seed, carved  # carved: split names, in fraction order

    def split_of(self, unit: Unit, start: int, n: int) -> np.ndarray:
        """int8 [n]: index into ``carved`` of rows start..start+n of ``unit``'s file."""
        key = splitmix64(np.array([zlib.crc32(os.path.basename(unit.file).encode()) + self.seed], dtype=np.uint64))[0]
        r = np.arange(start, start + n, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = splitmix64(r + key)
        u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        return np.searchsorted(self.edges, u, side="right").astype(np.int8)


@dataclass
class SplitSource:
    """Where one split's rows are: row groups plus, for carved splits, a row filter."""

    name: str
    units: list[Unit]
    assigner: SplitAssigner | None = None
    index: int = 0  # this split's index in assigner.carved

    def rows_per_unit(self) -> list[int]:
        if self.assigner is None:
            return [u.rows for u in self.units]
        return [int((self.assigner.split_of(u, u.start, u.rows) == self.index).sum()) for u in self.units]

    def tables(self, unit: Unit, columns: list[str], handle=None):
        """The split's rows of ``unit`` as Tables (record batch by record batch)."""
        off = unit.start
        for t in read_unit(unit, columns, handle):
            n = t.num_rows
            if self.assigner is not None:
                keep = self.assigner.split_of(unit, off, n) == self.index
                t = t.filter(pa.array(keep))
            off += n
            if t.num_rows:
                yield t


# ---- the prepare step --------------------------------------------------------------------------
def _id_values(col):
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


def _mixed_types(name: str, here, other) -> DataError:
    return DataError(f"dataset: id column '{name}' holds {here} values in one training file and {other} in "
                     f"another; write it with one type")


def _id_kind(t: pa.DataType) -> str:
    t = t.value_type if pa.types.is_dictionary(t) else t
    return "integer" if pa.types.is_integer(t) or pa.types.is_boolean(t) else "string"


def _as_kind(col, kind: str | None):
    """A hashed id column in the kind of the training files' ids (``"7"`` in this file, 7 in the
    training files: hashed alike).

    Raises:
        DataError: a value that does not convert (a word where the training ids are integers)."""
    if not kind or pa.types.is_null(col.type) or _id_kind(col.type) == kind:
        return col
    try:
        return _id_values(col).cast(pa.int64() if kind == "integer" else pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(f"holds {col.type} values where the training files hold {kind} ids: "
                        f"{str(e).splitlines()[0]}") from None


class _Counter:
    """Value counts of one column accumulated over record batches (merged every few batches).

    Raises:
        DataError: the column's values have different types in different files (e.g. strings
            in one, integers in another)."""

    def __init__(self, name: str = ""):
        self.name = name
        self.parts: list[pa.Table] = []
        self.size = 0

    def add(self, col) -> None:
        col = _id_values(col)
        if pa.types.is_null(col.type):  # a file where the column is all null: nothing to count
            return
        if self.parts and col.type != self.parts[0].schema.field("v").type:
            raise _mixed_types(self.name, col.type, self.parts[0].schema.field("v").type)
        vc = pc.value_counts(col)
        if isinstance(vc, pa.ChunkedArray):
            vc = vc.combine_chunks()
        vals, cnts = vc.field("values"), vc.field("counts")
        valid = pc.is_valid(vals)
        self.parts.append(pa.table({"v": vals.filter(valid), "c": cnts.filter(valid)}))
        self.size += len(vals)
        if len(self.parts) >= 16:
            self.parts = [self.merged()]

    def merged(self) -> pa.Table:
        if not self.parts:
            return pa.table({"v": pa.array([], pa.int64()), "c": pa.array([], pa.int64())})
        t = pa.concat_tables(self.parts) if len(self.parts) > 1 else self.parts[0]
        if len(self.parts) > 1:
            t = t.group_by("v").aggregate([("c", "sum")]).rename_columns(["v", "c"])
        return t


def _flat(col):
    return pc.list_flatten(col)


def _label_array(col: pa.ChunkedArray | pa.Array, task: dict, where: str) -> np.ndarray:
    try:
        y = np.asarray(pc.cast(col, pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: label column '{task['label']}' of task '{task['name']}' "
                        f"is not numeric ({col.type})") from None
    if task["type"] == "binary":
        bad = ~np.isnan(y) & (y != 0) & (y != 1)
        if bad.any():
            raise DataError(f"{where}: label column '{task['label']}' of binary task '{task['name']}' holds "
                            f"{int(bad.sum())} values other than 0/1 (first: {y[bad][0]:g})")
    elif np.isinf(y).any():
        raise DataError(f"{where}: label column '{task['label']}' of regression task '{task['name']}' holds "
                        f"{int(np.isinf(y).sum())} infinite values")
    return y


def _cache_dir(cfg, sources: dict[str, SplitSource], fingerprint: str) -> Path:
    """The prepare cache of these sources: next to the training files (the folder that holds
    them all), whatever folders the val/test files are in; the key covers every file."""
    train_files = sorted({u.file for u in sources["train"].units})
    return cache.cache_root(train_files, cfg.cache_dir) / f"parquet-{fingerprint}"


def prepare(cfg, spec: dict, sources: dict[str, SplitSource], progress: bool = True) -> dict:
    """Build (or reuse from the cache) the vocabularies, numeric statistics and the data report.

    Returns a dict: ``rows`` {split: n}, ``vocab`` {column: path of its values file or None
    when hashed}, ``sizes`` {column: embedding rows}, ``stats`` {numeric column: {mean, std,
    min, max}}, ``report`` {split: {null_ids, oov_ids, null_labels, positives, rows}}.
    """
    files = sorted({u.file for s in sources.values() for u in s.units})
    key_spec = {
        "schema": spec, "split": list(cfg.split), "split_seed": _split_seed(cfg), "min_count": cfg.min_count,
        "paths": {k: cfg[f"{k}_path"] for k in SPLITS}, "version": 3,
        "footers": [cache.tail_digest(f) for f in files],  # same size and mtime, other content (Parquet footers)
    }
    fp = cache.fingerprint(files, key_spec)
    root = _cache_dir(cfg, sources, fp)
    meta_path = root / "prepare.json"
    if meta_path.exists():
        log.info("parquet: reusing prepared vocabularies and statistics in %s", root)
        return json.loads(meta_path.read_text())

    id_cols = spec["categorical"] + spec["sequences"]
    seq_names = {c["name"] for c in spec["sequences"]}
    counters = {c["name"]: _Counter(c["name"]) for c in id_cols if c["hash_buckets"] is None}
    id_kinds: dict[str, str] = {}  # hashed columns: "integer" or "string", as in the training files
    num = {c["name"]: np.zeros(5) for c in spec["numeric"]}  # n, mean, M2, min, max (after log for norm=log)
    for v in num.values():
        v[3], v[4] = np.inf, -np.inf
    report = {s: {"rows": 0, "null_ids": {c["name"]: 0 for c in id_cols}, "oov_ids": {c["name"]: 0 for c in id_cols},
                  "null_numeric": {c["name"]: 0 for c in spec["numeric"]},
                  "null_labels": {t["name"]: 0 for t in spec["tasks"]},
                  "positives": {t["name"]: 0 for t in spec["tasks"]},
                  "funnel_violations": {t["name"]: 0 for t in spec["tasks"] if t["parent"]}} for s in sources}
    columns = all_columns(spec)

    def label_pass(split: str, t: pa.Table, rep: dict) -> None:
        rep["rows"] += t.num_rows
        ys = {}
        for task in spec["tasks"]:
            y = ys[task["name"]] = _label_array(t.column(task["label"]), task, f"{split} split")
            rep["null_labels"][task["name"]] += int(np.isnan(y).sum())
            if task["type"] == "binary":
                rep["positives"][task["name"]] += int((y == 1).sum())
        for task in spec["tasks"]:  # child positive while the parent is 0 (see funnel_violations)
            if task["parent"]:
                rep["funnel_violations"][task["name"]] += int(((ys[task["name"]] > 0) & (ys[task["parent"]] == 0)).sum())

    train = sources["train"]
    total = sum(u.rows for u in train.units)
    with _progress(total=total, desc="prepare: vocabularies and statistics (train)", unit="row",
                   disable=not progress, mininterval=1.0) as bar:
        for unit in train.units:
            with in_file(unit.file):
                for t in train.tables(unit, columns):
                    rep = report["train"]
                    label_pass("train", t, rep)
                    for c in id_cols:
                        col = t.column(c["name"])
                        if c["name"] in seq_names:
                            _check_list(col, c["name"])
                            rep["null_ids"][c["name"]] += int(col.null_count) + int(_flat(col).null_count)
                            col = _flat(col)
                        else:
                            _check_scalar(col, c["name"])
                            rep["null_ids"][c["name"]] += int(col.null_count)
                        if c["name"] in counters:
                            counters[c["name"]].add(col)
                        elif not pa.types.is_null(col.type):  # hashed: the values' type is part of the hash
                            kind = id_kinds.setdefault(c["name"], _id_kind(col.type))
                            if _id_kind(col.type) != kind:
                                raise _mixed_types(c["name"], col.type, f"{kind} ids")
                    for c in spec["numeric"]:
                        x = _numeric(t.column(c["name"]), c["name"])
                        nan = np.isnan(x)
                        rep["null_numeric"][c["name"]] += int(nan.sum())
                        x = x[~nan]
                        if c["norm"] == "log":
                            x = np.sign(x) * np.log1p(np.abs(x))
                        if len(x):
                            _merge_moments(num[c["name"]], x)
            bar.update(unit.rows)

    root.mkdir(parents=True, exist_ok=True)
    vocabs, sizes, vocab_files = {}, {}, {}
    for c in id_cols:
        name = c["name"]
        if c["hash_buckets"] is not None:
            sizes[name] = int(c["hash_buckets"]) + NUM_RESERVED_IDS
            vocab_files[name] = None
            continue
        counts = counters[name].merged()
        mc = c["min_count"] or cfg.min_count
        keep = pc.greater_equal(counts.column("c"), mc)
        kept = counts.filter(keep)
        order = pc.sort_indices(kept, sort_keys=[("c", "descending"), ("v", "ascending")])
        values = kept.column("v").take(order).combine_chunks() if kept.num_rows else counts.column("v").combine_chunks()[:0]
        report["train"]["oov_ids"][name] = int(pc.sum(counts.filter(pc.invert(keep)).column("c")).as_py() or 0)
        fname = f"vocab-{len(vocab_files):03d}.parquet"
        cache.cached_file(root / fname, lambda tmp, v=values: pq.write_table(pa.table({"value": v}), tmp))
        vocabs[name] = Vocabulary(values)
        vocab_files[name] = fname
        sizes[name] = vocabs[name].size
    stats = {}
    for c in spec["numeric"]:
        n, mean, m2, lo, hi = num[c["name"]]
        var = m2 / n if n else 1.0
        stats[c["name"]] = {"mean": mean, "std": math.sqrt(var) if var > 0 else 1.0,
                            "min": float(lo) if n else 0.0, "max": float(hi) if n else 1.0}

    # val/test: nulls, out-of-vocabulary ids and labels (one pass, by record batch)
    for split in [s for s in sources if s != "train"]:
        src = sources[split]
        with _progress(total=sum(u.rows for u in src.units), desc=f"prepare: checking {split}", unit="row",
                       disable=not progress, mininterval=1.0) as bar:
            rep = report[split]
            for unit in src.units:
                with in_file(unit.file):
                    for t in src.tables(unit, columns):
                        label_pass(split, t, rep)
                        for c in id_cols:
                            col = t.column(c["name"])
                            if c["name"] in seq_names:
                                _check_list(col, c["name"])
                                rep["null_ids"][c["name"]] += int(col.null_count)
                                col = _flat(col)
                            else:
                                _check_scalar(col, c["name"])
                            try:
                                if c["name"] in vocabs:
                                    _, nulls, oov = vocabs[c["name"]].encode(col)
                                    rep["oov_ids"][c["name"]] += oov
                                else:  # hashed: converted as the encoder will, so that a bad value fails here
                                    nulls = int(_as_kind(col, id_kinds.get(c["name"])).null_count)
                            except DataError as e:
                                raise DataError(f"{split} split: column '{c['name']}': {e}") from None
                            rep["null_ids"][c["name"]] += nulls
                        for c in spec["numeric"]:
                            rep["null_numeric"][c["name"]] += int(np.isnan(_numeric(t.column(c["name"]), c["name"])).sum())
                bar.update(unit.rows)
    meta = {"rows": {s: report[s]["rows"] for s in sources}, "vocab": vocab_files, "sizes": sizes, "stats": stats,
            "id_kinds": id_kinds,
            "report": report, "fingerprint": fp}
    cache.cached_file(meta_path, lambda tmp: open(tmp, "w").write(json.dumps(meta, indent=1)))
    return meta


@contextlib.contextmanager
def _progress(**kw):
    """A tqdm bar that is cleared, not left half-drawn, when the block raises (so the one-line
    error does not share the bar's line)."""
    from tqdm import tqdm

    bar = tqdm(**kw)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        bar.close()
        raise
    bar.close()


def _check_scalar(col, name: str) -> None:
    if pa.types.is_nested(col.type):
        raise DataError(f"dataset: categorical column '{name}' holds {col.type} values; a list of ids belongs "
                        f"under sequences")


def _check_list(col, name: str) -> None:
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
        raise DataError(f"dataset: sequence column '{name}' is not a list column ({col.type})")


def _merge_moments(s: np.ndarray, x: np.ndarray) -> None:
    """Fold the values ``x`` into ``s`` = [n, mean, M2, min, max] (Chan, Golub and LeVeque's
    pairwise update: exact for large-mean columns such as timestamps, where sum(x^2)/n - mean^2
    cancels catastrophically)."""
    n, nb = s[0], len(x)
    mb = x.mean()
    delta = mb - s[1]
    s[0] = n + nb
    s[1] += delta * nb / s[0]
    s[2] += ((x - mb) ** 2).sum() + delta * delta * n * nb / s[0]
    s[3], s[4] = min(s[3], x.min()), max(s[4], x.max())


def _numeric(col, name: str) -> np.ndarray:
    """A numeric column as a writable float64 array; nulls and non-finite values (inf, -inf,
    NaN) are NaN, i.e. missing: counted and filled like nulls, never into the statistics."""
    try:
        x = np.array(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64, copy=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"dataset: numeric column '{name}' is not numeric ({col.type})") from None
    x[np.isinf(x)] = np.nan
    return x


def all_columns(spec: dict) -> list[str]:
    cols = [c["name"] for k in ("categorical", "sequences", "numeric") for c in spec[k]]
    return cols + [t["label"] for t in spec["tasks"] if t["label"] not in cols]


# ---- encoding ----------------------------------------------------------------------------------
class Encoder:
    """Turns record batches of the raw columns into the blocks of a batch, with the prepared
    vocabularies and statistics. Columnar throughout (pyarrow/numpy), no per-row Python.

    ``encode(table)`` returns numpy arrays: ``sparse`` int64 [n, F_cat], ``seq`` int64
    [n, sum(max_len)], ``dense`` float32 [n, F_num], ``labels`` float32 [n, T] (NaN = null).
    """

    def __init__(self, spec: dict, prep: dict, root):
        self.spec = spec
        self.columns = all_columns(spec)
        self.vocabs = {}
        for name, f in prep["vocab"].items():
            if f is not None:
                self.vocabs[name] = Vocabulary(pq.read_table(os.path.join(root, f)).column("value").combine_chunks())
        self.stats = prep["stats"]
        self.id_kinds = prep.get("id_kinds", {})
        self.salts = {c["name"]: zlib.crc32(c["name"].encode()) for c in spec["categorical"] + spec["sequences"]}

    def transform(self, tbl: pa.Table, name: str = "data", labels_required: bool = True):
        """Encode a whole raw table (``mode=eval``/``predict`` on a file, see
        :mod:`mtl_train.train.infer`) into a :class:`Table`.

        Returns:
            (Table, {}). Label columns absent from ``tbl`` give NaN labels unless
            ``labels_required``.

        Raises:
            DataError: a feature column (or, when required, a label column) is missing.
        """
        import torch

        have = set(tbl.column_names)
        features = [c["name"] for k in ("categorical", "sequences", "numeric") for c in self.spec[k]]
        labels = [t["label"] for t in self.spec["tasks"]]
        for c in features + (labels if labels_required else []):
            if c not in have:
                raise DataError(f"{name}: column '{c}' not found")
        n = tbl.num_rows
        for c in labels:
            if c not in have:
                tbl = tbl.append_column(c, pa.array(np.full(n, np.nan)))
        enc = self.encode(tbl)
        return Table(torch.from_numpy(enc["sparse"]), torch.from_numpy(enc["dense"]), torch.from_numpy(enc["labels"]),
                     {}, torch.from_numpy(enc["seq"])), {}

    def _ids(self, col, c: dict) -> np.ndarray:
        try:
            if c["hash_buckets"] is not None:
                col = _as_kind(col, getattr(self, "id_kinds", {}).get(c["name"]))  # encoders pickled before id_kinds
                return hash_ids(col, int(c["hash_buckets"]), self.salts[c["name"]])[0]
            return self.vocabs[c["name"]].encode(col)[0]
        except DataError as e:
            raise DataError(f"dataset: column '{c['name']}': {e}") from None

    def encode(self, t: pa.Table) -> dict[str, np.ndarray]:
        n, spec = t.num_rows, self.spec
        sparse = np.empty((n, len(spec["categorical"])), dtype=np.int64)
        for j, c in enumerate(spec["categorical"]):
            _check_scalar(t.column(c["name"]), c["name"])
            sparse[:, j] = self._ids(t.column(c["name"]), c)
        width = sum(c["max_len"] for c in spec["sequences"])
        seq = np.zeros((n, width), dtype=np.int64)
        at = 0
        for c in spec["sequences"]:
            col = t.column(c["name"])
            if isinstance(col, pa.ChunkedArray):
                col = col.combine_chunks()
            _check_list(col, c["name"])
            lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
            ids = self._ids(_flat(col), c)  # list_flatten skips null lists, keeps null elements
            row = np.repeat(np.arange(n), lengths)
            starts = np.cumsum(lengths) - lengths
            pos = np.arange(len(ids)) - np.repeat(starts, lengths)
            keep = pos < c["max_len"]  # the first max_len ids of each list
            seq[row[keep], at + pos[keep]] = ids[keep]
            at += c["max_len"]
        dense = np.empty((n, len(spec["numeric"])), dtype=np.float32)
        for j, c in enumerate(spec["numeric"]):
            x = _numeric(t.column(c["name"]), c["name"])
            st = self.stats[c["name"]]
            fill = fill_value(c)
            nan = np.isnan(x)
            if c["norm"] == "log":
                x = np.sign(x) * np.log1p(np.abs(x))
            if fill == "zero":
                x[nan] = 0.0
            elif fill != "mean":
                x[nan] = np.sign(fill) * np.log1p(abs(fill)) if c["norm"] == "log" else fill
            if c["norm"] in ("standard", "log"):
                x = (x - st["mean"]) / st["std"]
            elif c["norm"] == "minmax":
                x = (x - st["min"]) / ((st["max"] - st["min"]) or 1.0)
            if fill == "mean":  # the training mean: 0 after standardising
                x[nan] = 0.0 if c["norm"] in ("standard", "log") else (
                    (st["mean"] - st["min"]) / ((st["max"] - st["min"]) or 1.0) if c["norm"] == "minmax" else st["mean"])
            dense[:, j] = x
        labels = np.empty((n, len(spec["tasks"])), dtype=np.float32)
        for j, task in enumerate(spec["tasks"]):
            labels[:, j] = _label_array(t.column(task["label"]), task, "dataset")
        return {"sparse": sparse, "seq": seq, "dense": dense, "labels": labels}


# ---- the dataset loader ------------------------------------------------------------------------
def _split_seed(cfg) -> int:
    return 0 if cfg.split_seed is None else int(cfg.split_seed)


def make_sources(cfg, spec: dict) -> dict[str, SplitSource]:
    """Row groups of each split; splits without a path carved from the train files by hash.

    Raises:
        ConfigError: no train_path, or bad split fractions.
        DataError: missing files or columns.
    """
    if not cfg.train_path:
        raise ConfigError("dataset.train_path: required for dataset=parquet (a Parquet file, directory or glob)")
    columns = all_columns(spec)
    train_units = row_groups(resolve_files(cfg.train_path, "train_path"), columns)
    carved = [s for s in ("val", "test") if not cfg[f"{s}_path"]]
    sources = {}
    if carved:
        fr = [float(x) for x in cfg.split]
        if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0 or fr[0] <= 0:
            raise ConfigError(f"dataset.split: need three fractions (train, val, test) summing to 1, got {fr}")
        names = ["train", "val", "test"]
        for s in carved:
            if fr[names.index(s)] <= 0:
                raise ConfigError(f"dataset.split: the {s} fraction is 0 and dataset.{s}_path is not set")
        # splits with their own files take no rows of the train files
        eff = [f if n == "train" or n in carved else 0.0 for n, f in zip(names, fr)]
        assigner = SplitAssigner([f / sum(eff) for f in eff], _split_seed(cfg), names)
        sources["train"] = SplitSource("train", train_units, assigner, 0)
        for s in carved:
            sources[s] = SplitSource(s, train_units, assigner, names.index(s))
    else:
        sources["train"] = SplitSource("train", train_units)
    for s in ("val", "test"):
        if cfg[f"{s}_path"]:
            sources[s] = SplitSource(s, row_groups(resolve_files(cfg[f"{s}_path"], f"{s}_path"), columns))
    return sources


def load(cfg, seed: int) -> DatasetBundle:
    """Build the parquet dataset (see the module docstring).

    Raises:
        ConfigError: a bad schema or option. DataError: missing files/columns, bad labels.
    """
    from mtl_train.data.stream import StreamSplit, read_table

    if cfg.mode not in ("auto", "memory", "stream"):
        raise ConfigError(f"dataset.mode: '{cfg.mode}' is not one of auto, memory, stream")
    spec = load_schema(cfg)
    sources = make_sources(cfg, spec)
    prep = prepare(cfg, spec, sources, progress=cfg.progress)
    root = _cache_dir(cfg, sources, prep["fingerprint"])
    enc = Encoder(spec, prep, root)
    sizes = prep["sizes"]
    schema = FeatureSchema(
        sparse=[SparseFeature(c["name"], sizes[c["name"]]) for c in spec["categorical"]],
        dense=[DenseFeature(c["name"]) for c in spec["numeric"]],
        tasks=[Task(t["name"], t["label"], t["type"], t["parent"]) for t in spec["tasks"]],
        sequence=[SequenceFeature(c["name"], sizes[c["name"]], int(c["max_len"]), c["pooling"]) for c in spec["sequences"]],
        encoders=enc,
    )
    row_bytes = 8 * (len(schema.sparse) + schema.seq_width) + 4 * (len(schema.dense) + len(schema.tasks))
    budget, used, splits, modes = memory_budget(cfg.memory_budget_mb), 0, {}, {}
    for name in sorted(sources, key=lambda s: prep["rows"][s]):  # smallest split first
        need = prep["rows"][name] * row_bytes
        in_memory = cfg.mode == "memory" or (cfg.mode == "auto" and used + need <= budget)
        if in_memory:
            used += need
            splits[name] = read_table(sources[name], enc, prep["rows"][name], spec)
        else:
            splits[name] = StreamSplit(sources[name], enc, prep["rows"][name], cfg)
        modes[name] = "memory" if in_memory else "stream"
    if "test" not in splits:  # pragma: no cover - make_sources always defines all three
        raise ConfigError("dataset: no test split")
    rep = prep["report"]
    for split, r in rep.items():
        parts = [f"{kind.replace('_', ' ')}: " + ", ".join(f"{k}={v}" for k, v in r[kind].items() if v)
                 for kind in ("null_ids", "oov_ids", "null_numeric", "null_labels") if any(r[kind].values())]
        log.info("parquet %s: %d rows (%s); %s", split, r["rows"], modes[split],
                 "; ".join(parts) if parts else "no null or out-of-vocabulary values")
    protocol = (f"parquet train={cfg.train_path} val={cfg.val_path or 'carved'} test={cfg.test_path or 'carved'} "
                f"(modes {modes})")
    return DatasetBundle(schema, splits["train"], splits["val"], splits["test"],
                         {"protocol": protocol, "report": rep, "modes": modes, "row_bytes": row_bytes})
