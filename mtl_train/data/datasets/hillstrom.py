"""Kevin Hillstrom's MineThatData E-Mail Analytics challenge (2008): 64,000 customers who got a
men's, a women's or no e-mail, and their next two weeks: visit -> conversion (-> spend).

Tasks (``dataset.tasks``, in funnel order): ``visit`` (binary), ``conversion`` (binary, parent
``visit``), ``spend`` (optional regression task, label log1p(spend in $), no parent: it trains
with MSE beside the funnel and is reported as mse/r2). Features: the customer columns and the
campaign segment - categorical ``recency`` (months, 1-12), ``history_segment``, ``mens``,
``womens``, ``zip_code``, ``newbie``, ``channel``, ``segment``; numeric ``recency``,
``history`` (standardised with training statistics). The label columns never are features.

Prepare: the CSV is converted once to Parquet in the cache (:mod:`mtl_train.data.cache`), then
read by the Parquet path (:func:`mtl_train.data.datasets.common.open_converted`).
Split: a seeded random 60/20/20 train/val/test partition (``dataset.split``,
``numpy.random.default_rng(split_seed).permutation``; ``split_seed`` null = the run's seed),
vocabularies and statistics fitted on train only.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc

from mtl_train.data.datasets.common import column_schema, open_converted, prepared_parquet, read_columns, require_file
from mtl_train.data.schema import DatasetBundle, Task
from mtl_train.data.sources import SPLITS, check_fractions, permuted_sources
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register


@dataclass
class HillstromData:
    name: str = "hillstrom"
    path: Optional[str] = param(None, "hillstrom.csv", path=True)
    tasks: List[str] = param(doc="visit, conversion, spend (regression: log1p(spend in $))",
                             factory=lambda: ["visit", "conversion"])
    split: List[float] = param(doc="train/val/test fractions", factory=lambda: [0.6, 0.2, 0.2])
    split_seed: Optional[int] = param(None, "null: use the run's seed")
    min_count: int = param(1, "values seen fewer times in train map to the out-of-vocabulary id", positive=True)
    max_rows: Optional[int] = param(None, "read only the first N rows of each file (quick checks)", positive=True)
    cache_dir: Optional[str] = param(None, "null: next to the data if writable, else ~/.cache/mtl-train", path=True)


log = logging.getLogger(__name__)

CATEGORICAL = ["recency", "history_segment", "mens", "womens", "zip_code", "newbie", "channel", "segment"]
NUMERIC = ["recency", "history"]
LABELS = ["visit", "conversion", "spend"]
TASKS = {
    "visit": Task("visit", "visit", "binary"),
    "conversion": Task("conversion", "conversion", "binary", parent="visit"),
    "spend": Task("spend", "log1p_spend", "regression"),
}


def convert_file(path: str) -> pa.Table:
    """One Hillstrom-format CSV as raw columns, with the derived ``recency_id`` and
    ``log1p_spend`` (training's conversion; eval/predict files too).

    Raises:
        DataError: the file is unreadable or lacks a column."""
    types = {c: pa.string() for c in ("history_segment", "mens", "womens", "zip_code", "newbie", "channel", "segment")}
    types.update({"recency": pa.int64(), "history": pa.float64(), "visit": pa.int8(), "conversion": pa.int8(),
                  "spend": pa.float64()})
    tbl = read_columns(path, types, list(dict.fromkeys(CATEGORICAL + NUMERIC + LABELS)))
    cols = {c: tbl.column(c) for c in tbl.column_names}
    cols["recency_id"] = pc.cast(tbl.column("recency"), pa.string())
    cols["log1p_spend"] = pc.log1p(tbl.column("spend"))
    return pa.table(cols)


@register("dataset", "hillstrom", HillstromData)
def load(cfg, seed: int) -> DatasetBundle:
    """Load, split and encode the Hillstrom CSV (see the module docstring).

    Raises:
        ConfigError: no path, an unknown task, a task order that breaks the funnel, bad split.
        DataError: the file is missing or lacks a column.
    """
    path = require_file(cfg.path, "dataset.path")
    for name in cfg.tasks:
        if name not in TASKS:
            raise ConfigError(f"dataset.tasks: unknown hillstrom task '{name}' (choose from {list(TASKS)})")
    tasks = [TASKS[n] for n in cfg.tasks]
    names = [t.name for t in tasks]
    tasks = [Task(t.name, t.label, t.type, t.parent if t.parent in names else None) for t in tasks]
    fr = check_fractions(cfg.split)
    raw = prepared_parquet("hillstrom", [path], {}, cfg.cache_dir, lambda: convert_file(path))
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    spec = column_schema(["recency_id" if c == "recency" else c for c in CATEGORICAL], NUMERIC, tasks)
    sources = permuted_sources(raw, spec.columns(), dict(zip(SPLITS, fr)), split_seed, cfg.max_rows,
                               origin=f"{path} (dataset.path)", by=f"dataset.split={fr}")
    protocol = f"{path}: seeded random split {list(fr)} (seed {split_seed})"
    return open_converted("hillstrom", spec, sources, os.path.dirname(raw), cfg.min_count, protocol)
