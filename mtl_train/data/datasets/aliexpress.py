"""AliExpress search logs (Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce by
Exploiting Task Relationships in the Label Space", CIKM 2020; the CSV schema of MTReclib and the
AITM experiments): click -> conversion.

Columns: ``search_id`` (dropped, as in MTReclib), ``categorical_1..16`` (label-encoded ids; a
vocabulary each, built on train), ``numerical_1..63`` (already normalised; standardised again
with training statistics), labels ``click`` and ``conversion`` (parent ``click``).

Prepare: each CSV is converted once to Parquet in the cache. Split: the release has a train and
a test file; val is a seeded ``val_fraction`` of the train file
(``numpy.random.default_rng(split_seed).permutation``, ``split_seed`` null = the run's seed),
the test file is test.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from mtl_train.data.datasets.common import column_schema, open_converted, prepared_parquet, read_columns, require_file
from mtl_train.data.schema import DatasetBundle, Task
from mtl_train.data.sources import permuted_sources
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register


@dataclass
class AliExpressData:
    name: str = "aliexpress"
    train_path: Optional[str] = param(None, "train CSV of one country", path=True)
    test_path: Optional[str] = param(None, "test CSV of the same country", path=True)
    val_fraction: float = param(0.1, "val = a seeded fraction of the train file", positive=True)
    split_seed: Optional[int] = param(None, "null: use the run's seed")
    min_count: int = param(1, "values seen fewer times in train map to the out-of-vocabulary id", positive=True)
    max_rows: Optional[int] = param(None, "read only the first N rows of each file (quick checks)", positive=True)
    cache_dir: Optional[str] = param(None, "null: next to the data if writable, else ~/.cache/mtl-train", path=True)


log = logging.getLogger(__name__)

CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERIC = [f"numerical_{i}" for i in range(1, 64)]
LABELS = ["click", "conversion"]
TASKS = [Task("click", "click", "binary"), Task("conversion", "conversion", "binary", parent="click")]


def convert_file(path: str) -> pa.Table:
    """One AliExpress-format CSV as raw columns (training's conversion; eval/predict files too).

    Raises:
        DataError: the file is unreadable or lacks a column."""
    types = {c: pa.int64() for c in CATEGORICAL}
    types.update({c: pa.float64() for c in NUMERIC})
    types.update({c: pa.int8() for c in LABELS})
    return read_columns(path, types, CATEGORICAL + NUMERIC + LABELS)


@register("dataset", "aliexpress", AliExpressData)
def load(cfg, seed: int) -> DatasetBundle:
    """Load and encode the AliExpress train/test CSVs (see the module docstring).

    Raises:
        ConfigError: a path is not set or ``val_fraction`` is not in (0, 1).
        DataError: a file is missing or lacks a column.
    """
    train_path = require_file(cfg.train_path, "dataset.train_path")
    test_path = require_file(cfg.test_path, "dataset.test_path")
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"dataset.val_fraction: must be in (0, 1), got {cfg.val_fraction}")
    train = prepared_parquet("aliexpress", [train_path], {}, cfg.cache_dir, lambda: convert_file(train_path))
    test = prepared_parquet("aliexpress", [test_path], {}, cfg.cache_dir, lambda: convert_file(test_path))
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    spec = column_schema(CATEGORICAL, NUMERIC, TASKS)
    sources = permuted_sources(train, spec.columns(), {"train": 1 - cfg.val_fraction, "val": cfg.val_fraction},
                               split_seed, cfg.max_rows, origin=f"{train_path} (dataset.train_path)",
                               by=f"dataset.val_fraction={cfg.val_fraction:g}")
    sources.update(permuted_sources(test, spec.columns(), {"test": 1.0}, split_seed, cfg.max_rows,
                                    origin=f"{test_path} (dataset.test_path)"))
    protocol = (f"train {train_path} less a seeded {cfg.val_fraction:g} for val (seed {split_seed}); "
                f"test {test_path}")
    return open_converted("aliexpress", spec, sources, os.path.dirname(train), cfg.min_count, protocol)
