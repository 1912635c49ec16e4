"""The column schema of a Parquet dataset: which columns are ids, numbers, id lists and labels,
and how each is encoded. Typed objects (dataclasses), read from the dataset config or a YAML
``schema_file`` by :func:`load_schema`, or built in Python by a named dataset's converter.

This module imports nothing of mtl_train but its errors, so that :mod:`mtl_train.config` can
use the dataclasses as config schemas.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from mtl_train.errors import ConfigError

NORMS = ("standard", "minmax", "log", "none")
STATS = ("stream", "exact")
POOLINGS = ("mean", "sum")
TRANSFORMS = ("none", "standard", "log1p")
COLUMN_KINDS = ("categorical", "numeric", "sequences", "tasks")


@dataclass
class CategoricalColumn:
    name: str = MISSING
    min_count: Optional[int] = None       # null: dataset.min_count
    hash_buckets: Optional[int] = None    # hash into N buckets instead of a vocabulary


@dataclass
class NumericColumn:
    name: str = MISSING
    norm: str = "standard"                # standard, minmax, log (signed log1p, then standard), none
    fill: str = "mean"                    # nulls: mean (the training mean), zero, or a number
    # training statistics: stream (one pass, Chan et al.'s pairwise merge, O(1) memory) or exact
    # (numpy's mean and std over the whole training column, O(rows) memory)
    stats: str = "stream"


@dataclass
class SequenceColumn:
    name: str = MISSING
    max_len: int = 20                     # ids kept per row (the first max_len)
    pooling: str = "mean"                 # mean or sum
    min_count: Optional[int] = None
    hash_buckets: Optional[int] = None


@dataclass
class TaskColumn:
    name: str = MISSING
    label: Optional[str] = None           # null: the column named like the task
    type: str = "binary"                  # binary or regression
    parent: Optional[str] = None          # funnel parent task (e.g. purchase -> click)
    # a column of per-row weights (>= 0; null: the row is left out of this task) used in the
    # task's loss (sum w l / sum w over valid rows) and, with weighted_metrics, in its metrics
    weight: Optional[str] = None
    weighted_metrics: bool = True         # report auc_weighted, logloss_weighted (mse_weighted) too
    # regression only: the label transform the loss sees, fitted on train and inverted in
    # predictions and metrics: none, standard ((y - mean) / std) or log1p (labels >= 0)
    transform: str = "none"


@dataclass
class ParquetSchema:
    """The column schema of ``dataset=parquet`` (inline, or the content of ``schema_file``)."""

    categorical: List[CategoricalColumn] = field(default_factory=list)
    numeric: List[NumericColumn] = field(default_factory=list)
    sequences: List[SequenceColumn] = field(default_factory=list)
    tasks: List[TaskColumn] = field(default_factory=list)

    @property
    def id_columns(self) -> list:
        """Categorical then sequence columns (the columns with a vocabulary or hash)."""
        return [*self.categorical, *self.sequences]

    @property
    def features(self) -> list[str]:
        """Feature column names: categorical, sequences, numeric."""
        return [c.name for c in [*self.categorical, *self.sequences, *self.numeric]]

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.tasks]

    @property
    def weights(self) -> list[str]:
        """The weight columns of the tasks that have one (each once, in task order)."""
        return list(dict.fromkeys(t.weight for t in self.tasks if t.weight))

    @property
    def seq_width(self) -> int:
        return sum(c.max_len for c in self.sequences)

    def columns(self) -> list[str]:
        """Every column read: the features, then the label and weight columns that are not features."""
        cols = self.features
        cols = cols + [t.label for t in self.tasks if t.label not in cols]
        return cols + [w for w in self.weights if w not in cols]


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


def normalise_parquet(cfg: DictConfig) -> DictConfig:
    """The ``dataset=parquet`` config with the short forms of its column lists expanded."""
    return OmegaConf.create(normalise_columns(OmegaConf.to_container(cfg)))


def validate_schema_file(path: str) -> ParquetSchema:
    """Load and check a parquet column schema file (YAML with categorical, numeric,
    sequences, tasks). Raises ConfigError naming the file and the key."""
    if not os.path.isfile(path):
        raise ConfigError(f"dataset.schema_file: file not found: {path}")
    try:
        raw = OmegaConf.load(path)
        typed = OmegaConf.merge(OmegaConf.structured(ParquetSchema), normalise_columns(OmegaConf.to_container(raw)))
    except ConfigKeyError as e:
        node = e.parent_node
        entry = node.get("name") if node is not None and hasattr(node, "get") and "name" in node else None
        where = f" in the entry of '{entry}'" if entry else ""
        raise ConfigError(f"{path}: unknown key '{e.key}'{where} (known: categorical, numeric, sequences, tasks and "
                          f"their fields)") from None
    except ValidationError as e:
        raise ConfigError(f"{path}: {e.full_key}: {e.msg.splitlines()[0]}") from None
    except Exception as e:  # YAML syntax and the like
        raise ConfigError(f"{path}: not a valid schema file: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_object(typed)


def load_schema(cfg) -> ParquetSchema:
    """The column schema of a parquet dataset config: its own ``categorical``/``numeric``/
    ``sequences``/``tasks`` keys, or those of the YAML file ``schema_file``.

    Raises:
        ConfigError: both given, neither given, the file is missing or malformed, or a
            column appears twice (see :func:`check_schema`).
    """
    own = {k: OmegaConf.to_container(cfg[k]) for k in COLUMN_KINDS if cfg[k]}
    if cfg.schema_file:
        if own:
            raise ConfigError(f"dataset.schema_file: given together with dataset keys {sorted(own)}; use one or the other")
        spec = validate_schema_file(cfg.schema_file)
    else:
        spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ParquetSchema), own))
    return check_schema(spec, cfg.schema_file or "dataset")


def check_schema(spec: ParquetSchema, where: str = "dataset") -> ParquetSchema:
    """Check ``spec`` (named ``where`` in messages) and fill each task's default label (the
    task name); returns ``spec``.

    Raises:
        ConfigError: no task or no feature, a bad option of a column, a task or column
            declared twice, an unknown parent.
    """
    if not spec.tasks:
        raise ConfigError(f"{where}: tasks: at least one task (label column) is needed")
    if not (spec.categorical or spec.numeric or spec.sequences):
        raise ConfigError(f"{where}: no feature columns (categorical, numeric or sequences)")
    for c in spec.id_columns:
        if c.hash_buckets is not None and c.hash_buckets <= 0:
            raise ConfigError(f"{where}: column '{c.name}': hash_buckets must be positive")
        if c.min_count is not None and c.min_count <= 0:
            raise ConfigError(f"{where}: column '{c.name}': min_count must be positive")
    for c in spec.numeric:
        if c.norm not in NORMS:
            raise ConfigError(f"{where}: numeric column '{c.name}': norm '{c.norm}' is not one of {NORMS}")
        if c.stats not in STATS:
            raise ConfigError(f"{where}: numeric column '{c.name}': stats '{c.stats}' is not one of {STATS}")
        fill_value(c, where)
    for c in spec.sequences:
        if c.max_len <= 0:
            raise ConfigError(f"{where}: sequence column '{c.name}': max_len must be positive")
        if c.pooling not in POOLINGS:
            raise ConfigError(f"{where}: sequence column '{c.name}': pooling '{c.pooling}' is not mean or sum")
    _check_tasks(spec, where)
    names = [c.name for c in [*spec.categorical, *spec.numeric, *spec.sequences]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: column(s) {dup} declared more than once")
    return spec


def _check_tasks(spec: ParquetSchema, where: str) -> None:
    for t in spec.tasks:
        t.label = t.label or t.name
    tasks = [t.name for t in spec.tasks]
    dup = sorted({n for n in tasks if tasks.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: task(s) {dup} declared more than once")
    for t in spec.tasks:
        if t.parent and t.parent not in tasks:
            raise ConfigError(f"{where}: task '{t.name}': parent '{t.parent}' is not a task "
                              f"(tasks: {', '.join(tasks)})")
        if t.parent == t.name:
            raise ConfigError(f"{where}: task '{t.name}': a task cannot be its own parent")
        if t.transform not in TRANSFORMS:
            raise ConfigError(f"{where}: task '{t.name}': transform '{t.transform}' is not one of {TRANSFORMS}")
        if t.transform != "none" and t.type != "regression":
            raise ConfigError(f"{where}: task '{t.name}': transform '{t.transform}' applies to regression tasks only "
                              f"(this task is {t.type})")
        if t.weight is not None and t.weight in {u.label for u in spec.tasks}:
            raise ConfigError(f"{where}: task '{t.name}': weight column '{t.weight}' is a label column")
        if t.weight is not None and t.weight in spec.features:
            raise ConfigError(f"{where}: task '{t.name}': weight column '{t.weight}' is also a feature")


def fill_value(col: NumericColumn, where: str = "dataset") -> str | float:
    """``col.fill`` as ``"mean"``, ``"zero"`` or a number.

    Raises:
        ConfigError: anything else."""
    f = str(col.fill)
    if f in ("mean", "zero"):
        return f
    try:
        return float(f)
    except ValueError:
        raise ConfigError(f"{where}: numeric column '{col.name}': fill '{f}' is not mean, zero or a number") from None
