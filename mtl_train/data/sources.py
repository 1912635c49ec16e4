"""Where each split's rows are: Parquet files, their row groups, and which rows of a file belong
to which split (a seeded hash of the row for ``dataset=parquet``, a seeded permutation for the
named datasets).
"""
from __future__ import annotations

import glob
import hashlib
import os
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl_train.data.hashing import splitmix64
from mtl_train.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
READ_BATCH = 65536
"""Rows per record batch read from a row group."""


def check_fractions(fractions, zero_ok: bool = False) -> list[float]:
    """Three split fractions (train, val, test) summing to 1, as floats: all positive, or with
    ``zero_ok`` a positive train fraction and the others at least 0.

    Raises:
        ConfigError: otherwise (naming ``dataset.split``)."""
    fr = [float(x) for x in fractions]
    if zero_ok:
        if len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) < 0 or fr[0] <= 0:
            raise ConfigError(f"dataset.split: need three fractions (train, val, test) summing to 1, got {fr}")
    elif len(fr) != 3 or abs(sum(fr) - 1) > 1e-6 or min(fr) <= 0:
        raise ConfigError(f"dataset.split: need three positive fractions summing to 1, got {fr}")
    return fr


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """A seeded random partition of range(n) into consecutive chunks of the given fractions.

    The permutation is ``numpy.random.default_rng(seed).permutation(n)``; chunk sizes are
    ``floor(n * f)`` for all but the last chunk, which takes the rest. Each chunk is sorted so
    that rows keep their file order.
    """
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.floor(np.cumsum(fractions)[:-1] * n).astype(int)
    return [np.sort(p) for p in np.split(perm, bounds)]


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

    def key(self) -> list:
        return ["hash", self.edges.tolist(), self.seed]


class RowAssigner:
    """Which rows of a file belong to which split, given row by row: ``rows[file]`` is int8
    [rows of the file], the split index of each row (-1: in no split)."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self.rows = rows

    def split_of(self, unit: Unit, start: int, n: int) -> np.ndarray:
        """int8 [n]: split index of rows start..start+n of ``unit``'s file."""
        return self.rows[unit.file][start:start + n]

    def key(self) -> list:
        h = hashlib.sha256()
        for f in sorted(self.rows):
            h.update(self.rows[f].tobytes())
        return ["rows", h.hexdigest()[:16]]


@dataclass
class SplitSource:
    """Where one split's rows are: row groups plus, for carved splits, a row filter.

    ``origin`` says where the rows come from in the user's terms, to end the sentence
    "<split> split: no rows ..." (e.g. ``in /data/val.parquet (dataset.val_path)``, ``carved
    from /data/train.parquet (dataset.train_path) by dataset.split=[0.8, 0.1, 0.1]``)."""

    name: str
    units: list[Unit]
    assigner: SplitAssigner | RowAssigner | None = None
    index: int = 0  # this split's index in the assigner's splits
    origin: str = ""

    def rows_per_unit(self) -> list[int]:
        if self.assigner is None:
            return [u.rows for u in self.units]
        return [int((self.assigner.split_of(u, u.start, u.rows) == self.index).sum()) for u in self.units]

    def key(self) -> list:
        """What decides this split's rows (besides the files): part of the prepare cache key."""
        return [self.name, self.index, self.assigner.key() if self.assigner is not None else None]

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


def permuted_sources(file: str, columns: list[str], fractions: dict[str, float], seed: int,
                     max_rows: int | None = None, origin: str | None = None,
                     by: str = "dataset.split") -> dict[str, SplitSource]:
    """Splits carved from one Parquet file by a seeded permutation of its first ``max_rows``
    rows (all rows when None): :func:`split_indices` with the fractions of ``fractions``
    ({split name: fraction}, in order); a single split with fraction 1 is the file's head.
    Each split keeps the file's row order.

    ``origin`` names the file as the user gave it (default ``file``, e.g. the CSV behind a
    converted Parquet file, with its config key) and ``by`` what carves it: both go into each
    :attr:`SplitSource.origin`.

    Raises:
        DataError: the file is not Parquet or lacks a column.
    """
    units = row_groups([file], columns)
    total = sum(u.rows for u in units)
    n = total if max_rows is None else min(total, int(max_rows))
    names = list(fractions)
    origin = origin or file
    if max_rows is not None and int(max_rows) < total:
        origin = f"the first dataset.max_rows={int(max_rows)} rows of {origin}"
    if len(names) == 1 and n == total:
        return {names[0]: SplitSource(names[0], units, origin=f"in {origin}")}
    member = np.full(total, -1, dtype=np.int8)
    for k, idx in enumerate(split_indices(n, tuple(fractions.values()), seed)):
        member[idx] = k
    assigner = RowAssigner({file: member})
    origin = f"in {origin}" if len(names) == 1 else f"carved from {origin} by {by}"
    return {name: SplitSource(name, units, assigner, k, origin) for k, name in enumerate(names)}


def _split_seed(cfg) -> int:
    return 0 if cfg.split_seed is None else int(cfg.split_seed)


def make_sources(cfg, columns: list[str]) -> dict[str, SplitSource]:
    """Row groups of each split of a ``dataset=parquet`` config; splits without a path carved
    from the train files by hash (:class:`SplitAssigner`).

    Raises:
        ConfigError: no train_path, or bad split fractions.
        DataError: missing files or columns.
    """
    if not cfg.train_path:
        raise ConfigError("dataset.train_path: required for dataset=parquet (a Parquet file, directory or glob)")
    train_units = row_groups(resolve_files(cfg.train_path, "train_path"), columns)
    carved = [s for s in ("val", "test") if not cfg[f"{s}_path"]]
    sources = {}
    if carved:
        fr = check_fractions(cfg.split, zero_ok=True)
        names = list(SPLITS)
        for s in carved:
            if fr[names.index(s)] <= 0:
                raise ConfigError(f"dataset.split: the {s} fraction is 0 and dataset.{s}_path is not set")
        # splits with their own files take no rows of the train files
        eff = [f if n == "train" or n in carved else 0.0 for n, f in zip(names, fr)]
        assigner = SplitAssigner([f / sum(eff) for f in eff], _split_seed(cfg), names)
        origin = f"carved from {cfg.train_path} (dataset.train_path) by dataset.split={fr}"
        sources["train"] = SplitSource("train", train_units, assigner, 0, origin)
        for s in carved:
            sources[s] = SplitSource(s, train_units, assigner, names.index(s), origin)
    else:
        sources["train"] = SplitSource("train", train_units, origin=f"in {cfg.train_path} (dataset.train_path)")
    for s in ("val", "test"):
        if cfg[f"{s}_path"]:
            sources[s] = SplitSource(s, row_groups(resolve_files(cfg[f"{s}_path"], f"{s}_path"), columns),
                                     origin=f"in {cfg[f'{s}_path']} (dataset.{s}_path)")
    return sources
