"""The sweep objective: the number ``mtl-train``'s Hydra app returns to a sweeper (Optuna).

Configured at the top level of the config::

    objective:
      metric: auc            # auc, logloss, mse or r2, always on the val split
      tasks: {income: 1.0}   # weighted sum over tasks; null: the trainer's monitor (trainer.monitor)

A sweeper minimises or maximises it as its own ``direction`` says (``maximize`` for AUC,
``minimize`` for logloss); the objective itself carries no sign.
"""
from __future__ import annotations

import math

from mtl_train.errors import ConfigError


def objective_value(val: dict, objective, monitor: str) -> float | None:
    """Weighted sum ``sum_k w_k * val[k][metric]`` over ``objective.tasks``.

    Args:
        val: the val split's metrics, ``{output: {"auc": ..., "logloss": ..., ...}}``.
        objective: the typed ``objective`` config (``metric``, ``tasks``), or None.
        monitor: ``trainer.monitor``, used when ``objective`` or ``objective.tasks`` is None.

    Returns:
        The objective; NaN when a weighted task's metric is undefined (an AUC on one class), so
        that a sweeper records the trial as failed instead of ranking it.

    Raises:
        ConfigError: a task in ``objective.tasks`` that the run did not evaluate.
    """
    from mtl_train.train.evaluate import monitor_value

    if objective is None or objective.tasks is None:
        return monitor_value(val, monitor)
    total = 0.0
    for task, weight in objective.tasks.items():
        if task not in val:
            raise ConfigError(f"objective.tasks.{task}: no evaluated output '{task}' (have {', '.join(sorted(val))})")
        v = val[task].get(objective.metric)
        if v is None:
            if objective.metric in val[task]:
                return math.nan
            raise ConfigError(f"objective.metric: output '{task}' has no metric '{objective.metric}'")
        total += float(weight) * float(v)
    return total
