"""The prepare step: one pass over the training rows, record batch by record batch, builds the
vocabularies (value counts) and numeric statistics; a second pass over the val/test rows counts
their nulls and out-of-vocabulary ids. Its outputs (vocabulary files and ``prepare.json``) are
cached (:mod:`mtl_train.data.cache`) under a key of the files (path, size, mtime, Parquet
footer), the schema, the split assignment and the options that shape them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtl_train.data import cache
from mtl_train.data.columns import (
    as_kind,
    check_list,
    check_scalar,
    flat,
    id_kind,
    id_values,
    label_array,
    mixed_types,
    numeric,
    weight_array,
)
from mtl_train.data.encode import Vocabulary
from mtl_train.data.files import in_file
from mtl_train.data.schema import NUM_RESERVED_IDS
from mtl_train.data.sources import SplitSource
from mtl_train.data.spec import ParquetSchema

log = logging.getLogger(__name__)

VERSION = 5


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
        col = id_values(col)
        if pa.types.is_null(col.type):  # a file where the column is all null: nothing to count
            return
        if self.parts and col.type != self.parts[0].schema.field("v").type:
            raise mixed_types(self.name, col.type, self.parts[0].schema.field("v").type)
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


class _Moments:
    """Training statistics of one numeric column: {mean, std, min, max} of its non-missing
    values. ``exact``: numpy's mean and std of all values at once (O(rows) memory); otherwise a
    running [n, mean, M2, min, max] folded batch by batch with Chan, Golub and LeVeque's
    pairwise update (exact for large-mean columns such as timestamps, where
    sum(x^2)/n - mean^2 cancels catastrophically)."""

    def __init__(self, exact: bool):
        self.exact = exact
        self.parts: list[np.ndarray] = []
        self.s = np.array([0.0, 0.0, 0.0, np.inf, -np.inf])

    def add(self, x: np.ndarray) -> None:
        if self.exact:
            self.parts.append(x)
            return
        if not len(x):
            return
        s, n, nb = self.s, self.s[0], len(x)
        mb = x.mean()
        delta = mb - s[1]
        s[0] = n + nb
        s[1] += delta * nb / s[0]
        s[2] += ((x - mb) ** 2).sum() + delta * delta * n * nb / s[0]
        s[3], s[4] = min(s[3], x.min()), max(s[4], x.max())

    def result(self) -> dict[str, float]:
        if self.exact:
            x = np.concatenate(self.parts) if self.parts else np.zeros(0)
            if not len(x):
                return {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0}
            std = float(x.std())
            return {"mean": float(x.mean()), "std": std if std > 0 else 1.0, "min": float(x.min()), "max": float(x.max())}
        n, mean, m2, lo, hi = self.s
        var = m2 / n if n else 1.0
        return {"mean": float(mean), "std": math.sqrt(var) if var > 0 else 1.0,
                "min": float(lo) if n else 0.0, "max": float(hi) if n else 1.0}


@contextlib.contextmanager
def _progress(**kw):
    """A tqdm bar that is cleared, not left half-drawn, when the block raises (so the one-line
    error does not share the bar's line)."""
    from mtl_train.system import progress_bar

    bar = progress_bar(**kw)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        bar.close()
        raise
    bar.close()


def _new_report(spec: ParquetSchema, splits) -> dict:
    ids = [c.name for c in spec.id_columns]
    weighted = [t.name for t in spec.tasks if t.weight]
    return {s: {"rows": 0, "null_ids": dict.fromkeys(ids, 0), "oov_ids": dict.fromkeys(ids, 0),
                "null_numeric": {c.name: 0 for c in spec.numeric},
                "null_labels": {t.name: 0 for t in spec.tasks},
                "positives": {t.name: 0 for t in spec.tasks},
                "funnel_violations": {t.name: 0 for t in spec.tasks if t.parent},
                **({"null_weights": dict.fromkeys(weighted, 0)} if weighted else {})} for s in splits}


def _count_labels(spec: ParquetSchema, split: str, t: pa.Table, rep: dict) -> dict[str, np.ndarray]:
    """Rows, null labels, null weights, positives and funnel violations (a child positive
    while its parent is 0) of one record batch; returns {task: labels float32 [n]}, NaN where
    the label or the task's weight is null (as the encoder masks them)."""
    rep["rows"] += t.num_rows
    ys = {}
    for task in spec.tasks:
        y = ys[task.name] = label_array(t.column(task.label), task, f"{split} split")
        rep["null_labels"][task.name] += int(np.isnan(y).sum())
        if task.weight:
            w = np.isnan(weight_array(t.column(task.weight), task, f"{split} split"))
            rep["null_weights"][task.name] += int(w.sum())
            y = ys[task.name] = np.where(w, np.float32(np.nan), y)
        if task.type == "binary":
            rep["positives"][task.name] += int((y == 1).sum())
    for task in spec.tasks:
        if task.parent:
            rep["funnel_violations"][task.name] += int(((ys[task.name] > 0) & (ys[task.parent] == 0)).sum())
    return ys


def _ids_of(t: pa.Table, c, seq_names: set, rep: dict, train: bool):
    """Column ``c`` of a record batch as a flat id array, its nulls counted into ``rep`` (null
    lists and, in train, null ids inside lists; outside train the encoder counts those)."""
    col = t.column(c.name)
    if c.name in seq_names:
        check_list(col, c.name)
        rep["null_ids"][c.name] += int(col.null_count) + (int(flat(col).null_count) if train else 0)
        return flat(col)
    check_scalar(col, c.name)
    if train:
        rep["null_ids"][c.name] += int(col.null_count)
    return col


class _TrainPass:
    """The first pass: value counts, id kinds of hashed columns, numeric statistics."""

    def __init__(self, spec: ParquetSchema):
        self.spec = spec
        self.seq_names = {c.name for c in spec.sequences}
        self.counters = {c.name: _Counter(c.name) for c in spec.id_columns if c.hash_buckets is None}
        self.id_kinds: dict[str, str] = {}  # hashed columns: "integer" or "string", as in the training files
        self.moments = {c.name: _Moments(c.stats == "exact") for c in spec.numeric}  # after log for norm=log
        # regression labels (where present): the fit of their transform and the scale warning
        self.label_moments = {t.name: _Moments(False) for t in spec.tasks if t.type == "regression"}

    def add(self, t: pa.Table, rep: dict) -> None:
        ys = _count_labels(self.spec, "train", t, rep)
        for name, m in self.label_moments.items():
            y = ys[name].astype(np.float64)
            m.add(y[~np.isnan(y)])
        for c in self.spec.id_columns:
            col = _ids_of(t, c, self.seq_names, rep, train=True)
            if c.name in self.counters:
                self.counters[c.name].add(col)
            elif not pa.types.is_null(col.type):  # hashed: the values' type is part of the hash
                kind = self.id_kinds.setdefault(c.name, id_kind(col.type))
                if id_kind(col.type) != kind:
                    raise mixed_types(c.name, col.type, f"{kind} ids")
        for c in self.spec.numeric:
            x = numeric(t.column(c.name), c.name)
            nan = np.isnan(x)
            rep["null_numeric"][c.name] += int(nan.sum())
            x = x[~nan]
            if c.norm == "log":
                x = np.sign(x) * np.log1p(np.abs(x))
            self.moments[c.name].add(x)

    def vocabularies(self, root: Path, min_count: int, rep: dict) -> tuple[dict, dict, dict]:
        """Write each vocabulary (values seen at least min_count times, by decreasing count,
        ties by value) to ``root``; returns ({column: Vocabulary}, {column: size}, {column:
        file name or None when hashed}), and counts the train rows given the OOV id."""
        vocabs, sizes, files = {}, {}, {}
        for c in self.spec.id_columns:
            if c.hash_buckets is not None:
                sizes[c.name], files[c.name] = int(c.hash_buckets) + NUM_RESERVED_IDS, None
                continue
            counts = self.counters[c.name].merged()
            keep = pc.greater_equal(counts.column("c"), c.min_count or min_count)
            kept = counts.filter(keep)
            order = pc.sort_indices(kept, sort_keys=[("c", "descending"), ("v", "ascending")])
            values = (kept.column("v").take(order).combine_chunks() if kept.num_rows
                      else counts.column("v").combine_chunks()[:0])
            rep["oov_ids"][c.name] = int(pc.sum(counts.filter(pc.invert(keep)).column("c")).as_py() or 0)
            fname = f"vocab-{len(files):03d}.parquet"
            cache.cached_file(root / fname, lambda tmp, v=values: pq.write_table(pa.table({"value": v}), tmp))
            vocabs[c.name] = Vocabulary(values)
            files[c.name], sizes[c.name] = fname, vocabs[c.name].size
        return vocabs, sizes, files


def _check_split(spec: ParquetSchema, src: SplitSource, vocabs: dict, id_kinds: dict, rep: dict, progress: bool) -> None:
    """The val/test pass: labels, nulls and out-of-vocabulary ids of split ``src``."""
    from mtl_train.errors import DataError

    seq_names = {c.name for c in spec.sequences}
    columns = spec.columns()
    with _progress(total=sum(u.rows for u in src.units), desc=f"prepare: checking {src.name}", unit="row",
                   disable=not progress, mininterval=1.0) as bar:
        for unit in src.units:
            with in_file(unit.file):
                for t in src.tables(unit, columns):
                    _count_labels(spec, src.name, t, rep)
                    for c in spec.id_columns:
                        col = _ids_of(t, c, seq_names, rep, train=False)
                        try:
                            if c.name in vocabs:
                                _, nulls, oov = vocabs[c.name].encode(col)
                                rep["oov_ids"][c.name] += oov
                            else:  # hashed: converted as the encoder will, so that a bad value fails here
                                nulls = int(as_kind(col, id_kinds.get(c.name)).null_count)
                        except DataError as e:
                            raise DataError(f"{src.name} split: column '{c.name}': {e}") from None
                        rep["null_ids"][c.name] += nulls
                    for c in spec.numeric:
                        rep["null_numeric"][c.name] += int(np.isnan(numeric(t.column(c.name), c.name)).sum())
            bar.update(unit.rows)


def prepare(spec: ParquetSchema, sources: dict[str, SplitSource], folder: Path, key: dict, min_count: int = 1,
            progress: bool = True, prefix: str = "parquet") -> tuple[dict, Path]:
    """Build (or reuse from the cache) the vocabularies, numeric statistics and the data report.

    Args:
        spec: the column schema. sources: the splits' rows ({split: SplitSource}, with train).
        folder: where the cache folder ``<prefix>-<key>`` goes. key: the options that shape
            the outputs besides the files, schema and split assignment (part of the key).
        min_count: the vocabulary threshold of the id columns that set none.

    Returns:
        (meta, cache folder). meta: ``rows`` {split: n}, ``vocab`` {column: its values file
        in the cache folder or None when hashed}, ``sizes`` {column: embedding rows}, ``stats``
        {numeric column: {mean, std, min, max}}, ``id_kinds`` {hashed column: integer or
        string}, ``report`` {split: {rows, null_ids, oov_ids, null_numeric, null_labels,
        positives, funnel_violations, and null_weights {task: rows whose weight is null} where a
        task has a weight column}}, ``fingerprint``.

    Raises:
        DataError: a bad value (see :mod:`mtl_train.data.columns`), naming file and column.
    """
    files = sorted({u.file for s in sources.values() for u in s.units})
    key_spec = {"schema": dataclasses.asdict(spec), **key, "min_count": min_count, "version": VERSION,
                "sources": [s.key() for s in sources.values()],
                "footers": [cache.tail_digest(f) for f in files]}  # same size and mtime, other content
    fp = cache.fingerprint(files, key_spec)
    root = Path(folder) / f"{prefix}-{fp}"
    meta_path = root / "prepare.json"
    if meta_path.exists():
        log.info("%s: reusing prepared vocabularies and statistics in %s", prefix, root)
        return json.loads(meta_path.read_text()), root
    report = _new_report(spec, sources)
    first, train, columns = _TrainPass(spec), sources["train"], spec.columns()
    with _progress(total=sum(u.rows for u in train.units), desc="prepare: vocabularies and statistics (train)",
                   unit="row", disable=not progress, mininterval=1.0) as bar:
        for unit in train.units:
            with in_file(unit.file):
                for t in train.tables(unit, columns):
                    first.add(t, report["train"])
            bar.update(unit.rows)
    root.mkdir(parents=True, exist_ok=True)
    vocabs, sizes, vocab_files = first.vocabularies(root, min_count, report["train"])
    stats = {name: m.result() for name, m in first.moments.items()}
    label_stats = {name: m.result() for name, m in first.label_moments.items()}
    for split in [s for s in sources if s != "train"]:
        _check_split(spec, sources[split], vocabs, first.id_kinds, report[split], progress)
    meta = {"rows": {s: report[s]["rows"] for s in sources}, "vocab": vocab_files, "sizes": sizes, "stats": stats,
            "label_stats": label_stats, "id_kinds": first.id_kinds, "report": report, "fingerprint": fp}
    cache.cached_file(meta_path, lambda tmp: open(tmp, "w").write(json.dumps(meta, indent=1)))
    return meta, root
