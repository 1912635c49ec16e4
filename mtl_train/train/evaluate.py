"""Evaluation: exact metrics of every evaluated output over a whole split, GAUC grouping, and
the monitored value that drives best.pt and early stopping."""
from __future__ import annotations

import logging

import numpy as np
import torch

from mtl_train.data.schema import OOV_ID, Split
from mtl_train.errors import ConfigError, NonFiniteScores
from mtl_train.metrics import binary_metrics, group_auc, regression_metrics
from mtl_train.models.builder import MultiTaskModel
from mtl_train.train.device import to_device

log = logging.getLogger(__name__)


def gauc_column(schema, name: str | None) -> int | None:
    """Index in ``batch["sparse"]`` of the categorical feature ``name`` (``trainer.gauc_by``).

    Raises:
        ConfigError: ``name`` is not a categorical feature of the dataset."""
    if name is None:
        return None
    names = [f.name for f in schema.sparse]
    if name not in names:
        raise ConfigError(f"trainer.gauc_by: no categorical feature '{name}' in this dataset (have {names})")
    return names.index(name)


def check_gauc_by(cfg) -> None:
    """Raises ConfigError when ``trainer.monitor`` or ``objective.metric`` (where
    ``objective.tasks`` is set) asks for GAUC without ``trainer.gauc_by``."""
    if cfg.trainer.gauc_by is not None:
        return
    objective = cfg.get("objective") or {}
    for key, metric in (("trainer.monitor", cfg.trainer.monitor.partition("/")[0]),
                        # objective.tasks null means the monitor, whatever objective.metric says
                        ("objective.metric", objective.get("metric") if objective.get("tasks") else None)):
        if metric == "gauc":
            raise ConfigError(f"{key}: gauc needs trainer.gauc_by, the categorical feature that groups "
                              f"rows (e.g. trainer.gauc_by=user_id)")


@torch.no_grad()
def evaluate(model: MultiTaskModel, table: Split, device: torch.device, batch_size: int, split: str,
             group_index: int | None = None) -> dict:
    """Exact metrics of every evaluated output over the whole split ``table`` (a
    :class:`~mtl_train.data.schema.Split`, in memory or streamed), read by ``batches``.

    ``group_index`` (see :func:`gauc_column`) adds GAUC to binary outputs, grouping rows by
    that categorical column's ids; rows whose id is null or out of vocabulary (ids 0 and 1:
    users unseen in training share id 1) are left out of GAUC only.

    Returns {output name: metrics dict} (see :mod:`mtl_train.metrics`).

    Raises:
        NonFiniteScores: an output scored a row NaN or inf (a broken model).
    """
    was_training = model.training
    model.eval()
    scores: dict[str, list] = {}
    types: dict[str, str] = {}
    eval_only: set[str] = set()
    for batch in table.batches(batch_size):
        batch = to_device(batch, device)
        out = model(batch)
        for name, eo in model.graph.eval_outputs(out, batch).items():
            m = eo.mask
            group = batch["sparse"][:, group_index][m].cpu() if group_index is not None else None
            scores.setdefault(name, []).append((eo.score[m].float().cpu(), eo.label[m].float().cpu(), group))
            types[name] = eo.type
            if eo.eval_only:
                eval_only.add(name)
    model.train(was_training)
    result, left_out = {}, []
    for name, parts in scores.items():
        score = torch.cat([p[0] for p in parts]).numpy()
        label = torch.cat([p[1] for p in parts]).numpy()
        bad = int((~np.isfinite(score)).sum())
        if bad:
            raise NonFiniteScores(split, name, bad, score.size)
        if types[name] == "regression":
            result[name] = regression_metrics(score, label, name=name, split=split)
        else:
            result[name] = binary_metrics(score, label, name=name, split=split)
            if group_index is not None:
                group = torch.cat([p[2] for p in parts]).numpy()
                known = group > OOV_ID
                result[name].update(group_auc(score[known], label[known], group[known]))
                if not known.all():
                    left_out.append(f"{name} {int((~known).sum())}/{known.size}")
        if name in eval_only:  # scored against an evaluation-only column: never part of the monitor
            result[name]["eval_only"] = True
    if left_out:
        log.info("%s: GAUC leaves out the rows whose group id is null or unseen in training: %s", split,
                 ", ".join(left_out))
    return result


def monitor_value(metrics: dict, monitor: str) -> float | None:
    """Value of ``<metric>/<output>`` (e.g. ``auc/income``) or ``<metric>/mean`` (mean over the
    outputs where the metric is defined, ``eval_only`` outputs left out) in a split's metrics.

    Raises:
        ConfigError: ``<output>`` is not an evaluated output."""
    metric, _, what = monitor.partition("/")
    if what == "mean":
        vals = [m[metric] for m in metrics.values() if m.get(metric) is not None and not m.get("eval_only")]
        return float(np.mean(vals)) if vals else None
    if what not in metrics:
        raise ConfigError(f"trainer.monitor: no evaluated output '{what}' (have {sorted(metrics)})")
    return metrics[what].get(metric)
