"""UCI Census-Income (KDD), the benchmark of the MMoE (Ma et al., KDD 2018) and PLE
(Tang et al., RecSys 2020) papers.

Raw files: 42 fields separated by ", ", no header, gzip or plain (``census-income.data.gz``,
``census-income.test.gz``). Tasks, as in the MMoE paper:

- ``income``: ``income_50k == "50000+."``
- ``marital``: ``marital_stat == "Never married"`` (group 1 auxiliary task)
- ``education``: a college degree or above (group 2 task): Bachelors, Masters, Prof school,
  Doctorate or an Associates degree.

Every label source column (income_50k, marital_stat, education) and the survey weight
``instance_weight`` are left out of the features. ``?`` is a missing value (null id).
``dataset.instance_weight=true`` weights every task's loss by ``instance_weight`` (the number of
people a row stands for in the population: the loss is then the weighted mean
sum w l / sum w over the batch's rows) and adds weighted AUC and logloss to the metrics; off by
default (the papers train unweighted).

Split protocols:

- ``dataset.path`` (one file): a seeded random 60/20/20 train/val/test split
  (``numpy.random.default_rng(dataset.split_seed).permutation``; see
  :func:`mtl_train.data.sources.split_indices`).
- ``dataset.train_path`` + ``dataset.test_path``: the paper's protocol, train on the first
  file, split the second half and half into val and test with the same seeded permutation.

Prepare: the raw files are converted to Parquet in a temporary folder (the census config has
no cache folder) and read by the Parquet path
(:func:`mtl_train.data.datasets.common.open_converted`) into memory.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mtl_train.data.datasets.common import column_schema, open_converted
from mtl_train.data.schema import DatasetBundle, Task
from mtl_train.data.sources import SPLITS, check_fractions, permuted_sources
from mtl_train.errors import ConfigError, DataError
from mtl_train.registry import param, register


@dataclass
class CensusData:
    name: str = "census"
    path: Optional[str] = param(None, "one file, split by a seeded permutation (split)", path=True)
    train_path: Optional[str] = param(None, "or train_path + test_path: the paper's protocol", path=True)
    test_path: Optional[str] = param(None, "split half/half into val and test", path=True)
    tasks: List[str] = param(doc="income, marital, education", factory=lambda: ["income", "marital"])
    split: List[float] = param(doc="train/val/test fractions when path is given", factory=lambda: [0.6, 0.2, 0.2])
    split_seed: Optional[int] = param(None, "null: use the run's seed")
    min_count: int = param(1, "values seen fewer times in train map to the out-of-vocabulary id", positive=True)
    max_rows: Optional[int] = param(None, "read only the first N rows of each file (quick checks)", positive=True)
    instance_weight: bool = param(False, "weight each task's loss (and add weighted metrics) by the survey weight "
                                         "instance_weight")


log = logging.getLogger(__name__)

COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour", "hs_college",
    "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin", "sex", "union_member",
    "unemp_reason", "full_or_part_emp", "capital_gains", "capital_losses", "stock_dividends",
    "tax_filer_stat", "region_prev_res", "state_prev_res", "det_hh_fam_stat", "det_hh_summ",
    "instance_weight", "mig_chg_msa", "mig_chg_reg", "mig_move_reg", "mig_same", "mig_prev_sunbelt",
    "num_emp", "fam_under_18", "country_father", "country_mother", "country_self", "citizenship",
    "own_or_self", "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
]
NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
LABEL_SOURCES = ["income_50k", "marital_stat", "education"]
DROPPED = LABEL_SOURCES + ["instance_weight"]
CATEGORICAL = [c for c in COLUMNS if c not in NUMERIC and c not in DROPPED]

COLLEGE = [
    "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)",
    "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
    "Associates degree-occup /vocational",
    "Associates degree-academic program",
]
TASKS = {
    "income": ("income_50k", lambda t: pc.equal(t.column("income_50k"), "50000+.")),
    "marital": ("marital_stat", lambda t: pc.equal(t.column("marital_stat"), "Never married")),
    "education": ("education", lambda t: pc.is_in(t.column("education"), value_set=pa.array(COLLEGE))),
}


WEIGHT = "instance_weight"


def read_raw(path: str, max_rows: int | None = None, key: str = "dataset.path") -> pa.Table:
    """Read one raw Census-Income file (gzip or plain) into a table of trimmed strings (the
    NUMERIC columns and ``instance_weight`` as float64).

    Raises:
        DataError: the file is missing (naming the config key ``key``), unreadable, or its
            rows do not have 42 fields.
    """
    if not os.path.isfile(path):
        raise DataError(f"{key}: census file not found: {path}")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")
    try:
        tbl = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=COLUMNS, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=",", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        msg = str(e).splitlines()[0]
        raise DataError(f"{path}: not a Census-Income KDD file (42 comma-separated fields): {msg}") from None
    if max_rows is not None:
        tbl = tbl.slice(0, max_rows)
    cols = {}
    for c in COLUMNS:
        col = pc.utf8_trim_whitespace(tbl.column(c))
        col = pc.if_else(pc.equal(col, "?"), pa.scalar(None, pa.string()), col)
        if c in NUMERIC or c == WEIGHT:
            try:
                col = pc.cast(col, pa.float64())
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: column '{c}' is not numeric: {str(e).splitlines()[0]}") from None
        cols[c] = col
    return pa.table(cols)


def _with_labels(tbl: pa.Table, tasks: list[str]) -> pa.Table:
    for name in tasks:
        _, fn = TASKS[name]
        tbl = tbl.append_column(f"label_{name}", pc.cast(fn(tbl), pa.int8()))
    return tbl


def read_file(cfg, path: str) -> pa.Table:
    """One raw Census-Income file with the label columns of ``cfg.tasks`` (for eval/predict).

    Raises:
        DataError: see :func:`read_raw`."""
    return _with_labels(read_raw(path, key="infer.input"), cfg.tasks)


def _origin(path: str, key: str, max_rows: int | None) -> str:
    """A raw file as the user named it, for the messages about its splits."""
    return f"{'the first dataset.max_rows=%d rows of ' % max_rows if max_rows else ''}{path} ({key})"


@register("dataset", "census", CensusData)
def load(cfg, seed: int) -> DatasetBundle:
    """Load Census-Income from ``cfg.path`` or ``cfg.train_path`` + ``cfg.test_path``.

    Raises:
        ConfigError: neither or both protocols given, or an unknown task name.
        DataError: a file is missing or malformed.
    """
    for name in cfg.tasks:
        if name not in TASKS:
            raise ConfigError(f"dataset.tasks: unknown census task '{name}' (choose from {sorted(TASKS)})")
    split_seed = seed if cfg.split_seed is None else cfg.split_seed
    weight = WEIGHT if cfg.instance_weight else None
    tasks = [Task(name, f"label_{name}", "binary", weight=weight) for name in cfg.tasks]
    spec = column_schema(CATEGORICAL, NUMERIC, tasks)
    with tempfile.TemporaryDirectory(prefix="mtl-census-") as tmp:
        def convert(path: str, key: str, name: str) -> str:
            out = os.path.join(tmp, f"{name}.parquet")
            pq.write_table(_with_labels(read_raw(path, cfg.max_rows, key), cfg.tasks), out)
            return out

        if cfg.path and not (cfg.train_path or cfg.test_path):
            raw = convert(cfg.path, "dataset.path", "data")
            fr = check_fractions(cfg.split)
            sources = permuted_sources(raw, spec.columns(), dict(zip(SPLITS, fr)), split_seed,
                                       origin=_origin(cfg.path, "dataset.path", cfg.max_rows), by=f"dataset.split={fr}")
            protocol = f"{cfg.path}: seeded random split {list(fr)} (seed {split_seed})"
        elif cfg.train_path and cfg.test_path and not cfg.path:
            train = convert(cfg.train_path, "dataset.train_path", "train")
            test = convert(cfg.test_path, "dataset.test_path", "test")
            sources = permuted_sources(train, spec.columns(), {"train": 1.0}, split_seed,
                                       origin=_origin(cfg.train_path, "dataset.train_path", cfg.max_rows))
            sources.update(permuted_sources(test, spec.columns(), {"val": 0.5, "test": 0.5}, split_seed,
                                            origin=_origin(cfg.test_path, "dataset.test_path", cfg.max_rows),
                                            by="a seeded half/half val/test split"))
            protocol = f"train {cfg.train_path}; {cfg.test_path} split half/half into val/test (seed {split_seed})"
        else:
            raise ConfigError(
                "dataset: census needs either dataset.path (one file, split 60/20/20) "
                "or dataset.train_path and dataset.test_path (the paper's protocol)"
            )
        return open_converted("census", spec, sources, tmp, cfg.min_count, protocol)
