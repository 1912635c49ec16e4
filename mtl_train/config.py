"""Typed config schemas: the composed config is checked against them before anything runs.

Every option of the groups dataset, model, graph and loss declares its typed config beside
its class and registers it (:mod:`mtl_train.registry`); ``trainer``, ``infer`` and
``objective`` are declared here. An unknown option or key, a value of the wrong type, a value
outside a field's closed set of choices or a size that is zero or negative (the constraints
:func:`~mtl_train.registry.param` puts on a field) fails here, once, with a one-line
:class:`ConfigError` naming the key; the code that runs later does not check them again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mtl_train import registry
from mtl_train.errors import ConfigError
from mtl_train.metrics import METRICS
from mtl_train.registry import param

# ---- paths -------------------------------------------------------------------------------
_LAUNCH_DIR: str | None = None


def set_launch_dir(path: str | None) -> None:
    """Record the directory mtl-train was launched in (:func:`mtl_train.cli.main` does, before
    Hydra may change into the run directory with ``hydra.job.chdir=true``); None forgets it."""
    global _LAUNCH_DIR
    _LAUNCH_DIR = os.path.abspath(path) if path is not None else None


def launch_dir() -> str:
    """The directory the user's relative paths mean: the one recorded by :func:`set_launch_dir`,
    else Hydra's original working directory where Hydra changed it (``hydra.job.chdir=true``),
    else the current one."""
    if _LAUNCH_DIR is not None:
        return _LAUNCH_DIR
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.job.get("chdir") and hc.runtime.get("cwd"):
            return hc.runtime.cwd
    return os.getcwd()


def resolve_path(value: Any, base: str | None = None) -> Any:
    """A user's path made absolute: ``~`` expanded, a relative path joined to ``base`` (default
    :func:`launch_dir`) and normalised. Globs and Hive-style ``key=value`` folders keep their
    patterns; a URL (``scheme://``), an empty string and a non-string value are returned as given."""
    if not isinstance(value, str) or not value or "://" in value:
        return value
    return os.path.normpath(os.path.join(base or launch_dir(), os.path.expanduser(value)))


def _resolve_paths(cfg: DictConfig, schema: type) -> None:
    """Resolve, in place, every field of ``schema`` declared ``param(..., path=True)``."""
    for f in fields(schema):
        if registry.field_meta(schema, f.name)["path"] and isinstance(cfg.get(f.name), str):
            cfg[f.name] = resolve_path(cfg[f.name])


def path_keys(schema: type) -> list[str]:
    """The fields of the config dataclass ``schema`` that hold paths (``param(..., path=True)``)."""
    return [f.name for f in fields(schema) if registry.field_meta(schema, f.name)["path"]]


# ---- trainer, infer, objective --------------------------------------------------------
@dataclass
class TrainerConfig:
    device: str = param("auto", "auto, cpu, cuda, cuda:1")
    epochs: int = param(5, "passes over the train split", positive=True)
    batch_size: int = param(1024, "rows per training step", positive=True)
    eval_batch_size: int = param(16384, "rows read at once for evaluation (the model always scores chunks of "
                                  "evaluate.EVAL_CHUNK rows, so scores do not depend on it)", positive=True)
    optimizer: str = param("adam", "adam, adamw, sgd", choices=("adam", "adamw", "sgd"))
    lr: float = param(1e-3, "learning rate", positive=True)
    weight_decay: float = param(0.0, "weight decay of the dense parameters", non_negative=True)
    eval_every_steps: Optional[int] = param(None, "null: evaluate on val after every epoch", positive=True)
    monitor: str = param("auc/mean", "<metric>/<output> or <metric>/mean, on val")
    monitor_mode: str = param("max", "max or min", choices=("max", "min"))
    gauc_by: Optional[str] = param(None, "a categorical feature (e.g. user_id) whose ids group rows for GAUC "
                                         "(metrics.group_auc)")
    min_delta: float = param(0.0, "smallest change of the monitor that counts as an improvement", non_negative=True)
    patience: Optional[int] = param(2, "evaluations without improvement before stopping; null: never", positive=True)
    max_steps: Optional[int] = param(None, "stop after this many optimizer steps", positive=True)
    log_every_steps: int = param(50, "steps between logged training scalars", positive=True)
    progress: bool = param(True, "progress bars")
    num_threads: Optional[int] = param(None, "torch intra-op threads; null: torch's default", positive=True)
    tune_malloc: bool = param(True, "keep step-sized buffers in the heap instead of mmap/munmap per step "
                                    "(mtl_train/system.py)")
    precision: str = param("fp32", "fp32; bf16: embedding + backbone under torch.autocast (see Trainer.autocast); "
                                   "auto: bf16 where the device has bf16 matrix units, else fp32",
                           choices=("fp32", "bf16", "auto"))
    scheduler: str = param("none", "learning-rate schedule, stepped once per optimizer step "
                                   "(see mtl_train.train.optim.lr_factor)",
                           choices=("none", "cosine", "step"))
    warmup_steps: int = param(0, "linear warmup over the first N optimizer steps (any scheduler)", non_negative=True)
    min_lr_ratio: float = param(0.0, "cosine: final lr = min_lr_ratio * lr", non_negative=True)
    step_size: int = param(1000, "step: optimizer steps between decays", positive=True)
    gamma: float = param(0.1, "step: decay factor", positive=True)
    checkpoint_every_steps: Optional[int] = param(None, "also write checkpoints/last.pt every N steps", positive=True)
    resume: Optional[str] = param(None, "a run directory or checkpoint file: continue that run (in its directory)",
                                  path=True)
    nonfinite: str = param("stop", "a non-finite loss: stop (keep the last good checkpoint) or skip the batch (counted)",
                           choices=("stop", "skip"))
    diagnostics_every_steps: Optional[int] = param(50, "every N steps: cosines and norms of the task gradients on "
                                                       "the shared parameters (diag/grad_cos, diag/grad_norm); "
                                                       "null: never (mtl_train/train/diagnostics.py)", positive=True)
    gate_diagnostics: bool = param(True, "at each evaluation: the mean gate weights, entropy and unused experts of "
                                         "MoE backbones (diag/gate, run.json; mtl_train/models/gates.py)")
    fused_kernels: bool = param(True, "hand-written expert passes, sparse lookup and row-sparse Adam; false: their "
                                      "plain-torch references (mtl_train/kernels)")
    dist_backend: Optional[str] = param(None, "several ranks (torchrun, srun): the torch.distributed backend, gloo or "
                                              "nccl; null: gloo on CPU, nccl on CUDA (mtl_train/distributed.py)")
    dist_timeout_s: float = param(300.0, "several ranks: seconds a collective waits for the other ranks before the job "
                                         "ends naming the rank that is missing", positive=True)


@dataclass
class InferConfig:
    """``mode=eval`` / ``mode=predict``: what to score and where to write it."""

    split: str = param("test", "the split of the checkpoint's dataset to score (when input is null)",
                       choices=("train", "val", "test"))
    input: Optional[str] = param(None, "or a data file in the dataset's format", path=True)
    output: Optional[str] = param(None, "eval: JSON, predict: Parquet or CSV; null: in this run's directory", path=True)
    overwrite: bool = param(False, "an existing infer.output is refused unless true")
    id_columns: Optional[List[str]] = param(None, "predict: columns copied next to the probabilities")
    batch_size: Optional[int] = param(None, "rows read at once (scores do not depend on it); null: the checkpoint's "
                                        "trainer.eval_batch_size", positive=True)
    dataset: Dict[str, Any] = param(doc="changes to the checkpoint's dataset: its paths (dataset.<path key>=... on "
                                        "an eval/predict command line lands here)", factory=dict)


@dataclass
class ExportConfig:
    """``mode=export``: where the serving formats of a checkpoint go (see :mod:`mtl_train.export`)."""

    output: Optional[str] = param(None, "the directory to write; null: <this run's dir>/export", path=True)
    formats: List[str] = param(doc="pt2 (torch.export program), onnx (ONNX model + external weights)",
                               factory=lambda: ["pt2", "onnx"])
    overwrite: bool = param(False, "an existing export.output is refused unless true (then replaced whole)")
    split: str = param("test", "the split of the checkpoint's dataset whose first rows the parity check scores",
                       choices=("train", "val", "test"))


EXPORT_FORMATS = ("pt2", "onnx")


@dataclass
class Objective:
    """What the app returns to a sweeper (see :mod:`mtl_train.objective`): the sum over ``tasks``
    of weight * val ``metric``; ``tasks: null`` returns the val monitor (``trainer.monitor``)."""

    metric: str = param("auc", "the val metric summed over tasks", choices=METRICS)
    tasks: Optional[Dict[str, float]] = param(None, "{task: weight}; null: the val monitor (trainer.monitor)")


# the groups whose options register themselves (mtl_train.registry.GROUPS), then trainer (one schema)
GROUPS = (*registry.GROUPS, "trainer")


def schemas() -> dict[str, tuple[str, dict[str, type]]]:
    """group -> (selector key, {selector value: config dataclass}), derived from the registry."""
    out = {g: (selector, {name: e.config for name, e in registry.options(g).items()})
           for g, (_, selector) in registry.GROUPS.items()}
    out["trainer"] = ("", {"": TrainerConfig})
    return out


def __getattr__(name: str):
    if name == "SCHEMAS":  # a derived view, computed on use (it imports every registered module)
        return schemas()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# top-level dict-valued keys that are not config groups (no options, one schema)
SECTIONS: dict[str, type] = {"infer": InferConfig, "objective": Objective, "export": ExportConfig}
MODES = ("train", "eval", "predict", "export")
TOP_LEVEL = ("seed", "mode", "checkpoint", "infer", "objective", "export", "experiment")


def _check_values(group: str, cfg: DictConfig, schema: type) -> None:
    """The constraints :func:`~mtl_train.registry.param` declared on the fields of ``schema``."""
    metas = [(f.name, registry.field_meta(schema, f.name)) for f in fields(schema)]
    for key, meta in metas:
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if meta["positive"] and v <= 0:
            raise ConfigError(f"{group}.{key}: must be positive, got {v}")
        if meta["non_negative"] and v < 0:
            raise ConfigError(f"{group}.{key}: must not be negative, got {v}")
    for key, meta in metas:
        allowed = meta["choices"]
        if allowed is not None and key in cfg and cfg[key] not in allowed:
            raise ConfigError(f"{group}.{key}: '{cfg[key]}' is not one of {', '.join(map(str, allowed))}")


def validate_group(group: str, cfg: DictConfig) -> DictConfig:
    """Check one group's config against its schema and return the typed config.

    Raises:
        ConfigError: unknown option, unknown key, wrong type, or a value its field's
            constraints refuse (:func:`_check_values`).
    """
    if "defaults" in cfg:  # a preset's Hydra defaults list (e.g. model=esmm selects graph=esmm): not a value
        cfg = OmegaConf.create({k: v for k, v in cfg.items() if k != "defaults"})
    if group == "trainer":
        choice, schema = "", TrainerConfig
    else:
        choice = cfg.get(registry.GROUPS[group][1], "")
        schema = registry.get(group, choice).config
    if hasattr(schema, "normalise"):  # an option's short forms, expanded before the merge
        cfg = schema.normalise(cfg)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in fields(schema))
        raise ConfigError(f"{group}.{e.key}: unknown key for {group} '{choice or group}' (known keys: {known})") from None
    except ValidationError as e:
        raise ConfigError(f"{group}.{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:  # pragma: no cover - any other OmegaConf complaint
        raise ConfigError(f"{group}: {str(e).splitlines()[0]}") from None
    _check_values(group, typed, schema)
    _resolve_paths(typed, schema)
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
    _check_values(key, typed, schema)
    _resolve_paths(typed, schema)
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


def _check_export(typed: DictConfig) -> None:
    """``export.formats``: a non-empty list of :data:`EXPORT_FORMATS`, each once."""
    formats = list(typed.formats)
    for f in formats:
        if f not in EXPORT_FORMATS:
            raise ConfigError(f"export.formats: unknown format '{f}' (choose from {', '.join(EXPORT_FORMATS)})")
    if not formats:
        raise ConfigError(f"export.formats: give at least one of {', '.join(EXPORT_FORMATS)}")
    if len(set(formats)) != len(formats):
        raise ConfigError(f"export.formats: {formats} names a format twice")


def validate(cfg: DictConfig) -> DictConfig:
    """Validate every group of the composed config; returns a new, typed config.

    Top-level keys: the groups (``GROUPS``), ``seed`` (int), ``mode`` (train, eval, predict
    or export), ``checkpoint`` (str or null: the checkpoint or run directory of
    eval/predict/export) and the sections ``infer`` (:class:`InferConfig`), ``objective``
    (:class:`Objective`) and ``export`` (:class:`ExportConfig`).
    Paths (``checkpoint`` and the fields declared ``param(..., path=True)``) come back
    absolute, resolved against the launch directory (:func:`resolve_path`).

    Raises:
        ConfigError: see :func:`validate_group`; also an unknown top-level key or a
            top-level value of the wrong type.
    """
    out: dict[str, Any] = {}
    for key in cfg:
        if key in GROUPS:
            out[key] = validate_group(key, cfg[key])
        elif key == "objective":
            out[key] = validate_objective(cfg[key])
        elif key in SECTIONS:
            out[key] = _typed(key, SECTIONS[key], cfg[key])
        elif key in TOP_LEVEL:
            out[key] = cfg[key]
        else:
            raise ConfigError(f"{key}: unknown top-level config key (known: {', '.join(TOP_LEVEL + GROUPS)})")
    missing = [g for g in GROUPS if g not in out]
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
    out["checkpoint"] = resolve_path(out["checkpoint"])
    for key, schema in SECTIONS.items():
        if key not in out:
            out[key] = OmegaConf.structured(schema)
    _check_export(out["export"])
    return OmegaConf.create(out)
