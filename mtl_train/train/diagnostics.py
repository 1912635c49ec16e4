"""Training diagnostics: task-gradient conflict for any balancer (the gates: mtl_train/models/gates.py).

Gradient conflict (:class:`GradConflict`): every ``trainer.diagnostics_every_steps`` steps, the
gradient g_i of each task's loss L_i (over the tasks with valid rows in the batch) with respect
to the model's shared parameters (``model.shared_parameters()``: the shared embedding table,
shared experts or bottom, shared gates..., flattened and concatenated as one vector), then

- ``diag/grad_cos/<a>/<b>`` = <g_a, g_b> / (||g_a|| ||g_b||) for every pair a < b (0 where a
  gradient is zero) and ``diag/grad_norm/<task>`` = ||g_i|| (of the unweighted loss) in
  TensorBoard at that step;
- in run.json (``diagnostics.grad_conflict``): the steps measured, and per pair the share of
  measured steps with a negative cosine and the mean cosine; per task the mean norm.

The gradients are those of the unweighted task losses on the step's own forward graph, taken
with ``torch.autograd.grad`` before the balancer's backward (``retain_graph=True``): they touch
no ``.grad`` and draw no random number, so training is exactly as without the measurement. The
gradient-surgery balancers (PCGrad, CAGrad, GradNorm+PCGrad) compute these very gradients and
their Gram matrix anyway (``Balancer.shared_gram``): on their measured steps it is reused and
nothing is computed twice.

Cost: a measured step adds one backward pass per task (retaining the graph) and the dot products
of the gradients. On the bench MMoE (``python scripts/bench.py diagnostics``, CPU, batch 2048,
median of interleaved rounds on a heavily loaded 2-core machine) a measured step cost 2.27 plain
steps with ``loss=equal``, 2.03 with ``gradnorm`` and 1.06 with ``pcgrad`` (its own gradients
reused), so the default cadence of 50 steps adds (r - 1) / 50 = 2.5 %, 2.1 % and 0.1 % to the
training time (goal: at most 5 %; every 10 steps would cost 13 %). docs/RESULTS.md has the rounds.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mtl_train.balancing.gradients import gram, valid_tasks


def shared_task_gram(losses: torch.Tensor, counts: torch.Tensor, model) -> tuple[np.ndarray, list[int]] | None:
    """The Gram matrix K [m, m] (float64) of the gradients of the valid tasks' losses (``counts``
    > 0, m of them, indices returned) with respect to ``model.shared_parameters()``; None when the
    model shares no parameter that requires a gradient or no task is valid.

    One ``torch.autograd.grad`` per valid task, the graph retained (the caller's backward still
    needs it); ``.grad`` of every parameter is left as it was.
    """
    params = [p for p in model.shared_parameters() if p.requires_grad]
    idx = valid_tasks(counts)
    if not params or not idx:
        return None
    grads = [list(torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)) for i in idx]
    return gram(grads, list(range(len(params)))), idx


class GradConflict:
    """Counts and logs the task-gradient cosines of measured steps (see the module docstring).

    Args:
        names: the loss terms' names (``model.graph.loss_names``).
        every: measure every this many steps (``trainer.diagnostics_every_steps``); None: never.

    The counters are part of the checkpoint (:meth:`state_dict`), so a resumed run's run.json
    covers the whole run.
    """

    def __init__(self, names: list[str], every: int | None):
        self.names = list(names)
        self.every = every
        self.measured = 0
        self.negative: dict[str, int] = {}
        self.cos_sum: dict[str, float] = {}
        self.pairs: dict[str, int] = {}
        self.norm_sum: dict[str, float] = {}
        self.norms: dict[str, int] = {}

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based) is measured."""
        return bool(self.every) and step % self.every == 0

    def record(self, K: np.ndarray, idx: list[int]) -> dict[str, float]:
        """Count one measured step from the Gram matrix ``K`` of the tasks ``idx``; return its
        TensorBoard scalars ``diag/grad_cos/<a>/<b>`` and ``diag/grad_norm/<task>``."""
        self.measured += 1
        out = {}
        names = [self.names[i] for i in idx]
        norms = [math.sqrt(max(float(K[n, n]), 0.0)) for n in range(len(idx))]
        for n, name in enumerate(names):
            out[f"diag/grad_norm/{name}"] = norms[n]
            self.norm_sum[name] = self.norm_sum.get(name, 0.0) + norms[n]
            self.norms[name] = self.norms.get(name, 0) + 1
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                den = norms[i] * norms[j]
                cos = float(K[i, j]) / den if den > 0 else 0.0
                pair = f"{names[i]}/{names[j]}"
                out[f"diag/grad_cos/{pair}"] = cos
                self.cos_sum[pair] = self.cos_sum.get(pair, 0.0) + cos
                self.pairs[pair] = self.pairs.get(pair, 0) + 1
                self.negative[pair] = self.negative.get(pair, 0) + (cos < 0)
        return out

    def summary(self) -> dict:
        """run.json's ``grad_conflict``: {"every_steps", "measured_steps", "negative_share" {pair:
        share of the pair's measured steps with cos < 0}, "mean_cos" {pair}, "mean_norm" {task}}."""
        return {"every_steps": self.every, "measured_steps": self.measured,
                "negative_share": {p: self.negative[p] / n for p, n in self.pairs.items()},
                "mean_cos": {p: self.cos_sum[p] / n for p, n in self.pairs.items()},
                "mean_norm": {t: self.norm_sum[t] / n for t, n in self.norms.items()}}

    def state_dict(self) -> dict:
        return {"measured": self.measured, "negative": dict(self.negative), "cos_sum": dict(self.cos_sum),
                "pairs": dict(self.pairs), "norm_sum": dict(self.norm_sum), "norms": dict(self.norms)}

    def load_state_dict(self, state: dict) -> None:
        self.measured = int(state.get("measured", 0))
        for key in ("negative", "cos_sum", "pairs", "norm_sum", "norms"):
            setattr(self, key, dict(state.get(key, {})))
