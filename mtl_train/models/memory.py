"""The memory a training run's model will take, estimated before anything is allocated, and the
check that refuses a model that cannot fit (issue 14, item 4).

A hashed column with ``hash_buckets: 40000000`` and ``model.embedding_dim=64`` is a 10 GB
embedding table before its gradient and Adam's two moments; allocated blindly, it grows past
the machine's memory and ends in the allocator's traceback. :func:`check_memory` runs before
the model is built and either lets it through, warns when it is close, or raises a one-line
:class:`~mtl_train.errors.ConfigError`.

What is counted (float32, 4 bytes a value):

- weights: the embedding table(s) (rows = the sum of the features' vocabulary/hash sizes,
  reserved ids included; one table per task for backbones with separate inputs) and the
  dense parameters of the backbone and task graph, counted exactly by building those two on
  the ``meta`` device (shapes only, no storage);
- gradients: dense: one full gradient per parameter (gradient-surgery balancers hold one per
  loss term plus the combination); row-sparse (``model.sparse_embedding``): only the rows a
  batch looks up, values and int64 row indices;
- optimizer state: Adam/AdamW two moments per parameter (a sparse table's row-sparse Adam
  keeps full-size moments too), SGD one momentum buffer;
- ``trainer.precision=bf16``: autocast's bfloat16 copy of the dense weights (the embedding
  table stays float32).

Activations are not counted: they scale with the batch, not with the table, and are small
next to a table that could not fit.

Which limit: the memory the whole process may use (:func:`mtl_train.system.memory_limit`:
physical memory or the cgroup limit), minus what the process already holds (its resident set,
the loaded data included), not the data path's quarter of it (:func:`memory_budget`), which
is a share chosen for the in-memory data and leaves the rest precisely for the model. On a
GPU the device's total memory minus what is in use there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mtl_train import registry, system
from mtl_train.data.schema import FeatureSchema
from mtl_train.errors import ConfigError, MtlError
from mtl_train.train.device import native_bf16

log = logging.getLogger(__name__)

FLOAT = 4  # bytes of a float32 value
INDEX = 8  # bytes of an int64 row index
WARN_FRACTION = 0.7  # warn when the estimate takes more than this share of the available memory
GB = 1e9


@dataclass
class MemoryEstimate:
    """Bytes a model needs in training (see the module docstring for what is counted).

    Attributes:
        tables: embedding tables (1, or T for a backbone with separate inputs).
        rows: rows of each table. dim: ``model.embedding_dim``.
        largest: (feature name, rows) of the feature with the most rows.
        dense_params: values in the backbone and task graph.
        weights, gradients, optimizer, autocast: bytes of each part.
    """

    tables: int
    rows: int
    dim: int
    largest: tuple[str, int]
    dense_params: int
    weights: int
    gradients: int
    optimizer: int
    autocast: int = 0

    @property
    def total(self) -> int:
        """Bytes in all."""
        return self.weights + self.gradients + self.optimizer + self.autocast


def _dense_parameters(schema: FeatureSchema, model_cfg, graph_cfg, in_dim: int) -> tuple[int, int]:
    """(values in the backbone and task graph, loss terms), counted on the meta device.

    Raises:
        ConfigError: unknown backbone or graph, or an invalid size (as :func:`build_model`)."""
    from mtl_train.models.backbones.base import MODEL_KEYS
    from mtl_train.models.builder import _kwargs

    T = len(schema.tasks)
    entry = registry.get("model", model_cfg.backbone)
    g = registry.get("graph", graph_cfg.name)
    try:
        with torch.device("meta"):
            backbone = entry.target(in_dim, T, **_kwargs(model_cfg, entry.config, MODEL_KEYS))
            graph = g.target(schema, backbone.out_dims, **_kwargs(graph_cfg, g.config, ("name",)))
    except MtlError:
        raise
    except Exception as e:  # a layer that cannot be built without storage: count the tables alone
        log.debug("memory estimate: dense parameters not counted (%s)", e)
        return 0, T
    n = sum(p.numel() for m in (backbone, graph) for p in m.parameters())
    return n, len(graph.loss_names)


def estimate_memory(schema: FeatureSchema, model_cfg, graph_cfg, *, optimizer: str = "adam", sparse: bool = False,
                    batch_size: int = 1024, precision: str = "fp32", task_gradients: bool = False) -> MemoryEstimate:
    """Estimate the training memory of the model ``build_model(schema, model_cfg, graph_cfg)``
    without allocating it.

    Args:
        schema: the dataset's features (vocabulary/hash sizes) and tasks.
        model_cfg, graph_cfg: the ``model`` and ``graph`` configs.
        optimizer: ``trainer.optimizer`` (adam, adamw, sgd) of the dense parameters.
        sparse: row-sparse embedding gradients (the resolved ``model.sparse_embedding``).
        batch_size: ``trainer.batch_size`` (rows a sparse gradient can touch).
        precision: the resolved ``trainer.precision`` (fp32, bf16; ``auto`` resolved by check_memory).
        task_gradients: the balancer keeps one gradient per loss term (gradient surgery).

    Returns:
        A :class:`MemoryEstimate`; ``total`` in bytes.

    Raises:
        ConfigError: unknown backbone or graph, or an invalid size.
    """
    dim = int(model_cfg.embedding_dim)
    feats = [(f.name, int(f.vocab_size)) for f in schema.sparse] + [(f.name, int(f.vocab_size)) for f in schema.sequence]
    rows = max(sum(n for _, n in feats), 1)
    largest = max(feats, key=lambda f: f[1]) if feats else ("", 0)
    cls = registry.get("model", model_cfg.backbone).target
    tables = len(schema.tasks) if cls.separate_inputs else 1
    in_dim = (len(schema.sparse) + len(schema.sequence)) * dim + len(schema.dense)
    dense, losses = _dense_parameters(schema, model_cfg, graph_cfg, in_dim)
    table = tables * rows * dim
    # per-task gradients of gradient surgery: one per loss term on shared parameters, plus the combination
    copies = (losses + 1) if task_gradients else 1
    table_copies = copies if tables == 1 else min(copies, 2)  # a task's own table gets its own loss's gradient
    if sparse:
        lookups = batch_size * (len(schema.sparse) + schema.seq_width)
        table_grad = tables * table_copies * min(lookups, rows) * (dim * FLOAT + INDEX)
    else:
        table_grad = table_copies * table * FLOAT
    dense_moments = {"adam": 2, "adamw": 2, "sgd": 1}.get(optimizer, 2)
    table_moments = 2 if sparse else dense_moments  # a sparse table is trained by the row-sparse Adam
    return MemoryEstimate(
        tables=tables, rows=rows, dim=dim, largest=largest, dense_params=dense,
        weights=(table + dense) * FLOAT,
        gradients=table_grad + copies * dense * FLOAT,
        optimizer=(table_moments * table + dense_moments * dense) * FLOAT,
        autocast=2 * dense if precision == "bf16" else 0)


def available(device: torch.device) -> tuple[int, int, str]:
    """(limit, bytes already held, where the limit comes from) for a model on ``device``: the
    process's memory limit and resident set on the CPU (:func:`mtl_train.system.memory_limit`),
    the device's total and used memory on a GPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return total, total - free, f"{device} memory"
    limit, source = system.memory_limit()
    return limit, system.memory_held(), source


def _hint(schema: FeatureSchema, name: str, sparse: bool) -> str:
    """What to change: the largest column's hash_buckets or min_count, or model.embedding_dim."""
    spec = getattr(getattr(schema, "encoders", None), "spec", None)
    col = next((c for c in getattr(spec, "id_columns", []) if c.name == name), None)
    if col is not None and getattr(col, "hash_buckets", None) is None:
        what = f"raise the min_count of '{name}'"
    else:
        what = "lower hash_buckets"
    return f"{what} or model.embedding_dim" + ("" if sparse else ", or set model.sparse_embedding=true")


def check_memory(schema: FeatureSchema, cfg, device: torch.device, sparse_default: bool = False) -> MemoryEstimate:
    """Refuse, before anything is allocated, a model whose training memory cannot fit.

    Compares :func:`estimate_memory` with the memory still available to the process
    (:func:`available`: the limit minus what the process holds); logs a warning above
    70 % of it. On a GPU the weights, built on the CPU first, must also fit the CPU.

    Args:
        schema: the dataset's features and tasks. cfg: the validated config (model, graph,
        trainer, loss). device: where the model trains. sparse_default: what
        ``model.sparse_embedding: null`` means (see
        :func:`mtl_train.train.optim.sparse_embedding_default`).

    Returns:
        The estimate.

    Raises:
        ConfigError: the estimate exceeds the available memory, one line: the estimate in GB,
            the largest table, the available GB and what to change; or a bad model/graph.
    """
    m, t = cfg.model, cfg.trainer
    sparse = m.get("sparse_embedding", None)
    sparse = bool(sparse_default) if sparse is None else bool(sparse)
    surgery = bool(getattr(registry.get("loss", cfg.loss.name).target, "needs_task_gradients", False))
    precision = "bf16" if t.precision == "bf16" or (t.precision == "auto" and native_bf16(device)) else "fp32"
    est = estimate_memory(schema, m, cfg.graph, optimizer=t.optimizer, sparse=sparse, batch_size=int(t.batch_size),
                          precision=precision, task_gradients=surgery)
    limit, held, source = available(device)
    checks = [("the embeddings and optimizer state", est.total, limit, held, source)]
    if device.type != "cpu":
        cpu_limit, cpu_source = system.memory_limit()
        checks.append(("the weights (built on the CPU)", est.weights, cpu_limit, system.memory_held(), f"CPU {cpu_source}"))
    name, n = est.largest
    each = f", in each of {est.tables} task tables" if est.tables > 1 else ""
    table = f"table '{name}': {n:,} x {est.dim}{each}"
    for what, need, lim, used, src in checks:
        free = max(lim - used, 0)
        if need > free:
            raise ConfigError(f"model: {what} need ~{need / GB:.1f} GB ({table}), more than "
                              f"the {free / GB:.1f} GB this process may use ({src} {lim / GB:.1f} GB, "
                              f"{used / GB:.1f} GB already held); {_hint(schema, name, sparse)}")
        if need > WARN_FRACTION * free:
            log.warning("model: %s need ~%.1f GB (%s), %.0f%% of the %.1f GB this process may still use (%s); "
                        "the run may run out of memory", what, need / GB, table,
                        100 * need / free, free / GB, src)
    log.debug("model memory estimate: %.3f GB (weights %.3f, gradients %.3f, optimizer %.3f)", est.total / GB,
              est.weights / GB, est.gradients / GB, est.optimizer / GB)
    return est
