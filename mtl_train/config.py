"""Typed config schemas: the composed config is checked against them before anything runs.

Every config group option has a dataclass; an unknown key, a value of the wrong type or a
size that is zero or negative fails with a one-line :class:`ConfigError` naming the key.
A new option registers its schema in ``SCHEMAS`` (group -> selector value -> dataclass).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mtl_train.errors import ConfigError
from mtl_train.metrics import METRICS


# ---- dataset ----------------------------------------------------------------------------
@dataclass
class SyntheticData:
    name: str = "synthetic"
    train_rows: int = 100_000
    val_rows: int = 20_000
    test_rows: int = 20_000
    vocab_sizes: List[int] = field(default_factory=lambda: [10_000, 10_000, 1000, 1000, 1000, 100, 100, 10])
    num_dense: int = 4
    zipf_a: float = 1.2
    click_rate: float = 0.1
    cvr_rate: float = 0.1
    signal: float = 1.5
    task_correlation: float = 0.5
    click_bias: float = 0.0


@dataclass
class HillstromData:
    name: str = "hillstrom"
    path: Optional[str] = None
    tasks: List[str] = field(default_factory=lambda: ["visit", "conversion"])
    split: List[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: Optional[int] = None
    min_count: int = 1
    max_rows: Optional[int] = None
    cache_dir: Optional[str] = None


@dataclass
class AliCCPData:
    name: str = "aliccp"
    train_path: Optional[str] = None
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    raw_dir: Optional[str] = None
    split_seed: Optional[int] = None
    min_count: int = 1
    max_rows: Optional[int] = None
    cache_dir: Optional[str] = None


@dataclass
class AliExpressData:
    name: str = "aliexpress"
    train_path: Optional[str] = None
    test_path: Optional[str] = None
    val_fraction: float = 0.1
    split_seed: Optional[int] = None
    min_count: int = 1
    max_rows: Optional[int] = None
    cache_dir: Optional[str] = None


@dataclass
class CensusData:
    name: str = "census"
    path: Optional[str] = None
    train_path: Optional[str] = None
    test_path: Optional[str] = None
    tasks: List[str] = field(default_factory=lambda: ["income", "marital"])
    split: List[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: Optional[int] = None
    min_count: int = 1
    max_rows: Optional[int] = None


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


@dataclass
class ParquetSchema:
    """The column schema of ``dataset=parquet`` (inline, or the content of ``schema_file``)."""

    categorical: List[CategoricalColumn] = field(default_factory=list)
    numeric: List[NumericColumn] = field(default_factory=list)
    sequences: List[SequenceColumn] = field(default_factory=list)
    tasks: List[TaskColumn] = field(default_factory=list)


@dataclass
class ParquetData(ParquetSchema):
    name: str = "parquet"
    train_path: Optional[str] = None
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: Optional[int] = None
    schema_file: Optional[str] = None
    min_count: int = 1
    mode: str = "auto"                    # auto, memory, stream
    memory_budget_mb: Optional[int] = None
    shuffle_buffer: int = 262144
    num_workers: Optional[int] = None  # null: auto (see data.stream.reader_threads)
    cache_dir: Optional[str] = None
    progress: bool = True


def _normalise_parquet(cfg: DictConfig) -> DictConfig:
    from mtl_train.data.parquet import normalise_columns

    d = OmegaConf.to_container(cfg)
    return OmegaConf.create(normalise_columns(d))


def validate_schema_file(path: str) -> dict:
    """Load and check a parquet column schema file (YAML with categorical, numeric,
    sequences, tasks). Raises ConfigError naming the file and the key."""
    import os

    from mtl_train.data.parquet import normalise_columns

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
    return OmegaConf.to_container(typed)


# ---- model ------------------------------------------------------------------------------
@dataclass
class _ModelBase:
    name: str = ""
    backbone: str = ""
    embedding_dim: int = 8
    sparse_embedding: Optional[bool] = None  # null: on where it is faster (CPU, loss-weighting balancers)
    activation: str = "relu"
    dropout: float = 0.0


@dataclass
class SharedEmbeddingModel(_ModelBase):
    """Shared embeddings only (the ESMM/AITM presets): no backbone layer to size."""


@dataclass
class MLPModel(_ModelBase):
    hidden: List[int] = field(default_factory=lambda: [128, 64])


@dataclass
class MoEModel(_ModelBase):
    num_experts: int = 8
    expert_hidden: List[int] = field(default_factory=lambda: [64, 32])
    num_gates: Optional[int] = None


@dataclass
class PLEModel(_ModelBase):
    num_levels: int = 2
    num_task_experts: int = 2
    num_shared_experts: int = 2
    expert_hidden: List[int] = field(default_factory=lambda: [64, 32])


# ---- graph ------------------------------------------------------------------------------
@dataclass
class IndependentGraph:
    name: str = "independent"
    tower_hidden: List[int] = field(default_factory=lambda: [32])
    activation: str = "relu"
    dropout: float = 0.0
    parent_positive_only: bool = False


@dataclass
class ESMMGraph:
    name: str = "esmm"
    tower_hidden: List[int] = field(default_factory=lambda: [200, 80])
    activation: str = "relu"
    dropout: float = 0.0


@dataclass
class DBMTLGraph:
    name: str = "dbmtl"
    tower_hidden: List[int] = field(default_factory=lambda: [64])
    head_hidden: List[int] = field(default_factory=lambda: [32])
    activation: str = "relu"
    dropout: float = 0.0
    parents: Optional[Dict[str, List[str]]] = None


@dataclass
class GMSLGraph:
    name: str = "gmsl"
    tower_hidden: List[int] = field(default_factory=lambda: [64, 32])
    gru_hidden: int = 32
    activation: str = "relu"
    dropout: float = 0.0
    order_weight: float = 0.0


@dataclass
class AITMGraph:
    name: str = "aitm"
    tower_hidden: List[int] = field(default_factory=lambda: [128, 64, 32])
    attention_dim: int = 32
    activation: str = "relu"
    dropout: float = 0.0
    calibrator_weight: float = 0.6


# ---- loss -------------------------------------------------------------------------------
@dataclass
class EqualLoss:
    name: str = "equal"


@dataclass
class StaticLoss:
    name: str = "static"
    weights: Optional[Dict[str, float]] = None
    default_weight: float = 1.0


@dataclass
class UncertaintyLoss:
    name: str = "uncertainty"
    form: str = "auto"
    lr: float = 1e-3
    init_log_var: float = 0.0


@dataclass
class DWALoss:
    name: str = "dwa"
    temperature: float = 2.0
    window_steps: int = 100


@dataclass
class GradNormLoss:
    name: str = "gradnorm"
    alpha: float = 1.5
    lr: float = 0.025
    target: str = "last_shared_layer"
    initial_loss: str = "first_step"
    min_weight: float = 1e-3


@dataclass
class PCGradLoss:
    name: str = "pcgrad"
    reduction: str = "sum"
    seed: int = 0


@dataclass
class CAGradLoss:
    name: str = "cagrad"
    c: float = 0.4
    rescale: int = 1


@dataclass
class MGDALoss:
    name: str = "mgda"
    normalization: str = "loss+"


@dataclass
class GradNormPCGradLoss(GradNormLoss):
    name: str = "gradnorm_pcgrad"
    seed: int = 0


# ---- trainer ----------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    device: str = "auto"
    epochs: int = 5
    batch_size: int = 1024
    eval_batch_size: int = 16384
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    eval_every_steps: Optional[int] = None
    monitor: str = "auc/mean"
    monitor_mode: str = "max"
    # a categorical feature (e.g. user_id) whose ids group rows for GAUC (metrics.group_auc)
    gauc_by: Optional[str] = None
    min_delta: float = 0.0
    patience: Optional[int] = 2
    max_steps: Optional[int] = None
    log_every_steps: int = 50
    progress: bool = True
    num_threads: Optional[int] = None
    # keep step-sized buffers in the heap instead of mmap/munmap per step (train/allocator.py)
    tune_malloc: bool = True
    # fp32, or bf16: embedding + backbone under torch.autocast (see Trainer.autocast)
    precision: str = "fp32"
    # learning-rate schedule, stepped once per optimizer step (see trainer.lr_factor)
    scheduler: str = "none"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 1000
    gamma: float = 0.1
    # checkpoints and resume
    checkpoint_every_steps: Optional[int] = None
    resume: Optional[str] = None
    # non-finite loss: stop (keep the last good checkpoint) or skip the batch (counted)
    nonfinite: str = "stop"
    # hand-written expert passes, sparse lookup and row-sparse Adam; false: their plain-torch references (mtl_train/kernels)
    fused_kernels: bool = True


@dataclass
class InferConfig:
    """``mode=eval`` / ``mode=predict``: what to score and where to write it."""

    split: str = "test"
    input: Optional[str] = None
    output: Optional[str] = None
    overwrite: bool = False
    id_columns: Optional[List[str]] = None
    batch_size: Optional[int] = None


@dataclass
class Objective:
    """What the app returns to a sweeper (see :mod:`mtl_train.objective`): the sum over ``tasks``
    of weight * val ``metric``; ``tasks: null`` returns the val monitor (``trainer.monitor``)."""

    metric: str = "auc"
    tasks: Optional[Dict[str, float]] = None


# group -> (selector key, {selector value: schema})
SCHEMAS: dict[str, tuple[str, dict[str, type]]] = {
    "dataset": ("name", {"synthetic": SyntheticData, "census": CensusData, "hillstrom": HillstromData,
                         "aliccp": AliCCPData, "aliexpress": AliExpressData, "parquet": ParquetData}),
    "model": ("backbone", {"single_task": MLPModel, "shared_bottom": MLPModel, "mmoe": MoEModel, "ple": PLEModel,
                           "shared_embedding": SharedEmbeddingModel}),
    "graph": ("name", {"independent": IndependentGraph, "esmm": ESMMGraph, "dbmtl": DBMTLGraph, "gmsl": GMSLGraph,
                       "aitm": AITMGraph}),
    "loss": ("name", {
        "equal": EqualLoss, "static": StaticLoss, "uncertainty": UncertaintyLoss, "dwa": DWALoss,
        "gradnorm": GradNormLoss, "pcgrad": PCGradLoss, "cagrad": CAGradLoss, "mgda": MGDALoss,
        "gradnorm_pcgrad": GradNormPCGradLoss,
    }),
    "trainer": ("", {"": TrainerConfig}),
}
# top-level dict-valued keys that are not config groups (no options, one schema)
SECTIONS: dict[str, type] = {"infer": InferConfig, "objective": Objective}

# keys that must be > 0 where set (None allowed where the schema is Optional)
POSITIVE = {
    "train_rows", "val_rows", "test_rows", "embedding_dim", "num_experts", "num_levels", "epochs", "batch_size",
    "eval_batch_size", "lr", "eval_every_steps", "max_steps", "log_every_steps", "num_threads", "min_count",
    "max_rows", "min_weight", "patience", "num_gates", "step_size", "checkpoint_every_steps", "gamma",
    "temperature", "window_steps", "gru_hidden", "attention_dim", "val_fraction",
    "max_len", "hash_buckets", "shuffle_buffer", "memory_budget_mb",
}
NON_NEGATIVE = {"num_workers", "num_dense", "num_task_experts", "num_shared_experts", "weight_decay", "dropout", "alpha",
                "min_delta",
                "warmup_steps", "min_lr_ratio", "c", "default_weight", "order_weight", "calibrator_weight"}
# string keys with a closed set of values: (group, key) -> allowed values
CHOICES = {
    ("trainer", "scheduler"): ("none", "cosine", "step"),
    ("trainer", "nonfinite"): ("stop", "skip"),
    ("trainer", "monitor_mode"): ("max", "min"),
    ("trainer", "optimizer"): ("adam", "adamw", "sgd"),
    ("trainer", "precision"): ("fp32", "bf16"),
    ("infer", "split"): ("train", "val", "test"),
    ("objective", "metric"): METRICS,
}
MODES = ("train", "eval", "predict")
TOP_LEVEL = ("seed", "mode", "checkpoint", "infer", "objective", "experiment")
# per group option: a function applied to its config before the schema merge (short forms)
NORMALISERS = {("dataset", "parquet"): _normalise_parquet}


def _check_values(group: str, cfg: DictConfig) -> None:
    for key in cfg:
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if key in POSITIVE and v <= 0:
            raise ConfigError(f"{group}.{key}: must be positive, got {v}")
        if key in NON_NEGATIVE and v < 0:
            raise ConfigError(f"{group}.{key}: must not be negative, got {v}")
    for (g, key), allowed in CHOICES.items():
        if g == group and key in cfg and cfg[key] not in allowed:
            raise ConfigError(f"{group}.{key}: '{cfg[key]}' is not one of {', '.join(allowed)}")


def validate_group(group: str, cfg: DictConfig) -> DictConfig:
    """Check one group's config against its schema and return the typed config.

    Raises:
        ConfigError: unknown option, unknown key, wrong type, or a non-positive size.
    """
    selector, options = SCHEMAS[group]
    if "defaults" in cfg:  # a preset's Hydra defaults list (e.g. model=esmm selects graph=esmm): not a value
        cfg = OmegaConf.create({k: v for k, v in cfg.items() if k != "defaults"})
    choice = cfg.get(selector, "") if selector else ""
    if choice not in options:
        raise ConfigError(f"{group}.{selector}: unknown value '{choice}' (choose from {sorted(options)})")
    schema = options[choice]
    if (group, choice) in NORMALISERS:
        cfg = NORMALISERS[(group, choice)](cfg)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in fields(schema))
        raise ConfigError(f"{group}.{e.key}: unknown key for {group} '{choice or group}' (known keys: {known})") from None
    except ValidationError as e:
        raise ConfigError(f"{group}.{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:  # pragma: no cover - any other OmegaConf complaint
        raise ConfigError(f"{group}: {str(e).splitlines()[0]}") from None
    _check_values(group, typed)
    return typed


def _typed(key: str, schema: type, cfg) -> DictConfig:
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg if cfg is not None else {})
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in fields(schema))
        raise ConfigError(f"{key}.{e.key}: unknown key (known keys: {known})") from None
    except ValidationError as e:
        raise ConfigError(f"{key}.{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:  # pragma: no cover
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    _check_values(key, typed)
    return typed


def validate_objective(cfg: Any) -> DictConfig:
    """Check the top-level ``objective`` section against :class:`Objective`.

    Raises:
        ConfigError: unknown key, unknown metric, a non-numeric or empty set of task weights.
    """
    if cfg is not None and not isinstance(cfg, DictConfig):
        raise ConfigError(f"objective: must be a mapping like {{metric: auc, tasks: {{income: 1.0}}}}, got {cfg!r}")
    typed = _typed("objective", Objective, cfg)
    if typed.tasks is not None and len(typed.tasks) == 0:
        raise ConfigError("objective.tasks: give at least one task weight, or null for trainer.monitor")
    return typed


def validate(cfg: DictConfig) -> DictConfig:
    """Validate every group of the composed config; returns a new, typed config.

    Top-level keys: the groups of ``SCHEMAS``, ``seed`` (int), ``mode`` (train, eval or
    predict), ``checkpoint`` (str or null: the checkpoint or run directory of eval/predict)
    and the sections ``infer`` (:class:`InferConfig`) and ``objective`` (:class:`Objective`).

    Raises:
        ConfigError: see :func:`validate_group`; also an unknown top-level key or a
            top-level value of the wrong type.
    """
    out: dict[str, Any] = {}
    for key in cfg:
        if key in SCHEMAS:
            out[key] = validate_group(key, cfg[key])
        elif key == "objective":
            out[key] = validate_objective(cfg[key])
        elif key in SECTIONS:
            out[key] = _typed(key, SECTIONS[key], cfg[key])
        elif key in TOP_LEVEL:
            out[key] = cfg[key]
        else:
            raise ConfigError(f"{key}: unknown top-level config key (known: {', '.join(TOP_LEVEL + tuple(SCHEMAS))})")
    missing = [g for g in SCHEMAS if g not in out]
    if missing:
        raise ConfigError(f"config: missing group(s) {missing}")
    if not isinstance(out.get("seed"), int) or isinstance(out.get("seed"), bool):
        raise ConfigError(f"seed: must be an integer, got {out.get('seed')!r}")
    out.setdefault("mode", "train")
    if out["mode"] not in MODES:
        raise ConfigError(f"mode: '{out['mode']}' is not one of {', '.join(MODES)}")
    out.setdefault("checkpoint", None)
    if out["checkpoint"] is not None and not isinstance(out["checkpoint"], str):
        raise ConfigError(f"checkpoint: must be a path (string), got {out['checkpoint']!r}")
    for key, schema in SECTIONS.items():
        if key not in out:
            out[key] = OmegaConf.structured(schema)
    return OmegaConf.create(out)
