"""MGDA-UB (Sener and Koltun, "Multi-Task Learning as Multi-Objective Optimization",
NeurIPS 2018)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mtl_train.balancing.base import Balancer, require_shared
from mtl_train.balancing.gradients import cosine_logs, gram, min_norm_weights, valid_tasks
from mtl_train.errors import ConfigError
from mtl_train.registry import param, register
from mtl_train.train import ddp

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@dataclass
class MGDALoss:
    name: str = "mgda"
    normalization: str = param("loss+", "gradient normalisation: loss+, loss, l2 or none", choices=NORMALIZATIONS)


@register("loss", "mgda", MGDALoss)
class MGDA(Balancer):
    """Weights a on the simplex that minimise ||sum_i a_i grad_Z L_i||, Z the shared representation.

    MGDA-UB: the min-norm problem is solved on the gradients with respect to the shared
    representation Z = ``out["shared"]`` (the upper bound of the paper's Section 3.3), so the
    per-task passes stop at Z and cost only the towers; then one backward of sum_i a_i L_i
    gives every parameter its gradient. Two tasks: the exact line solution; more: Frank-Wolfe
    (the paper's Algorithms 1 and 2, see :func:`~mtl_train.balancing.gradients.min_norm_weights`).

    Choices the paper leaves open, and the ones made here:

    - gradient normalisation before the min-norm problem (``loss.normalization``, the options of
      the authors' code): ``loss+`` (g_i / (L_i ||g_i||), the default), ``loss`` (g_i / L_i),
      ``l2`` (g_i / ||g_i||) or ``none``; the weights a are then applied to the unnormalised
      losses, as in the authors' code;
    - task-specific parameters get a_i times their task's gradient (one backward of the
      weighted loss, as in the authors' code; Algorithm 2 of the paper uses the unweighted
      task gradient there);
    - Z is the backbone's shared output (MMoE: all expert outputs; shared-bottom: the bottom's
      output; PLE: the last level's shared experts; the shared-embedding presets: the embedded
      input). Where tasks also reach shared parameters through paths that avoid Z (PLE's lower
      levels) or after it (a task graph's shared layers: ESMM's pCTR tower, AITM's first tower,
      GMSL's GRU), the bound is an approximation;
    - a task with no valid rows in the batch gets no gradient and weight 0 in that step;
      ``weights()`` keeps its last weight.

    Logs (on logged steps): ``grad_cos/<a>/<b>`` on Z, before normalisation.

    Under several ranks: Z holds one row per example, so the global batch's Gram matrix of the
    per-task gradients on Z is the sum of the ranks' (one all-reduce of the T x T matrix,
    :func:`~mtl_train.train.ddp.reduce_gram`); every rank then solves the same min-norm problem
    and the backward of sum_i a_i L_i runs through DistributedDataParallel (one all-reduce of
    every gradient), plus the T losses and counts all-reduced once per step.

    Raises:
        ConfigError: a model without shared parameters or shared representation.
    """

    needs_task_gradients = True

    def __init__(self, loss_names, cfg, model=None):
        super().__init__(loss_names, cfg, model)
        require_shared(model, "mgda")
        if model is not None and not getattr(getattr(model, "backbone", None), "shared_output", True):
            raise ConfigError("loss=mgda: this model has no shared representation for MGDA-UB "
                              "(e.g. model=single_task, or PLE/CGC without shared experts)")
        self.normalization = cfg.normalization
        self.a = torch.full((self.num_tasks,), 1.0 / self.num_tasks)

    def weights(self) -> torch.Tensor:
        return self.a.clone()

    def backward(self, losses, counts, model, out):
        idx = valid_tasks(counts)
        if not idx:
            return self.no_task_backward(losses)
        Z = out.get("shared")
        if Z is None:
            raise ConfigError("loss=mgda: this model has no shared representation (out['shared'] is None)")
        grads = [list(torch.autograd.grad(losses[i], [Z], retain_graph=True, allow_unused=True)) for i in idx]  # to Z only
        K = ddp.reduce_gram(gram(grads, [0]))  # the global batch's Gram matrix under several ranks
        norms = [math.sqrt(max(K[n, n], 0.0)) for n in range(len(idx))]
        lv = losses.detach()[idx].double().cpu().tolist()
        if self.normalization == "l2":
            scale = norms
        elif self.normalization == "loss":
            scale = lv
        elif self.normalization == "loss+":
            scale = [l * g for l, g in zip(lv, norms)]
        else:
            scale = [1.0] * len(idx)
        scale = [s if s > 0 else 1.0 for s in scale]
        sc = np.asarray(scale, dtype=np.float64)
        Kn = K / np.outer(sc, sc)
        a = min_norm_weights(Kn)
        w = torch.zeros_like(losses.detach())
        w[idx] = torch.tensor(a, dtype=w.dtype, device=w.device)
        (w * torch.where(counts > 0, losses, torch.zeros_like(losses))).sum().backward()
        self.a[idx] = torch.tensor(a, dtype=self.a.dtype)
        self.applied = self.a.clone()  # this step's a; a task without rows (weight 0 here) shows its kept one
        logs = {}
        if self.log_due:
            logs.update(cosine_logs(K, [self.loss_names[i] for i in idx]))
        return logs

    def state_dict(self) -> dict:
        return {"a": self.a.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.a = state["a"].clone()
